#!/usr/bin/env bash
# The main job, end to end, on the built-in demo model and the bundled examples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUN=${RUN:-runs/demo}
rm -rf "$RUN"
set -x
sftdata models
sftdata convert examples/alpaca.json -o "$RUN/converted/alpaca.messages.jsonl"
sftdata convert examples/sharegpt.jsonl -o "$RUN/converted/sharegpt.messages.jsonl"
sftdata show examples/messages.jsonl --model smollm2-135m-instruct --line 2
