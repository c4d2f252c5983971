"""The trainer's data preparation before and after reusing the audit (issue 9), side by side in one run.

  audit   sftdata's audit (sftdata.audit.run_audit) writing RUN/audit/examples.parquet: the gate
          `sfttrain run` passes through first, before and after
  before  what the trainer then did (up to 853f6a6): read the data file again and tokenize it with
          masks through sftdata's single path (sfttrain.data.read_conversations + load_examples,
          i.e. sftdata.masks.tokenize_stream)
  after   what it does now: the audit's examples.parquet as training examples
          (sfttrain.data.examples_from_parquet)
  e2e     sfttrain.train.train() in this process on the same file (audit gate on, a tiny random
          Llama on the demo tokenizer, stopped right after its data stage): the "data ready in X s" it
          logs, which spans the audit and the loading of the examples

Both paths must give the same examples, input_ids and labels (asserted). Prints one JSON object and
a Markdown table. One thread, one audit worker (the machine is shared).

    python bench/train_dataprep.py [--n 10000] [--repeats 3]

alpaca_en_demo.json (bench/common.py ALPACA) repeated to N conversations, written as a JSONL file;
the demo model's tokenizer (smollm2-135m-instruct); sfttrain's defaults (policy, max_length).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SFTLAB_AUDIT_WORKERS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.common import alpaca_messages  # noqa: E402


def loadavg() -> str:
    f = Path("/proc/loadavg")
    return " ".join(f.read_text().split()[:3]) if f.exists() else "n/a"


def best(fn, repeats: int):
    """(fewest seconds over `repeats` calls, the last call's result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def assert_same(before, after) -> None:
    (ex_a, sk_a), (ex_b, sk_b) = before, after
    assert [e.example_id for e in ex_a] == [e.example_id for e in ex_b], "different examples"
    assert [s.example_id for s in sk_a] == [s.example_id for s in sk_b], "different skipped examples"
    for a, b in zip(ex_a, ex_b, strict=True):
        assert a.input_ids.tolist() == b.input_ids.tolist(), f"{a.example_id}: input_ids differ"
        assert a.labels.tolist() == b.labels.tolist(), f"{a.example_id}: labels differ"
        assert a.n_trained == b.n_trained, f"{a.example_id}: n_trained differs"


class DataReady(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "data ready in" in msg:
            self.seconds = float(msg.split("data ready in ")[1].split(" s")[0])


class DataStageDone(Exception):
    pass


def end_to_end(path: Path, tmp: Path, tok) -> float | None:
    """train() on `path` with the audit gate and a tiny model, stopped right after its data stage
    (`precision`, the next call after the "data ready" log line, raises): its logged seconds."""
    from sftdata.testing.fixtures import build_tiny_causal_lm
    from sfttrain import train as train_mod
    from sfttrain.config import Config

    handler = DataReady()
    logger = logging.getLogger("sfttrain.train")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    precision = train_mod.precision

    def stop(cfg):
        raise DataStageDone

    train_mod.precision = stop
    try:
        cfg = Config(model="bench", data=(str(path),), output_dir=str(tmp / "e2e"), max_steps=1, save_steps=0)
        train_mod.train(cfg, model=build_tiny_causal_lm(tok), tokenizer=tok)
    except DataStageDone:
        pass
    finally:
        train_mod.precision = precision
        logger.removeHandler(handler)
    return handler.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="conversations")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the audit, before and after")
    ap.add_argument("--no-e2e", action="store_true", help="skip the train() run")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from sftdata.audit import run_audit
    from sftdata.models import DEMO_MODEL, load_tokenizer
    from sfttrain import data
    from sfttrain.config import Config

    defaults = Config(model="bench", data=("x",), output_dir="x")
    policy, max_length = defaults.policy, defaults.max_length
    tok = load_tokenizer(DEMO_MODEL)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="train-dataprep-") as d:
        tmp = Path(d)
        path = tmp / "alpaca.jsonl"
        path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in alpaca_messages(args.n)), encoding="utf-8")

        runs = iter(range(args.repeats))

        def audit() -> Path:
            run = tmp / f"run{next(runs)}"
            run_audit([str(path)], tok, max_length=max_length, policy=policy, run_dir=str(run), workers=1)
            return run / "audit" / "examples.parquet"

        audit_s, audit_all, parquet = best(audit, args.repeats)

        before_s, before_all, before = best(
            lambda: data.load_examples(data.read_conversations([str(path)]), tok, policy=policy, max_length=max_length),
            args.repeats,
        )
        after_s, after_all, after = best(lambda: data.examples_from_parquet(parquet), args.repeats)
        assert_same(before, after)
        examples, skipped = after
        tokens = sum(len(e.input_ids) for e in examples)
        trained = sum(e.n_trained for e in examples)
        e2e_s = None if args.no_e2e else end_to_end(path, tmp, tok)
    load_after = loadavg()

    result = {
        "conversations": args.n,
        "examples": len(examples),
        "skipped": len(skipped),
        "tokens": tokens,
        "trained_tokens": trained,
        "policy": policy,
        "max_length": max_length,
        "audit_s": round(audit_s, 3),
        "audit_all_s": [round(t, 3) for t in audit_all],
        "before_reread_tokenize_s": round(before_s, 3),
        "before_all_s": [round(t, 3) for t in before_all],
        "after_parquet_s": round(after_s, 3),
        "after_all_s": [round(t, 3) for t in after_all],
        "ratio_before_over_after": round(before_s / after_s, 1),
        "trainer_data_prep_before_s": round(audit_s + before_s, 3),
        "trainer_data_prep_after_s": round(audit_s + after_s, 3),
        "e2e_data_ready_s": e2e_s,
        "identical_input_ids_and_labels": True,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=1))
    print(
        f"\n| step | seconds ({args.n:,} conversations, {tokens:,} tokens) |\n|---|---|\n"
        f"| audit (both) | {audit_s:.2f} |\n"
        f"| before: re-read + tokenize with masks | {before_s:.2f} |\n"
        f"| after: audit's examples.parquet | {after_s:.3f} |\n"
        f"| trainer data prep, before (audit + re-tokenize) | {audit_s + before_s:.2f} |\n"
        f"| trainer data prep, after (audit + parquet) | {audit_s + after_s:.2f} |\n"
        f'| `train()` logs "data ready in" (after) | {e2e_s} |'
    )


if __name__ == "__main__":
    main()
