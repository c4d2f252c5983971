"""`sfttrain` console script: `run` (train) and `merge` (fold an adapter into its base model)."""

from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings

from sftdata.cli import kit as clikit

USAGE = """usage: sfttrain {run,merge} ...

  run     train on exactly what the audit checked: sfttrain run [CONFIG.yaml] [--model M] [--data FILE...]
          [--output-dir RUN] [flags]
  merge   fold a run's LoRA adapter into its base model: sfttrain merge RUN -o DIR

Run `sfttrain COMMAND --help` for a command's options.
"""

RUN_HELP = """Train per CONFIG.yaml and flags (defaults < CONFIG.yaml < flags; with --resume the run's saved
config comes before CONFIG.yaml). The audit runs first, on the same files, tokenizer, policy and
max_length; error-level findings stop the run (exit 1) unless --force.

Writes RUN/audit/ and RUN/train/: config.yaml, metrics.jsonl, example_loss.parquet, adapter/ (LoRA)
or model/ (full fine-tuning), checkpoints/. Ctrl-C saves a checkpoint and exits 130; --resume
continues from the last checkpoint.

exit codes: 0 trained, 1 refused by the audit, 2 usage/config error, 3 crash, 130 interrupted"""


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _setup_logging() -> None:
    # Under torchrun / accelerate launch only rank 0 talks (others log warnings and errors).
    level = logging.INFO if _is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "datasets", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers/TRL deprecation chatter about their own internals is not actionable for users
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    if not sys.stderr.isatty():  # progress bars only on a terminal (DESIGN.md §5)
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


def run_main(argv: list[str]) -> int:
    from sfttrain import config as config_mod

    p = clikit.parser("sfttrain run", RUN_HELP)
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="config file (keys as below, snake_case)")
    p.add_argument("--force", action="store_true", help="train even when the audit finds error-level problems")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object (summary, and the gate's findings)")
    config_mod.add_flags(p)
    p.allow_abbrev = False  # --lr must not silently mean --lr-scheduler

    def body() -> int:
        args, unknown = p.parse_known_args(argv)
        if unknown:
            flags = [s for a in p._actions for s in a.option_strings]
            near = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1, cutoff=0.5)
            raise clikit.UsageError(
                f"sfttrain run: unknown argument {unknown[0]!r}"
                + (f"; did you mean {near[0]}?" if near else "")
                + " (see --help)"
            )
        base = None
        out = getattr(args, "output_dir", None)
        if args.resume and out is None and args.config:
            out = config_mod.load_yaml(args.config).output_dir
        if args.resume and out:
            from sfttrain.train import paths

            saved = paths(out).config
            if saved.is_file():
                base = config_mod.load_yaml(saved)
        cfg = config_mod.resolve(args, base)
        if args.print_config:
            sys.stdout.write(config_mod.to_yaml(cfg))
            return clikit.EXIT_OK
        config_mod.check_required(cfg)
        _setup_logging()
        from sfttrain.train import GateRefused, train

        try:
            result = train(cfg, force=args.force, resume=args.resume)
        except GateRefused as e:
            if args.json and _is_main_process():
                clikit.print_json(
                    "sfttrain run",
                    {"refused": True, "errors": len(e.findings), "run_dir": cfg.output_dir},
                    [f.to_dict() for f in e.findings],
                )
            sys.stderr.write(
                f"sfttrain: refusing to train: the audit found {len(e.findings)} error-level "
                f"problem(s) in {', '.join(cfg.data)}\n"
            )
            for f in e.findings[:5]:
                sys.stderr.write(f"  {f.location()}: [{f.check}] {f.message}\n    fix: {f.hint}\n")
            if len(e.findings) > 5:
                sys.stderr.write(f"  ... and {len(e.findings) - 5} more: see {cfg.output_dir}/audit/findings.jsonl\n")
            sys.stderr.write("Fix the data, or pass --force to train anyway (unusable examples are skipped).\n")
            return clikit.EXIT_FINDINGS
        summary = {
            "refused": False,
            "interrupted": result.interrupted,
            "steps": result.global_step,
            "examples": result.n_examples,
            "skipped": result.n_skipped,
            "final_loss": result.losses[-1] if result.losses else None,
            "run_dir": str(result.run_dir),
        }
        if args.json and _is_main_process():
            clikit.print_json("sfttrain run", summary, [])
        if result.interrupted:
            sys.stderr.write(
                f"interrupted at step {result.global_step}: checkpoint saved; continue with "
                f"`sfttrain run --resume --output-dir {cfg.output_dir}`\n"
            )
            return clikit.EXIT_INTERRUPTED
        if _is_main_process() and not args.json:
            last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
            print(
                f"trained {result.global_step} steps on {result.n_examples} examples "
                f"({result.n_skipped} skipped); final loss {last}; outputs in {result.run_dir}/train/"
            )
        return clikit.EXIT_OK

    return clikit.run(body)


def merge_main(argv: list[str]) -> int:
    p = clikit.parser(
        "sfttrain merge",
        "Merge RUN/train/adapter into the run's base model and save a full model "
        "directory (weights + tokenizer) to DIR.",
    )
    p.add_argument("run_dir", metavar="RUN", help="a finished `sfttrain run` directory")
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="where to write the merged model (new or empty)"
    )
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weights dtype (default fp32)")

    def body() -> int:
        args = p.parse_args(argv)
        _setup_logging()
        from sfttrain.merge import merge

        out = merge(args.run_dir, args.output, dtype=args.dtype)
        print(f"merged model written to {out}")
        return clikit.EXIT_OK

    return clikit.run(body)


COMMANDS = {"run": run_main, "merge": merge_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return clikit.EXIT_OK if argv else clikit.EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        sys.stderr.write(f"sfttrain: unknown command {name!r}{hint}\n")
        sys.stderr.write(USAGE)
        return clikit.EXIT_USAGE
    return COMMANDS[name](rest)


if __name__ == "__main__":
    sys.exit(main())
