"""Likelihood-probe throughput vs lm-evaluation-harness `HFLM.loglikelihood`, side by side in one
process on the same model and the same (context, continuation) requests; then the built-in suite on
both models (`probes hallucination`, base and SFT = the demo model with the adapter of RUN if given).

    python bench/bench_probes.py --items 104            # ratio: ours vs lm-eval, same requests
    python bench/bench_probes.py --items 104 --suite    # plus the whole built-in suite, both sides

Both sides score every (few-shot completion prompt, " candidate") pair of the first --items suite
items; we check the numbers agree (max |diff|) before reporting items/s.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=104)
    ap.add_argument("--batch-size", type=int, default=16, help="lm-eval batch size")
    ap.add_argument("--suite", action="store_true", help="also time the full built-in suite on both sides")
    args = ap.parse_args()
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from probes import scoring
    from probes.api import per_relation_subset
    from probes.suite import completion_candidates, completion_prompts, read_suite
    from sftdata.models import load_model, load_tokenizer

    tok = load_tokenizer(args.model)
    model = load_model(args.model).eval()
    pool, _ = read_suite("builtin")
    items = per_relation_subset(pool, max(1, args.items // 13))
    prompts = completion_prompts(items, pool=pool)
    cands = completion_candidates(items)
    requests = [(p, c) for p, cs in zip(prompts, cands) for c in cs]
    print(
        f"{len(items)} items, {len(requests)} requests, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}"
    )
    t = time.perf_counter()
    ours = scoring.loglikelihood(model, tok, requests)
    t_ours = time.perf_counter() - t
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device="cpu")
    inst = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    t = time.perf_counter()
    theirs = [lp for lp, _ in lm.loglikelihood(inst, disable_tqdm=True)]
    t_theirs = time.perf_counter() - t
    diff = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"probes  {len(items) / t_ours:7.2f} items/s ({t_ours:.1f} s)")
    print(f"lm-eval {len(items) / t_theirs:7.2f} items/s ({t_theirs:.1f} s)")
    print(f"ratio {t_theirs / t_ours:.2f}x, max |logp diff| {diff:.2e} nats")
    if args.suite:
        import probes

        t = time.perf_counter()
        report = probes.hallucination(args.model, args.model, "builtin")
        print(
            f"built-in suite, both models: {time.perf_counter() - t:.1f} s, {report.summary['items']} items, "
            f"base knows {report.summary['base_known']}, timings {report.summary['timings']}"
        )


if __name__ == "__main__":
    main()
