"""Shared bench inputs: the alpaca demo repeated to N examples, and TRL's own dataset preparation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout, or two levels up from a git worktree (/work/wt/NAME)
SHARED = next(
    (p for p in (REPO.parent / "shared" / "data", REPO.parents[1] / "shared" / "data") if p.is_dir()),
    REPO.parent / "shared" / "data",
)
ALPACA = SHARED / "llamafactory" / "alpaca_en_demo.json"


def alpaca_messages(n: int) -> list[list[dict[str, str]]]:
    """alpaca_en_demo.json as user/assistant message lists, repeated to `n` examples."""
    if not ALPACA.is_file():
        raise SystemExit(f"{ALPACA} not found: the benchmarks need ../shared/data (only on the project's machines)")
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    out = []
    while len(out) < n:
        for r in rows:
            q = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
            out.append([{"role": "user", "content": q}, {"role": "assistant", "content": r["output"]}])
            if len(out) == n:
                break
    return out


def time_trl_prepare(messages: list[list[dict[str, str]]], tokenizer: Any, *, num_proc: int | None = None) -> float:
    """Seconds TRL's SFTTrainer takes to prepare (tokenize + build labels) a `messages` dataset,
    with SFTTrainer's defaults, measured around `_prepare_dataset` only."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from sftdata.testing.fixtures import build_tiny_causal_lm

    datasets.disable_caching()
    model = build_tiny_causal_lm(tokenizer)
    tiny = datasets.Dataset.from_list([{"messages": messages[0]}])
    args = SFTConfig(
        output_dir="/tmp/sftlab-bench-trl", report_to=[], dataset_num_proc=num_proc, use_cpu=True, max_length=None
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=tiny, processing_class=tokenizer)
    ds = datasets.Dataset.from_list([{"messages": m} for m in messages])
    datasets.utils.logging.disable_progress_bar()
    t0 = time.perf_counter()
    trainer._prepare_dataset(ds, tokenizer, args, packing=False, formatting_func=None, dataset_name="bench")
    return time.perf_counter() - t0
