"""`sftdata convert INPUT -o OUTPUT`: read any supported format, write another.

Prints what was read, written and skipped (grouped by check id with the first locations);
`--json` prints one JSON object instead. Exit 0 when every record converted, 1 when some were
skipped, 2 on usage errors.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator
from typing import Any

from sftdata import formats, progress, readers, rundir
from sftdata.cli import kit
from sftdata.records import Conversation, Finding

EXAMPLES = (
    """\
examples:
  sftdata convert examples/alpaca.json -o runs/alpaca.messages.jsonl
  sftdata convert data.jsonl -o data.parquet
  sftdata convert chats.json --from sharegpt -o chats.alpaca.json --to alpaca
  sftdata convert --dataset-info LLaMA-Factory/data/dataset_info.json --dataset glaive_toolcall_en_demo -o tools.jsonl

formats (--from / --to):
  """
    + ", ".join(formats.FORMATS)
    + """
  --to also takes parquet (the messages format, one JSON text per cell); by default --to follows
  the output extension: .parquet -> parquet, .jsonl/.json -> messages.
"""
)
SHOW_LOCATIONS = 3


def main(argv: list[str] | None = None) -> int:
    return kit.run(lambda: _convert(argv))


def _parser() -> Any:
    p = kit.parser("sftdata convert", "Convert SFT data between formats; bad records are reported, never fatal.")
    p.epilog = EXAMPLES
    p.add_argument(
        "input",
        nargs="?",
        help="input file (.jsonl/.json/.csv/.parquet, .gz ok), datasets directory "
        "or hub id; optional with --dataset-info",
    )
    p.add_argument("-o", "--output", required=True, help="output file (.jsonl, .json, .parquet; .gz ok)")
    p.add_argument(
        "--from", dest="from_", metavar="FORMAT", help="input format (default: detected from the first record)"
    )
    p.add_argument("--to", metavar="FORMAT", help="output format (default: from the output extension)")
    p.add_argument("--dataset-info", metavar="FILE", help="a LLaMA-Factory dataset_info.json (use with --dataset)")
    p.add_argument("--dataset", metavar="NAME", help="the dataset_info.json entry to convert")
    p.add_argument("--split", default="train", help="split for datasets directories and hub ids (default: train)")
    p.add_argument("--json", action="store_true", help="print one JSON object (summary + findings) on stdout")
    return p


def _convert(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    fmt, columns, source = _input_spec(args)
    if args.to is not None and args.to not in formats.WRITE_FORMATS:
        raise kit.UsageError(
            f"--to {args.to!r}: unknown format{_near(args.to, formats.WRITE_FORMATS)}; "
            f"use one of {', '.join(formats.WRITE_FORMATS)}"
        )
    try:
        to_fmt = formats.output_format(args.output, args.to)  # a bad -o/--to fails before reading
    except kit.SftlabError as e:
        raise kit.UsageError(f"-o/--to: {e.describe(kit.flag(e.param))}") from None
    rundir.check_output(args.output, "-o")
    source = readers.local_path(source)
    try:
        if fmt is None:
            fmt = formats.detect_file_format(source, args.split)
        stream = formats.read(source, fmt, columns=columns, split=args.split)
    except kit.SftlabError as e:
        flag = f"--dataset {args.dataset}" if args.dataset and not args.input else "INPUT"
        raise kit.UsageError(f"{flag} {e.describe(kit.flag(e.param))}") from None
    read_findings: list[Finding] = []
    counts = {"read": 0}

    def conversations(bar: Any) -> Iterator[Conversation]:
        for item in stream:
            if isinstance(item, Conversation):
                counts["read"] += 1
                bar.update()
                yield item
            else:
                read_findings.append(item)
                if item.severity == "error":  # a skipped record was read too
                    counts["read"] += 1
                    bar.update()

    total = progress.count_examples([source]) if progress.is_shown() else None
    with progress.bar("convert", total) as bar:
        result = formats.write(conversations(bar), args.output, to_fmt)
    findings = read_findings + result.skipped
    skipped = sum(f.severity == "error" for f in findings)
    summary = {
        "read": counts["read"],
        "written": result.written,
        "skipped": skipped,
        "input": source,
        "output": args.output,
        "from": fmt or "unknown",
        "to": to_fmt,
    }
    if args.json:
        kit.print_json("convert", summary, [f.to_dict() for f in findings])
    else:
        _print_report(summary, findings)
    return kit.EXIT_FINDINGS if skipped else kit.EXIT_OK


def _input_spec(args: Any) -> tuple[str | None, dict | None, str]:
    """(format, columns, input) from INPUT/--from or --dataset-info/--dataset."""
    if args.from_ is not None and args.from_ not in formats.FORMATS:
        raise kit.UsageError(
            f"--from {args.from_!r}: unknown format{_near(args.from_, formats.FORMATS)}; "
            f"use one of {', '.join(formats.FORMATS)}, or leave --from out to detect it"
        )
    if (args.dataset_info is None) != (args.dataset is None):
        raise kit.UsageError(
            "--dataset-info and --dataset go together: --dataset-info data/dataset_info.json --dataset NAME"
        )
    if args.dataset_info is not None:
        path, fmt, columns = formats.read_dataset_info(args.dataset_info, args.dataset)
        return args.from_ or fmt, columns, args.input or path
    if args.input is None:
        raise kit.UsageError(
            "INPUT is missing: sftdata convert INPUT -o OUTPUT (or --dataset-info FILE --dataset NAME)"
        )
    return args.from_, None, args.input


def _near(value: str, choices: tuple[str, ...]) -> str:
    near = difflib.get_close_matches(value, choices, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _print_report(summary: dict[str, Any], findings: list[Finding]) -> None:
    out = sys.stdout
    out.write(f"read    {summary['read']:>7} records  {summary['input']} ({summary['from']})\n")
    out.write(f"wrote   {summary['written']:>7} records  {summary['output']} ({summary['to']})\n")
    out.write(f"skipped {summary['skipped']:>7} records\n")
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.severity, f.check), []).append(f)
    for (severity, check), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != "error", kv[0][1])):
        what = "skipped" if severity == "error" else severity + ("" if len(group) == 1 else "s")
        out.write(f"\n{check}: {len(group)} {what}\n")
        for f in group[:SHOW_LOCATIONS]:
            out.write(f"  {f.location()}  {f.message}\n")
        if len(group) > SHOW_LOCATIONS:
            out.write(f"  ... and {len(group) - SHOW_LOCATIONS} more (--json lists them all)\n")
        out.write(f"  hint: {group[0].hint}\n")
