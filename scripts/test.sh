#!/usr/bin/env bash
# Sets up the environment and runs lint and the test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
. .venv/bin/activate 2>/dev/null || true
ruff check . || exit 1
python -m pytest -q -ra "$@"
rc=$?
# pytest exits 5 when nothing was collected (e.g. a -k filter matched nothing): that is not a failure.
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 0; fi
exit "$rc"
