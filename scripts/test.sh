#!/usr/bin/env bash
# Sets up the environment and runs lint, the look-ahead check (never fails the run) and the test suite.
# Extra arguments go to pytest. LONGHEADS_LOOKAHEAD=0 skips the look-ahead check.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
[ -z "${VIRTUAL_ENV:-}" ] && . .venv/bin/activate
# Without a GPU, the Triton kernels are tested in Triton's CPU interpreter, which in triton 3.6 needs
# numpy < 2.3. Installed only where no triton is present, so a GPU user's torch keeps its own triton.
if ! python -c "import triton" 2>/dev/null; then
  python -m pip install -q triton==3.6.0 "numpy<2.3" 2>&1 | grep -v '^WARNING: Location' || true
fi
# The app's browser tests drive Debian's Chromium through Playwright (never Playwright's own browser
# download). Installed where we may (root with apt-get, as on CI); elsewhere those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >/dev/null 2>&1 || echo "could not install chromium: the browser tests will skip"
fi
ruff check . || exit 1
# Before the suite, so that the suite's own summary is the last thing this prints.
[ "${LONGHEADS_LOOKAHEAD:-1}" = 0 ] || bash scripts/lookahead.sh
python -m pytest -q -ra "$@"
rc=$?
# pytest exits 5 when nothing was collected (e.g. a -k filter matched nothing): that is not a failure.
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 0; fi
exit "$rc"
