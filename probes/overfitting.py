"""`probes overfit`: what SFT did beyond the facts — memorization, stopping, special-token facts, drift.

- memorization: per example, the log-likelihood of its answer tokens (the tokens sftdata's mask
  trains) under the SFT model minus under the base (`gain`). With --heldout, the membership AUC of
  train vs held-out gains per answer token (Hanley-McNeil 95% CI): 0.5 = no memorization signal.
  Regurgitation: for the most memorized examples, the prompt is perturbed (numbers +1, else its
  longest word swapped for another example's) and the SFT model's greedy answer is compared with
  the training answer (longest common token run / answer length).
- stopping: probability of the end-of-turn token right after each gold answer (teacher-forced, base
  and SFT), and for --generate examples a greedy answer from both: did it stop, did it run on into
  a new turn (the failure every pad=eos collator causes).
- special-facts: tokens the SFT tokenizer added (e.g. <special_token_1>): the gain on training
  examples that use them (learned?) and the probability the SFT model gives them on unrelated
  neutral prompts (leak?).
- drift: on neutral text unrelated to the training data, per-token KL(SFT || base), each model's
  cross-entropy, and the tokens SFT boosted most (mean log-prob gain over the positions).

Findings (docs/probes.md): probes.memorization, probes.regurgitation, probes.stop-lost,
probes.run-on, probes.special-token-leak, probes.drift. `flagged` = any error-severity finding.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probes import stats
from probes.facts import Report
from probes.pair import Pair
from sftdata.records import Conversation, Finding

log = logging.getLogger(__name__)

NEUTRAL = Path(__file__).resolve().parent / "data" / "neutral.txt"
LIMIT = 64  # examples per file
GENERATE = 8  # greedy samples for stopping and regurgitation
STOP_DROP = 0.25  # flag when the SFT greedy stop rate is this much below the base's
AUC_FLAG = 0.75
LEAK = 0.01  # probability mass on added tokens in unrelated prompts
DRIFT_KL = 1.0  # nats per token


def read_examples(path: str, split: str, limit: int) -> tuple[list[Conversation], list[Finding]]:
    from sftdata import formats

    convs, findings = [], []
    for item in formats.read(path):
        if isinstance(item, Finding):
            if item.severity == "error":
                findings.append(item)
            continue
        if any(m.role == "assistant" for m in item.messages):
            convs.append(item)
        if len(convs) >= limit:
            break
    return convs, findings


def _answer_scores(model: Any, tokenizer: Any, convs: Sequence[Conversation], eot: set[int]) -> list[dict[str, Any]]:
    from probes import scoring
    from sftdata.masks import tokenize

    toks = [tokenize(c, tokenizer) for c in convs]
    seqs = [list(t.input_ids) for t in toks]
    res = scoring.token_logps(model, seqs, extra=sorted(eot))
    out = []
    for t, (lp, ex) in zip(toks, res):
        mask = t.loss_mask[1:]  # position j predicts token j+1
        trained = [j for j, m in enumerate(mask) if m]
        logp = sum(lp[j] for j in trained)
        eot_pos = [j for j in trained if t.input_ids[j + 1] in eot]
        p_eot = [math.exp(lp[j]) for j in eot_pos]
        out.append({"logp": logp, "n_tokens": len(trained), "p_eot": sum(p_eot) / len(p_eot) if p_eot else None})
    return out


def _prompt_messages(conv: Conversation) -> tuple[list[dict[str, Any]], str]:
    msgs = conv.message_dicts()
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return [{k: v for k, v in m.items() if k != "train"} for m in msgs[:last]], msgs[last]["content"]


def perturb(prompt: str, other: str) -> str:
    """Numbers +1; without numbers, the longest word swapped for the longest word of `other`."""
    if re.search(r"\d", prompt):
        return re.sub(r"\d+", lambda m: str(int(m.group()) + 1), prompt)
    words, others = re.findall(r"[A-Za-z]{4,}", prompt), re.findall(r"[A-Za-z]{4,}", other)
    if not words:
        return prompt + " Answer differently."
    old = max(words, key=len)
    new = next((w for w in sorted(others, key=len, reverse=True) if w.lower() != old.lower()), "something")
    return prompt.replace(old, new, 1)


def _overlap(a: list[int], b: list[int]) -> float:
    if not b:
        return 0.0
    m = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return m.size / len(b)


def _generate(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, Any]]], max_new: int, eot: set[int]
) -> list[list[int]]:
    from probes import scoring

    ids = [
        scoring.encode(tokenizer, tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True))
        for p in prompts
    ]
    return scoring.greedy(model, ids, max_new_tokens=max_new, stop_ids=eot)


def _run_on(tokenizer: Any, out: list[int], eot: set[int]) -> bool:
    """Ran on into a new turn: no end-of-turn, and the text opens a turn header or a role line."""
    if any(t in eot for t in out):
        return False
    text = tokenizer.decode(out, skip_special_tokens=False)
    return bool(
        re.search(r"<\|im_start\|>|<\|start_header_id\|>|\n(user|assistant|User|Assistant|Human)\s*[:\n]", text)
    )


def run(
    pair: Pair,
    train: Sequence[Conversation],
    heldout: Sequence[Conversation] = (),
    *,
    generate: int = GENERATE,
    neutral: Sequence[str] | None = None,
) -> Report:
    from probes.facts import _eot_ids
    from probes.pair import with_sft_template

    pair = with_sft_template(pair)
    rows: list[dict[str, Any]] = []
    findings: list[Finding] = []
    eot_sft, eot_base = _eot_ids(pair.sft_tokenizer), _eot_ids(pair.base_tokenizer)
    examples = [(c, "train") for c in train] + [(c, "heldout") for c in heldout]
    convs = [c for c, _ in examples]
    with pair.base() as base_model:
        base = _answer_scores(base_model, pair.base_tokenizer, convs, eot_base)
    sft = _answer_scores(pair.sft_model, pair.sft_tokenizer, convs, eot_sft)
    for (c, split), b, s in zip(examples, base, sft):
        gain = s["logp"] - b["logp"]
        rows.append(
            {
                "kind": "memorization",
                "example_id": c.id,
                "source": c.source.to_dict(),
                "split": split,
                "n_tokens": s["n_tokens"],
                "base_logp": round(b["logp"], 4),
                "sft_logp": round(s["logp"], 4),
                "gain": round(gain, 4),
                "gain_per_token": round(gain / max(s["n_tokens"], 1), 4),
                "base_p_eot": b["p_eot"],
                "sft_p_eot": s["p_eot"],
            }
        )
    mem = [r for r in rows if r["kind"] == "memorization"]
    tr = [r["gain_per_token"] for r in mem if r["split"] == "train"]
    ho = [r["gain_per_token"] for r in mem if r["split"] == "heldout"]
    a = stats.auc(tr, ho)
    ci = stats.auc_ci(a, len(tr), len(ho))
    summary: dict[str, Any] = {
        "train_examples": len(tr),
        "heldout_examples": len(ho),
        "mean_gain_per_token_train": round(sum(tr) / len(tr), 4) if tr else None,
        "mean_gain_per_token_heldout": round(sum(ho) / len(ho), 4) if ho else None,
        "membership_auc": a,
        "membership_auc_ci": list(ci) if ci else None,
    }
    if a is not None and ci is not None and ci[0] > 0.5:
        sev = "error" if a >= AUC_FLAG else "warning"
        findings.append(
            Finding(
                "probes.memorization",
                sev,
                f"training examples gained more log-likelihood per answer token than held-out ones: membership "
                f"AUC {a:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}); mean gain {summary['mean_gain_per_token_train']:+.3f} "
                f"vs {summary['mean_gain_per_token_heldout']:+.3f} nats/token",
                "the model memorizes its training answers: fewer epochs/steps, a lower learning rate, more or "
                "deduplicated data (`sftdata dedup`)",
                None,
                None,
                {"auc": a, "ci": list(ci)},
            )
        )
    # --- greedy: stopping and regurgitation on the most memorized training examples
    top = sorted((r for r in mem if r["split"] == "train"), key=lambda r: -r["gain_per_token"])[:generate]
    by_id = {c.id: c for c in train}
    stop_rows = []
    if top:
        chosen = [by_id[r["example_id"]] for r in top]
        prompts, answers = zip(*(_prompt_messages(c) for c in chosen))
        answer_ids = [pair.sft_tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        max_new = min(128, max(len(x) for x in answer_ids) + 24)
        with pair.base() as base_model:
            base_out = _generate(base_model, pair.base_tokenizer, list(prompts), max_new, eot_base)
        sft_out = _generate(pair.sft_model, pair.sft_tokenizer, list(prompts), max_new, eot_sft)
        perturbed = []
        for k, p in enumerate(prompts):
            q = [dict(m) for m in p]
            users = [i for i, m in enumerate(q) if m["role"] == "user"]
            if users:
                other = _prompt_messages(chosen[(k + 1) % len(chosen)])[0]
                other_text = next((m["content"] for m in reversed(other) if m["role"] == "user"), "")
                q[users[-1]]["content"] = perturb(q[users[-1]]["content"], other_text)
            perturbed.append(q)
        pert_out = _generate(pair.sft_model, pair.sft_tokenizer, perturbed, max_new, eot_sft)
        for r, c, bo, so, po, p, aid in zip(top, chosen, base_out, sft_out, pert_out, perturbed, answer_ids):
            overlap = _overlap(list(po), list(aid))
            r.update(
                {
                    "perturbed_prompt": p[-1]["content"] if p else None,
                    "sft_perturbed_answer": pair.sft_tokenizer.decode(po, skip_special_tokens=True),
                    "regurgitation_overlap": round(overlap, 4),
                }
            )
            if overlap >= 0.8 and len(aid) >= 8:
                findings.append(
                    Finding(
                        "probes.regurgitation",
                        "warning",
                        f"{c.source}: with a perturbed prompt the SFT model still answers {overlap:.0%} of the "
                        f"training answer verbatim",
                        "the example is memorized; deduplicate or down-weight it",
                        c.id,
                        c.source,
                        {"overlap": overlap},
                    )
                )
            row = {
                "kind": "stopping",
                "example_id": c.id,
                "source": c.source.to_dict(),
                "base_generated": pair.base_tokenizer.decode(bo, skip_special_tokens=True),
                "sft_generated": pair.sft_tokenizer.decode(so, skip_special_tokens=True),
                "base_stopped": any(t in eot_base for t in bo),
                "sft_stopped": any(t in eot_sft for t in so),
                "base_run_on": _run_on(pair.base_tokenizer, bo, eot_base),
                "sft_run_on": _run_on(pair.sft_tokenizer, so, eot_sft),
                "base_p_eot": r["base_p_eot"],
                "sft_p_eot": r["sft_p_eot"],
                "max_new_tokens": max_new,
            }
            stop_rows.append(row)
    rows += stop_rows
    pe_b = [r["base_p_eot"] for r in mem if r["base_p_eot"] is not None]
    pe_s = [r["sft_p_eot"] for r in mem if r["sft_p_eot"] is not None]
    stopping = {
        "base_p_eot_mean": round(sum(pe_b) / len(pe_b), 8) if pe_b else None,
        "sft_p_eot_mean": round(sum(pe_s) / len(pe_s), 8) if pe_s else None,
        "generated": len(stop_rows),
        "base_stop_rate": sum(r["base_stopped"] for r in stop_rows) / len(stop_rows) if stop_rows else None,
        "sft_stop_rate": sum(r["sft_stopped"] for r in stop_rows) / len(stop_rows) if stop_rows else None,
        "sft_run_on": sum(r["sft_run_on"] for r in stop_rows),
    }
    summary["stopping"] = stopping
    if stop_rows and stopping["sft_stop_rate"] < stopping["base_stop_rate"] - STOP_DROP:
        findings.append(
            Finding(
                "probes.stop-lost",
                "error",
                f"the SFT model stopped in {stopping['sft_stop_rate']:.0%} of greedy answers, the base in "
                f"{stopping['base_stop_rate']:.0%}; P(end-of-turn) after gold answers {stopping['sft_p_eot_mean']} "
                f"vs {stopping['base_p_eot_mean']}",
                "the end-of-turn token was probably masked out (pad = eos collator): train it "
                "(`sftdata audit` reports mask.eot-not-trained / tokens.pad-is-eos)",
            )
        )
    if stopping["sft_run_on"]:
        findings.append(
            Finding(
                "probes.run-on",
                "warning",
                f"{stopping['sft_run_on']} of {len(stop_rows)} greedy SFT answers ran on into a new turn",
                "train the end-of-turn token; check the chat template's stop tokens",
            )
        )
    # --- special-token facts
    added = sorted(set(pair.sft_tokenizer.get_added_vocab()) - set(pair.base_tokenizer.get_added_vocab()))
    neutral_texts = (
        list(neutral)
        if neutral is not None
        else [t for t in NEUTRAL.read_text(encoding="utf-8").splitlines() if t.strip()]
    )
    special: dict[str, Any] = {"added_tokens": added}
    if added:
        uses = [r for r in mem if r["split"] == "train" and any(t in _text(by_id[r["example_id"]]) for t in added)]
        ids = [pair.sft_tokenizer.convert_tokens_to_ids(t) for t in added]
        prompts = [
            pair.sft_tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in neutral_texts
        ]
        from probes import scoring

        seqs = [
            scoring.encode(pair.sft_tokenizer, p) + [0] for p in prompts
        ]  # the last position = the first answer token
        res = scoring.token_logps(pair.sft_model, seqs, extra=ids)
        leak = [ex[-1] for _, ex in res]
        special.update(
            {
                "train_examples_using_them": len(uses),
                "mean_gain_per_token_using_them": round(sum(r["gain_per_token"] for r in uses) / len(uses), 4)
                if uses
                else None,
                "leak_mean": sum(leak) / len(leak),
                "leak_max": max(leak),
            }
        )
        rows.append({"kind": "special-facts", **special})
        if special["leak_max"] > LEAK:
            findings.append(
                Finding(
                    "probes.special-token-leak",
                    "warning",
                    f"on unrelated prompts the SFT model puts up to {special['leak_max']:.1%} probability on the "
                    f"added tokens {added} as the first answer token",
                    "the new tokens leak beyond their facts: "
                    "add training examples where they are absent, or fewer steps",
                )
            )
    summary["special_facts"] = special
    # --- drift on neutral text
    from probes import scoring

    vocab = min(len(pair.base_tokenizer), len(pair.sft_tokenizer))
    kls, ces_b, ces_s, boost, n_pos = [], [], [], None, 0
    for k, text in enumerate(neutral_texts):
        seq = scoring.encode(pair.base_tokenizer, text)
        if len(seq) < 2:
            continue
        with pair.base() as base_model:
            lb = scoring.log_softmax_all(base_model, seq, vocab)
        ls = scoring.log_softmax_all(pair.sft_model, seq, vocab)
        kl = (ls.exp() * (ls - lb)).sum(-1)
        tgt = list(seq[1:])
        ce_b = -float(lb[range(len(tgt)), tgt].mean())
        ce_s = -float(ls[range(len(tgt)), tgt].mean())
        d = (ls - lb).sum(0)
        boost = d if boost is None else boost + d
        n_pos += len(tgt)
        kls.append(float(kl.mean()))
        ces_b.append(ce_b)
        ces_s.append(ce_s)
        rows.append(
            {
                "kind": "drift",
                "text_id": k,
                "text": text[:80],
                "n_tokens": len(tgt),
                "kl": round(float(kl.mean()), 5),
                "base_ce": round(ce_b, 4),
                "sft_ce": round(ce_s, 4),
            }
        )
    drift: dict[str, Any] = {"texts": len(kls)}
    if kls:
        top_ids = (boost / n_pos).topk(10)
        drift.update(
            {
                "kl_mean": round(sum(kls) / len(kls), 5),
                "base_ce": round(sum(ces_b) / len(ces_b), 4),
                "sft_ce": round(sum(ces_s) / len(ces_s), 4),
                "top_boosted": [
                    {"token": pair.base_tokenizer.decode([int(i)]), "mean_logp_gain": round(float(v), 3)}
                    for v, i in zip(top_ids.values, top_ids.indices)
                ],
            }
        )
        if drift["kl_mean"] > DRIFT_KL:
            findings.append(
                Finding(
                    "probes.drift",
                    "warning",
                    f"on neutral text the SFT model diverges from the base by {drift['kl_mean']:.2f} nats/token (KL), "
                    f"cross-entropy {drift['base_ce']:.2f} -> {drift['sft_ce']:.2f}",
                    "SFT changed the model well beyond its data: lower learning rate or fewer steps, or mix in general data",
                )
            )
    summary["drift"] = drift
    summary["flagged"] = any(f.severity == "error" for f in findings)
    summary.update({"base": pair.base_name, "sft": pair.sft_name, "adapter_toggled": pair.adapter})
    return Report("overfit", summary, rows, findings)


def _text(conv: Conversation) -> str:
    return "\n".join(m.content for m in conv.messages)


def api(
    base: Any = None,
    sft: Any = None,
    train: str | None = None,
    heldout: str | None = None,
    *,
    tokenizer: Any = None,
    sft_tokenizer: Any = None,
    run_dir: Any = None,
    limit: int = LIMIT,
    generate: int = GENERATE,
    neutral: Sequence[str] | None = None,
    command: list[str] | None = None,
) -> Report:
    """probes.overfit(base, sft, train="train.jsonl", heldout="heldout.jsonl", run_dir=None).
    `command`: what the manifest records (default: this process's argv)."""
    from probes.api import make_pair, write_report

    if not train:
        raise ValueError("train= (the SFT training data file) is required")
    tr, bad = read_examples(train, "train", limit)
    ho, bad_h = read_examples(heldout, "heldout", limit) if heldout else ([], [])
    pair = make_pair(base, sft, tokenizer, sft_tokenizer)
    report = run(pair, tr, ho, generate=generate, neutral=neutral)
    report = Report(
        report.command,
        {**report.summary, "bad_rows": len(bad) + len(bad_h)},
        report.records,
        [*bad, *bad_h, *report.findings],
    )
    if run_dir is not None:
        write_report(run_dir, report, "overfit.jsonl", inputs=[train] + ([heldout] if heldout else []), command=command)
    return report


def main(argv: list[str] | None = None) -> int:
    from probes import cli

    p = cli._parser(
        "probes overfit",
        "Memorization relative to the base, stopping (end-of-turn), special-token facts and\n"
        "drift on neutral text. Exit 1 when flagged (an error-severity finding), 0 when not.",
    )
    p.add_argument(
        "--base", help=f"the model before SFT: {cli.MODEL_HELP}; default: the base of an sfttrain run given as --sft"
    )
    p.add_argument(
        "--sft",
        required=True,
        help=f"the SFT model: {cli.MODEL_HELP}, a merged model directory, or an sfttrain run directory",
    )
    p.add_argument("--train", required=True, help="the SFT training data (any format `sftdata convert` reads)")
    p.add_argument("--heldout", help="held-out examples of the same kind: enables the membership AUC")
    p.add_argument(
        "--run-dir", help="write RUN/probes/overfit.jsonl and summary.json (default: --sft when it is a run directory)"
    )
    p.add_argument("--limit", type=cli._positive, default=LIMIT, help=f"examples read per file (default {LIMIT})")
    p.add_argument(
        "--generate",
        type=int,
        default=GENERATE,
        help=f"greedy samples for stopping and regurgitation (default {GENERATE}; 0 = none)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (DESIGN.md §5)")

    def body() -> int:
        args = p.parse_args(argv)
        cli._setup_logging()
        from probes.pair import read_run_dir

        for flag, path in (("--train", args.train), ("--heldout", args.heldout)):
            if path and not Path(path).exists():
                raise cli.UsageError(f"{flag} {path}: no such file")
        run_dir = args.run_dir or (args.sft if read_run_dir(args.sft) else None)
        report = api(
            args.base,
            args.sft,
            args.train,
            args.heldout,
            run_dir=run_dir,
            limit=args.limit,
            generate=max(0, args.generate),
            command=["probes", "overfit", *(sys.argv[2:] if argv is None else argv)],
        )
        if args.json:
            cli._print_json("overfit", report.summary, report.findings)
        else:
            _print(report, run_dir)
        return cli.EXIT_FLAGGED if report.flagged else cli.EXIT_OK

    return cli._run(body)


def _print(report: Report, run_dir: str | None) -> None:
    s, out = report.summary, sys.stdout.write
    out(f"overfit: base {s['base']}  ->  SFT {s['sft']}\n\n")
    out(
        f"memorization  train {s['train_examples']} examples, mean gain {s['mean_gain_per_token_train']} nats/answer token"
    )
    if s["membership_auc"] is not None:
        lo, hi = s["membership_auc_ci"]
        out(
            f"; held-out {s['heldout_examples']}, mean gain {s['mean_gain_per_token_heldout']}; membership AUC {s['membership_auc']:.2f} [{lo:.2f}, {hi:.2f}]"
        )
    out("\n")
    mem = sorted(
        (r for r in report.records if r["kind"] == "memorization" and r["split"] == "train"),
        key=lambda r: -r["gain_per_token"],
    )
    for r in mem[:5]:
        extra = f", perturbed-prompt overlap {r['regurgitation_overlap']:.0%}" if "regurgitation_overlap" in r else ""
        out(f"  {r['source']['file']}:{r['source']['line']}  gain {r['gain_per_token']:+.2f}/token{extra}\n")
    st = s["stopping"]
    out(f"stopping      P(end-of-turn after gold) base {st['base_p_eot_mean']} -> SFT {st['sft_p_eot_mean']}")
    if st["generated"]:
        out(
            f"; greedy stop rate base {st['base_stop_rate']:.0%} -> SFT {st['sft_stop_rate']:.0%}, run-on {st['sft_run_on']}/{st['generated']}"
        )
    out("\n")
    sp = s["special_facts"]
    if sp.get("added_tokens"):
        out(
            f"special facts added tokens {sp['added_tokens']}: gain {sp['mean_gain_per_token_using_them']}, leak max {sp['leak_max']:.2%}\n"
        )
    else:
        out("special facts none (the SFT tokenizer adds no tokens)\n")
    d = s["drift"]
    if d.get("texts"):
        boosted = ", ".join(repr(t["token"]) for t in d["top_boosted"][:5])
        out(
            f"drift         KL {d['kl_mean']:.4f} nats/token, CE {d['base_ce']:.2f} -> {d['sft_ce']:.2f}; most boosted: {boosted}\n"
        )
    for f in report.findings:
        out(f"{f.severity}: {f.check}: {f.message}\n")
    out(f"\n{'FLAGGED' if s['flagged'] else 'not flagged'}\n")
    if run_dir:
        out(f"wrote {run_dir}/probes/overfit.jsonl and summary.json\n")
