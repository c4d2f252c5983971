"""`probes` console script (also `python -m probes`): compare a base model with its SFT model.

  hallucination  facts the base knew that the SFT model answers wrongly (exit 1 when flagged)
  known          keep the facts of a suite that a model knows
  suite          make a suite from sftdata `knowledge` records
  overfit        memorization, stopping, special-token facts and drift (exit 1 when flagged)

Exit codes: 0 clean, 1 flagged, 2 usage/input error, 3 crash (a bug: traceback printed), 130 Ctrl-C,
143 SIGTERM.
docs/probes.md documents the output files and the rules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from sftdata.cli import kit
from sftdata.cli.kit import EXIT_OK, EXIT_USAGE, UsageError

EXIT_FLAGGED = kit.EXIT_FINDINGS  # exit 1: the probe flagged the SFT model (a CI gate)

USAGE = __doc__.split("\n\n", 1)[1]

# The command plumbing is sftdata's (DESIGN.md §5): one-line errors naming the flag, exit 2 for
# sftdata's and probes' own SftlabErrors (PairError, SuiteError are UsageErrors), 3 for bugs,
# 130 on Ctrl-C, 143 on SIGTERM.
_parser = kit.parser
_run = kit.run
_positive = kit.positive_int


def _print_json(command: str, summary: dict[str, Any], findings: list[Any]) -> None:
    kit.print_json(command, summary, [f.to_dict() for f in findings])


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "peft", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v}")
    return v


def _nonneg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


MODEL_HELP = "a local HF model directory, a hub id, or a built-in alias (`sftdata models`)"


# --- hallucination ---------------------------------------------------------------------------------


def hallucination_main(argv: list[str] | None = None) -> int:
    from probes import facts as h

    p = _parser(
        "probes hallucination",
        "Facts the base model knew before SFT that the SFT model answers wrongly.\n\n"
        "Each model ranks gold against distractors by answer log-likelihood: the base with a few-shot\n"
        "completion prompt, the SFT model in its chat template, and (control) the SFT model with the\n"
        "base's prompt. Exit 1 when flagged (see --alpha/--floor), 0 when not.",
    )
    p.add_argument(
        "--base", help=f"the model before SFT: {MODEL_HELP}; default: the base of an sfttrain run given as --sft"
    )
    p.add_argument(
        "--sft",
        required=True,
        help=f"the SFT model: {MODEL_HELP}, a merged model directory, or an "
        "`sfttrain run` directory (its LoRA adapter is toggled on one copy of the weights)",
    )
    p.add_argument(
        "--suite", default="builtin", help="suite JSONL (docs/probes.md) or `builtin` (376 facts, 13 relations)"
    )
    p.add_argument(
        "--run-dir",
        help="write RUN/probes/hallucination.jsonl and summary.json (default: --sft when it is a run directory)",
    )
    p.add_argument(
        "--method",
        choices=h.METHODS,
        default="likelihood",
        help="likelihood ranking (default), greedy generation, or both (generation is ~10x slower on a CPU)",
    )
    p.add_argument("--limit", type=_positive, help="only the last N items of each relation (a quick look)")
    p.add_argument(
        "--tie",
        type=_nonneg,
        default=h.TIE,
        help=f"margin in nats below which gold first is a tie, not knowledge (default {h.TIE})",
    )
    p.add_argument(
        "--alpha",
        type=_fraction,
        default=h.ALPHA,
        help=f"significance level of McNemar's exact test (default {h.ALPHA})",
    )
    p.add_argument("--floor", type=_fraction, default=h.FLOOR, help=f"minimum flip rate to flag (default {h.FLOOR})")
    p.add_argument("--top", type=int, default=10, help="worst flips shown (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object (DESIGN.md §5) instead of tables")

    def body() -> int:
        args = p.parse_args(argv)
        _setup_logging()
        from probes import api
        from probes.pair import read_run_dir

        run_dir = args.run_dir or (args.sft if read_run_dir(args.sft) else None)
        report = api.hallucination(
            args.base,
            args.sft,
            args.suite,
            run_dir=run_dir,
            method=args.method,
            tie=args.tie,
            alpha=args.alpha,
            floor=args.floor,
            limit=args.limit,
            command=["probes", "hallucination", *(sys.argv[2:] if argv is None else argv)],
        )
        if args.json:
            _print_json("hallucination", report.summary, report.findings)
        else:
            _print_hallucination(report, args.top, run_dir)
        return EXIT_FLAGGED if report.flagged else EXIT_OK

    return _run(body)


def _ci(c: list[float]) -> str:
    return f"[{c[0]:.0%}, {c[1]:.0%}]"


def _print_hallucination(report: Any, top: int, run_dir: str | None) -> None:
    s = report.summary
    out = sys.stdout.write
    out(f"narrow hallucination: base {s['base']}  ->  SFT {s['sft']}  ({s['items']} facts, {s['method']})\n\n")
    out(
        f"{'relation':<20} {'items':>5} {'known':>5} {'flips':>5} {'recov':>5} {'flip rate':>9} {'95% CI':>13} {'McNemar p':>10}  flag\n"
    )
    rows = list(s["by_relation"].items()) + [("ALL", s)]
    for rel, c in rows:
        flag = "FLAG" if c["flagged"] else ""
        out(
            f"{rel:<20} {c['items']:>5} {c['base_known']:>5} {c['flips']:>5} {c['recoveries']:>5} {c['flip_rate']:>9.1%} "
            f"{_ci(c['flip_rate_ci']):>13} {c['mcnemar_p']:>10.3g}  {flag}\n"
        )
    out(
        f"\nflips: {s['flips_knowledge']} with the knowledge lost (control prompt loses it too), "
        f"{s['flips_format']} with only the chat answer lost (control keeps it)\n"
    )
    if "generate" in s:
        g = s["generate"]
        out(
            f"generation: base correct {g['base_correct']}/{g['items']}, SFT correct {g['sft_correct']}/{g['items']}, "
            f"flips {g['flips']}, recoveries {g['recoveries']}\n"
        )
    flips = [r for r in report.records if r["flip"]]
    flips.sort(key=lambda r: r["sft"]["margin"] - r["base"]["margin"])
    if flips:
        out(f"\nworst flips (of {len(flips)}):\n")
        for r in flips[:top]:
            b, t = r["base"], r["sft"]
            out(
                f"  {r['id']:<22} {r['question']}\n      base {b['predicted']!r} ({b['margin']:+.2f})  ->  SFT {t['predicted']!r} "
                f"({t['margin']:+.2f})  [{r['flip_kind']}]\n"
            )
    bad = [f for f in report.findings if f.check == "probes.suite-row"]
    for f in bad:
        out(f"suite row skipped: {f.message}\n")
    verdict = "FLAGGED: " + s["rule"] if s["flagged"] else "not flagged (" + s["rule"] + ")"
    out(f"\n{verdict}\n")
    if run_dir:
        out(f"wrote {run_dir}/probes/hallucination.jsonl and summary.json\n")


# --- known -----------------------------------------------------------------------------------------------


def known_main(argv: list[str] | None = None) -> int:
    from probes import facts as h

    p = _parser(
        "probes known",
        "Keep the facts of a suite that a model knows (gold ranked first by at least --tie nats\n"
        "with the few-shot completion prompt). Run it on your base model to build a suite it knows.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--suite", default="builtin", help="suite JSONL or `builtin`")
    p.add_argument("-o", "--output", required=True, help="KNOWN.jsonl: the known facts, suite rows as read")
    p.add_argument("--tie", type=_nonneg, default=h.TIE, help=f"margin threshold in nats (default {h.TIE})")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    def body() -> int:
        args = p.parse_args(argv)
        _setup_logging()
        from probes.pair import PairError, _load
        from probes.scoring import pick_device
        from probes.suite import read_suite
        from sftdata import rundir

        items, bad = read_suite(args.suite)
        device, dtype = pick_device()
        if args.model is None:
            raise PairError("--model is required")
        model, tok = _load(args.model, "--model", dtype, device)
        sides = h.known(model, tok, items, tie=args.tie)
        rows = []
        by_rel: dict[str, list[int]] = {}
        for it, side in zip(items, sides):
            c = by_rel.setdefault(it.relation, [0, 0])
            c[0] += 1
            if side["known"]:
                c[1] += 1
                rows.append(
                    {
                        "id": it.id,
                        "relation": it.relation,
                        "question": it.question,
                        "gold": it.gold,
                        "aliases": list(it.aliases),
                        "distractors": list(it.distractors),
                        **({"completion_prompt": it.completion_prompt} if it.completion_prompt else {}),
                    }
                )
        rundir.write_jsonl(args.output, rows)
        summary = {
            "items": len(items),
            "known": len(rows),
            "by_relation": {r: {"items": a, "known": k} for r, (a, k) in by_rel.items()},
            "output": args.output,
            "model": args.model,
        }
        if args.json:
            _print_json("known", summary, bad)
        else:
            for rel, (a, k) in by_rel.items():
                sys.stdout.write(f"{rel:<20} {k:>4}/{a:<4} known\n")
            sys.stdout.write(f"{'ALL':<20} {len(rows):>4}/{len(items):<4} known -> {args.output}\n")
        return EXIT_OK

    return _run(body)


# --- suite ---------------------------------------------------------------------------------------------


def suite_main(argv: list[str] | None = None) -> int:
    p = _parser(
        "probes suite",
        "Make a hallucination suite from sftdata `knowledge` records\n"
        '({"entity", "facts": [{"fact", "value"}]}): one fact a row, distractors drawn from the values of\n'
        "the same fact for other entities.",
    )
    p.add_argument("--from", dest="source", required=True, help="knowledge JSONL/JSON file")
    p.add_argument("-o", "--output", required=True, help="suite JSONL to write")
    p.add_argument("--distractors", type=_positive, default=3, help="distractors per fact (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing distractors")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    def body() -> int:
        args = p.parse_args(argv)
        from probes.suite import from_knowledge
        from sftdata import rundir

        rows, findings = from_knowledge(args.source, n_distractors=args.distractors, seed=args.seed)
        if not rows:
            raise UsageError(
                f"--from {args.source}: no fact with distractors ({len(findings)} findings); "
                "a fact needs at least two entities with different values"
            )
        rundir.write_jsonl(args.output, rows)
        summary = {"facts": len(rows), "relations": len({r["relation"] for r in rows}), "output": args.output}
        if args.json:
            _print_json("suite", summary, findings)
        else:
            for f in findings:
                sys.stderr.write(f"{f.severity}: {f.message}\n")
            sys.stdout.write(f"{len(rows)} facts in {summary['relations']} relations -> {args.output}\n")
        return EXIT_OK

    return _run(body)


# --- overfit -------------------------------------------------------------------------------------------


def overfit_main(argv: list[str] | None = None) -> int:
    from probes import overfitting as overfit

    return overfit.main(argv)


COMMANDS = {"hallucination": hallucination_main, "known": known_main, "suite": suite_main, "overfit": overfit_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: probes {hallucination,known,suite,overfit} ...\n\n" + USAGE)
        return EXIT_OK if argv else EXIT_USAGE
    command = COMMANDS.get(argv[0])
    if command is None:
        sys.stderr.write(f"error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}\n")
        return EXIT_USAGE
    return command(argv[1:])
