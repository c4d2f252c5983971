"""`sftdata audit INPUT... --model M`: every check in one pass; a report people act on.

Prints a table of findings by check id (count, severity, first locations), the worst examples with
file:line, what is wrong and the fix, and token-length statistics; writes RUN/audit/. `--json`
prints one object instead. Settings may also live in pyproject.toml under [tool.sftdata] (shared
keys) or [tool.sftdata.audit]; flags override them. Exit 0 clean, 1 findings at or above
--fail-on, 2 usage/config/input error.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftdata import catalogue, progress
from sftdata.catalogue import CHECKS, SEVERITY_RANK
from sftdata.cli import kit
from sftdata.errors import UsageError
from sftdata.records import POLICIES, SEVERITIES, Finding

EPILOG = """\
examples:
  sftdata audit examples/defects.jsonl --model smollm2-135m-instruct --max-length 512
  sftdata audit data.jsonl --model ./my-model --select tokens,mask --fail-on warning --json
  sftdata audit --explain tokens.special-in-content

pyproject.toml (flags override; keys are the long flag names):
  [tool.sftdata]
  model = "smollm2-135m-instruct"
  max-length = 2048
  [tool.sftdata.audit]
  ignore = ["length.over-max"]
  fail-on = "warning"

check ids: docs/checks.md (or --explain ID); areas: """ + ", ".join(catalogue.AREAS)

# Config keys (long flag names) and how to read them.
CONFIG_KEYS = ("model", "max-length", "policy", "select", "ignore", "fail-on", "run-dir", "from", "workers")
SHOW_EXAMPLES = 8
SHOW_LOCATIONS = 3


def main(argv: list[str] | None = None) -> int:
    return kit.run(lambda: _audit(argv))


def _parser() -> Any:
    p = kit.parser("sftdata audit", "Run every check on SFT data in one pass and write RUN/audit/.")
    p.epilog = EPILOG
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="data files (.jsonl/.json/.csv/.parquet, .gz ok)")
    p.add_argument("--model", help="tokenizer/model: local HF directory, hub id, or alias (`sftdata models`)")
    p.add_argument("--max-length", type=int, metavar="N", help="truncate examples to N tokens, as the trainer will")
    p.add_argument("--policy", choices=POLICIES, help="which messages are trained (default: assistant)")
    p.add_argument(
        "--select", action="append", metavar="IDS", help="only these checks (comma list; an area selects all of it)"
    )
    p.add_argument("--ignore", action="append", metavar="IDS", help="skip these checks (comma list; areas too)")
    p.add_argument(
        "--fail-on", choices=SEVERITIES, help="exit 1 on findings at or above this severity (default: error)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object: summary and every finding")
    p.add_argument(
        "--run-dir", metavar="DIR", help="run directory to write audit/ into (default: runs/audit-<UTC time>)"
    )
    p.add_argument("--explain", metavar="CHECK", help="print the long explanation of a check id and exit")
    p.add_argument("--from", dest="fmt", metavar="FORMAT", help="input format (default: detected per file)")
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes that read, tokenize and check, each a share of "
        "every file (default: the CPUs other processes leave idle, 1 for inputs under 1 MiB; "
        "1 = this process; also $SFTLAB_AUDIT_WORKERS)",
    )
    return p


# --------------------------------------------------------------------------------------------
# pyproject.toml


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.sftdata] table, walking up from `start` (cwd)."""
    d = Path(start or os.getcwd()).resolve()
    for folder in (d, *d.parents):
        path = folder / "pyproject.toml"
        if path.is_file():
            data = _read_toml(path)
            if isinstance(data.get("tool"), dict) and "sftdata" in data["tool"]:
                return path
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: not readable TOML ({e}); fix the file or run from another directory") from e
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UsageError(
            f"{path}:{line}: not UTF-8 text (TOML files must be UTF-8); re-save it as UTF-8 "
            "or run from another directory"
        ) from e


def load_config(start: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], Path | None]:
    """Audit settings from [tool.sftdata] overlaid with [tool.sftdata.audit]. Other sub-tables
    belong to other commands and are skipped; unknown keys are errors naming the nearest key."""
    path = find_pyproject(start)
    if path is None:
        return {}, None
    table = _read_toml(path)["tool"]["sftdata"]
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.sftdata] must be a table")
    merged: dict[str, Any] = {}
    for section, values in (
        ("tool.sftdata", {k: v for k, v in table.items() if not isinstance(v, dict)}),
        ("tool.sftdata.audit", table.get("audit") if isinstance(table.get("audit"), dict) else {}),
    ):
        for key, value in values.items():
            if key not in CONFIG_KEYS:
                near = difflib.get_close_matches(key.replace("_", "-"), CONFIG_KEYS, n=1)
                raise UsageError(
                    f"{path}: unknown key {key!r} in [{section}]"
                    + (f"; did you mean {near[0]!r}?" if near else "")
                    + f" (valid keys: {', '.join(CONFIG_KEYS)})"
                )
            merged[key] = value
    return _typed_config(merged, path), path


def _typed_config(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    def bad(key: str, expected: str) -> UsageError:
        return UsageError(f"{path}: [tool.sftdata] {key} = {cfg[key]!r}: expected {expected}")

    out = dict(cfg)
    for key in ("max-length", "workers"):
        if key in cfg and (not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1):
            raise bad(key, "a positive integer")
    for key in ("model", "policy", "fail-on", "run-dir", "from"):
        if key in cfg and not isinstance(cfg[key], str):
            raise bad(key, "a string")
    for key in ("select", "ignore"):
        if key in cfg:
            v = cfg[key]
            if isinstance(v, str):
                out[key] = [v]
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                out[key] = list(v)
            else:
                raise bad(key, "a list of check ids or a comma-separated string")
    if "policy" in cfg and cfg["policy"] not in POLICIES:
        raise bad("policy", " or ".join(POLICIES))
    if "fail-on" in cfg and cfg["fail-on"] not in SEVERITIES:
        raise bad("fail-on", " or ".join(SEVERITIES))
    if "from" in cfg:
        from sftdata.formats import FORMATS

        if cfg["from"] not in FORMATS:
            near = difflib.get_close_matches(cfg["from"], FORMATS, n=1)
            raise bad("from", "one of " + ", ".join(FORMATS) + (f" (did you mean {near[0]!r}?)" if near else ""))
    for key in ("select", "ignore"):
        if key in out:
            from sftdata.audit import parse_check_list

            try:
                parse_check_list(out[key], key)
            except UsageError as e:
                raise UsageError(f"{path}: [tool.sftdata] {e}") from None
    for key in ("run-dir", "model"):  # paths relative to the pyproject.toml's folder
        if key in cfg and not os.path.isabs(cfg[key]):
            candidate = path.parent / cfg[key]
            if key == "run-dir" or candidate.exists():
                out[key] = str(candidate)
    return out


# --------------------------------------------------------------------------------------------
# The command


def _audit(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.explain:
        return _explain(args.explain)
    cfg, cfg_path = load_config()
    model = args.model or cfg.get("model")
    if not args.inputs:
        raise UsageError("no INPUT given: pass one or more data files (or --explain CHECK)")
    if not model:
        raise UsageError(
            "--model is required (or `model` under [tool.sftdata] in pyproject.toml): a local model "
            "directory, a hub id, or an alias such as smollm2-135m-instruct (`sftdata models` lists them)"
        )
    run_dir = args.run_dir or cfg.get("run-dir")
    if run_dir is None:
        from sftdata.audit import default_run_dir

        run_dir = default_run_dir()
    from sftdata import readers, rundir

    flag = (
        "--run-dir"
        if args.run_dir
        else f"run-dir (from {cfg_path})"
        if cfg.get("run-dir")
        else "the default run directory"
    )
    rundir.check_output(run_dir, flag, directory=True)
    if args.inputs.count(readers.STDIN) > 1:
        raise UsageError("INPUT: `-` (standard input) can be given once")
    _setup_logging()
    inputs = [readers.local_path(p) for p in args.inputs]
    from sftdata.audit import run_audit

    total = progress.count_examples(inputs) if progress.is_shown() else None
    try:
        with progress.bar("audit", total) as bar:
            result = run_audit(
                inputs,
                model,
                max_length=args.max_length if args.max_length is not None else cfg.get("max-length"),
                policy=args.policy or cfg.get("policy", "assistant"),
                select=args.select if args.select is not None else cfg.get("select"),
                ignore=args.ignore if args.ignore is not None else cfg.get("ignore"),
                fail_on=args.fail_on or cfg.get("fail-on", "error"),
                run_dir=run_dir,
                fmt=args.fmt or cfg.get("from"),
                workers=args.workers if args.workers is not None else cfg.get("workers"),
                config_file=str(cfg_path) if cfg_path is not None else None,
                progress=bar.update,
            )
    except UsageError as e:
        if cfg_path is not None and not args.model and (e.param == "model" or "--model" in e.message):
            raise UsageError(
                f"{e.describe('--model')} (model = {model!r} comes from {cfg_path} [tool.sftdata])"
            ) from None
        raise
    if args.json:
        _print_json(result)
        sys.stderr.write(f"audit written to {os.path.join(run_dir, 'audit')}\n")
    else:
        sys.stdout.write(report(result, rich_table=sys.stdout.isatty()))
    return kit.EXIT_OK if result.passed else kit.EXIT_FINDINGS


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO if sys.stderr.isatty() else logging.WARNING,
            stream=sys.stderr,
            format="%(levelname)s %(name)s: %(message)s",
        )


def _explain(check_id: str) -> int:
    if check_id not in CHECKS:
        near = difflib.get_close_matches(check_id, list(CHECKS), n=3)
        raise UsageError(
            f"--explain {check_id!r}: no such check"
            + (f"; did you mean {', '.join(near)}?" if near else "")
            + " (docs/checks.md lists every id)"
        )
    sys.stdout.write(catalogue.explain(check_id))
    return kit.EXIT_OK


def _print_json(result: Any) -> None:
    """Exactly one object. With a run directory the findings are streamed from findings.jsonl
    (memory stays bounded however many there are)."""
    summary = result.summary
    if result.run_dir and os.path.isfile(os.path.join(result.run_dir, "audit", "findings.jsonl")):
        out = sys.stdout
        out.write('{"schema_version": 1, "command": "audit", "summary": ')
        out.write(json.dumps(summary, ensure_ascii=False, default=str))
        out.write(', "findings": [')
        with open(os.path.join(result.run_dir, "audit", "findings.jsonl"), encoding="utf-8") as f:
            for i, line in enumerate(f):
                out.write(("," if i else "") + line.rstrip("\n"))
        out.write("]}\n")
        return
    kit.print_json("audit", summary, [f.to_dict() for f in result.findings])


# --------------------------------------------------------------------------------------------
# Human report


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _table_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for check, c in summary["checks"].items():
        count = f"{c['findings']}" if c["findings"] == c["examples"] else f"{c['findings']} ({c['examples']} ex.)"
        where = ", ".join(c["first"][:SHOW_LOCATIONS]) if c["first"] else "(template/tokenizer)"
        rows.append((check, c["severity"], count, where))
    return rows


def _plain_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        lines.append("  ".join(str(v).ljust(w) for v, w in zip(r[:-1], widths[:-1])) + "  " + str(r[-1]))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _rich_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    import io
    import shutil

    from rich.console import Console
    from rich.table import Table

    table = Table(*header, show_edge=False, pad_edge=False)
    style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for r in rows:
        table.add_row(r[0], f"[{style.get(r[1], '')}]{r[1]}[/]", r[2], r[3])
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=shutil.get_terminal_size().columns).print(table)
    return buf.getvalue()


def _worst_examples(findings: Sequence[Finding]) -> list[tuple[str, list[Finding]]]:
    by_example: dict[str, list[Finding]] = {}
    for f in findings:
        if f.example_id is not None and f.check not in catalogue.PER_TEMPLATE:
            by_example.setdefault(f.example_id, []).append(f)
    ranked = sorted(by_example.items(), key=lambda kv: (-max(SEVERITY_RANK[f.severity] for f in kv[1]), -len(kv[1])))
    return ranked[:SHOW_EXAMPLES]


def report(result: Any, *, rich_table: bool = False) -> str:
    """The human report of an AuditResult (what `sftdata audit` prints without --json)."""
    s = result.summary
    out: list[str] = []
    inputs = s["inputs"]
    out.append(
        f"sftdata audit: {len(inputs)} input{'s' if len(inputs) != 1 else ''}, {s['examples']} examples"
        + (f" (+{s['records_unreadable']} unreadable records)" if s["records_unreadable"] else "")
        + f", model {s['model']}, policy {s['policy']}"
        + (f", max length {s['max_length']}" if s["max_length"] else "")
        + "\n"
    )
    if s["checks"]:
        header = ("check", "severity", "count", "first locations")
        rows = _table_rows(s)
        out.append("\n" + (_rich_table(rows, header) if rich_table else _plain_table(rows, header)))
    else:
        out.append("\nno findings\n")
    global_findings = [f for f in result.findings if f.check in catalogue.PER_TEMPLATE]
    if global_findings:
        out.append("\ntemplate and tokenizer\n")
        for f in global_findings:
            out.append(f"  {f.severity} {f.check}: {_one_line(f.message, 400)}\n    fix: {_one_line(f.hint, 300)}\n")
    worst = _worst_examples(result.findings)
    if worst:
        out.append("\nworst examples\n")
        for example_id, fs in worst:
            where = fs[0].location()
            out.append(f"  {where}  ({example_id})\n")
            for f in sorted(fs, key=lambda f: -SEVERITY_RANK[f.severity])[:4]:
                out.append(f"    {f.severity} {f.check}: {_one_line(f.message)}\n      fix: {_one_line(f.hint)}\n")
    stats = s["token_stats"]
    if "n_tokens" in stats:
        n = stats["n_tokens"]
        out.append(
            f"\ntoken lengths (before truncation): min {n['min']}  p50 {n['p50']}  p90 {n['p90']}  p95 {n['p95']}  "
            f"p99 {n['p99']}  max {n['max']}  mean {n['mean']}\n"
        )
        out.append(
            f"  {stats['tokens']} tokens kept, {stats['trained_tokens']} trained, "
            f"{stats['truncated_examples']} examples truncated\n"
        )
        rows = [(L, str(c["over"]), str(c["answers_cut"])) for L, c in stats["max_length_candidates"].items()]
        out.append(_indent(_plain_table(rows, ("max length", "examples over", "answers cut")), "  "))
    if s.get("run_dir"):
        out.append(f"\nwrote {os.path.join(s['run_dir'], 'audit')}/ (summary.json, findings.jsonl, examples.parquet)\n")
    bad = sum(n for sev, n in s["by_severity"].items() if SEVERITY_RANK[sev] >= SEVERITY_RANK[s["fail_on"]])
    if result.passed:
        out.append(
            f"PASSED: no findings at or above {s['fail_on']} "
            f"({', '.join(f'{n} {sev}' for sev, n in s['by_severity'].items() if n) or 'none at all'})\n"
        )
    else:
        out.append(
            f"FAILED: {bad} findings at or above {s['fail_on']} (--fail-on {s['fail_on']}); "
            "`sftdata audit --explain CHECK` explains a check\n"
        )
    return "".join(out)


def _indent(text: str, prefix: str) -> str:
    return "".join(prefix + line for line in text.splitlines(keepends=True))


if __name__ == "__main__":
    sys.exit(main())
