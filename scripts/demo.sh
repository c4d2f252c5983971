#!/usr/bin/env bash
# The main job, end to end, on the built-in demo model and the bundled examples:
# convert -> show -> audit (finds the defects planted in examples/defects.jsonl) -> dedup ->
# train a LoRA adapter on CPU (the trainer audits its own data first) -> probes -> merge.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUN=${RUN:-runs/demo}
rm -rf "$RUN" "$RUN-examples" "$RUN-merged"
# exit code 1 means "ran and found problems": expected where the demo plants them
found_problems() { local rc=$?; [ "$rc" -eq 1 ] || exit "$rc"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "built-in models"
sftdata models
step "convert: alpaca and sharegpt into canonical messages JSONL"
sftdata convert examples/alpaca.json -o "$RUN/converted/alpaca.messages.jsonl"
sftdata convert examples/sharegpt.jsonl -o "$RUN/converted/sharegpt.messages.jsonl"
step "show: one example token by token (green = trained)"
sftdata show examples/messages.jsonl --model smollm2-135m-instruct --line 2
step "audit: every bundled example file (examples/defects.jsonl carries planted defects)"
sftdata audit examples/*.jsonl examples/alpaca.json --model smollm2-135m-instruct --max-length 256 --run-dir "$RUN-examples" || found_problems
step "dedup: the training data against the other bundled sets (contamination = near-copies of eval data)"
sftdata dedup examples/messages.jsonl --against examples/sharegpt.jsonl examples/alpaca.json --run-dir "$RUN" || found_problems
step "train: a LoRA adapter on the demo model, on CPU (the trainer audits its data into $RUN/audit first)"
sfttrain run configs/demo.yaml --output-dir "$RUN"
step "probes: did the SFT make the model forget facts? (a 4-per-relation subset of the built-in suite; the full one: drop --limit)"
probes hallucination --sft "$RUN" --limit 4 || found_problems
step "probes: memorization, stopping and drift of the adapter on its own training data"
probes overfit --sft "$RUN" --train examples/messages.jsonl --generate 2 || found_problems
step "merge the adapter into the base weights"
sfttrain merge "$RUN" -o "$RUN-merged"
step "done: run directory $RUN"
find "$RUN" "$RUN-examples" -maxdepth 2 -not -path '*/checkpoints/*' | sort
step "browse it: findings, token masks, duplicates, training curves (q quits)"
echo "  . .venv/bin/activate && sfttui $RUN            # the trained run: audit, dedup, training"
echo "  . .venv/bin/activate && sfttui $RUN-examples   # the audit of every bundled file, with its planted defects"
