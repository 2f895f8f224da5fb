#!/usr/bin/env bash
# Writes constraints.txt from the .venv the suite just passed in: every installed distribution but longheads
# itself and torch's build (GPU users bring their own; scripts/setup.sh installs the CPU build where none is).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# The versions the test suite last passed with (scripts/lock.sh writes this from .venv after a green run)."
  echo "# scripts/setup.sh installs with it; scripts/lookahead.sh tries the newest releases instead."
  .venv/bin/python -m pip freeze --exclude-editable --all \
    | grep -viE '^(longheads|torch|triton|nvidia-|cuda-|pip|setuptools|wheel)([=<> @]|$)' | LC_ALL=C sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
