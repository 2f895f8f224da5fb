#!/usr/bin/env bash
# Sets up the environment and starts the app on the embedded default model (http://localhost:8501).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/longheads app "$@"
