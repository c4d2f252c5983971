"""Tokenize-with-mask throughput, side by side in one run (issue 2):

  floor  batched template render (apply_chat_template, tokenize=False) + fast-tokenizer encode
         with offsets: the least any mask-deriving tokenizer must do
  trl    TRL SFTTrainer's own dataset preparation (its defaults) on the same conversations
  sftlab sftdata.masks.tokenize_batch: render, derive and verify assistant spans, encode, mask

    python bench/bench_tokenize.py [--n 10000] [--repeats 3]

alpaca_en_demo.json repeated to N examples, demo tokenizer (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import alpaca_messages, time_trl_prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for floor and sftlab")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    from sftdata import masks
    from sftdata.models import DEMO_MODEL, load_tokenizer
    from sftdata.testing.fixtures import new_conversation

    tok = load_tokenizer(DEMO_MODEL)
    msgs = alpaca_messages(args.n)
    convs = [new_conversation([(m["role"], m["content"]) for m in ms], line=i + 1) for i, ms in enumerate(msgs)]

    def floor() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(msgs), args.batch):
            texts = tok.apply_chat_template(msgs[i : i + args.batch], tokenize=False)
            tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        return time.perf_counter() - t0

    def ours() -> float:
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(convs), args.batch):
            n += len(masks.tokenize_batch(convs[i : i + args.batch], tok))
        assert n == len(convs)
        return time.perf_counter() - t0

    results = {}
    results["floor"] = min(floor() for _ in range(args.repeats))
    results["sftlab"] = min(ours() for _ in range(args.repeats))
    results["trl"] = time_trl_prepare(msgs, tok)
    rate = {k: args.n / v for k, v in results.items()}
    out = {
        "n": args.n,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "examples_per_s": {k: round(v) for k, v in rate.items()},
        "sftlab_vs_trl": round(rate["sftlab"] / rate["trl"], 2),
        "sftlab_vs_floor": round(rate["sftlab"] / rate["floor"], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
