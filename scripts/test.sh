#!/usr/bin/env bash
# Set up (idempotent), lint, and run the whole test suite, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .            # lint (config: pyproject.toml [tool.ruff])
ruff format --check .   # formatting
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1  # tests/conftest.py sets these too
exec python -m pytest -n 2 "$@"
