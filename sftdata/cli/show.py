"""`sftdata show`: one example token by token, the view users debug masks with."""

from __future__ import annotations

import json
import sys
from typing import Any

from sftdata.cli import kit
from sftdata.records import POLICIES, Conversation, Finding, Tokenized

DESCRIPTION = """\
Show one example as the trainer will see it: every token with its id, whether it is trained
(counts towards the loss) or masked, and which message it came from (-1 = template glue).

In a terminal: trained tokens are green, masked tokens dim, special tokens bold magenta, and each
message starts on a new line under a rule naming it.

examples:
  sftdata show data.jsonl --model smollm2-135m-instruct --line 12
  sftdata show data.jsonl --model ./my-model --id data/3 --policy last --json
"""


def _select(path: str, fmt: str | None, line: int | None, ex_id: str | None) -> tuple[Conversation, list[Finding]]:
    from sftdata import formats

    skipped: list[Finding] = []
    first: Conversation | None = None
    for item in formats.read(path, fmt):
        if isinstance(item, Finding):
            if item.severity == "error" and line is not None and item.source is not None and item.source.line == line:
                raise kit.UsageError(f"{item.location()}: this record could not be read: {item.message} ({item.hint})")
            skipped.append(item)
            continue
        if first is None:
            first = item
        if line is not None and item.source.line == line:
            return item, skipped
        if ex_id is not None and item.id == ex_id:
            return item, skipped
        if line is None and ex_id is None:
            return item, skipped
    if line is None and ex_id is None:
        why = next((f for f in skipped if f.severity == "error"), None)
        raise kit.UsageError(
            f"{path}: no readable example"
            + (
                f"; the first record could not be read: {why.location()}: {why.message} ({why.hint})"
                if why
                else " (the file holds no records)"
            )
        )
    what = f"--line {line}" if line is not None else f"--id {ex_id}"
    hint = f" (the first example is {first.id} at {first.source})" if first else ""
    raise kit.UsageError(
        f"{what}: no example there in {path}{hint}; line numbers are 1-based file lines, ids as `sftdata convert --json` lists them"
    )


def _token_rows(tok: Tokenized, tokenizer: Any) -> list[dict[str, Any]]:
    pieces = tokenizer.convert_ids_to_tokens(list(tok.input_ids))
    specials = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    rows = []
    for k, (i, m, mi) in enumerate(zip(tok.input_ids, tok.loss_mask, tok.message_index)):
        rows.append(
            {
                "index": k,
                "id": i,
                "text": tokenizer.decode([i], skip_special_tokens=False),
                "piece": pieces[k],
                "trained": m,
                "message_index": mi,
                "special": i in specials,
            }
        )
    return rows


def _print_human(
    conv: Conversation, tok: Tokenized, rows: list[dict[str, Any]], model: str, policy: str, color: bool
) -> None:
    from rich.console import Console
    from rich.text import Text

    # markup=False: token text such as "[/INST]" or "[b]" is data, never a style tag
    console = Console(
        force_terminal=color,
        no_color=not color,
        highlight=False,
        soft_wrap=True,
        markup=False,
        width=100 if not color else None,
    )
    console.print(f"{conv.source}  id={conv.id}  model={model}  policy={policy}")
    console.print(
        f"tokens: {len(tok.input_ids)}  trained: {tok.n_trained}  truncated: "
        f"{'yes (' + str(tok.n_tokens_full) + ' before truncation)' if tok.truncated else 'no'}"
    )
    for f in tok.findings:
        console.print(f"[{f.severity}] {f.check}: {f.message}", style="yellow" if color else None)
    legend = Text("legend: ")
    legend.append("trained", "bold green")
    legend.append("  masked", "dim")
    legend.append("  special", "bold magenta")
    legend.append("  │ = token boundary (plain output)")
    console.print(legend)
    out = Text()
    current = None
    for r in rows:
        if r["message_index"] != current and (r["message_index"] >= 0 or current is None):
            current = r["message_index"]
            label = "template glue" if current < 0 else f"message {current} · {conv.messages[current].role}"
            out.append(f"\n── {label} ──\n", "cyan")
        style = "bold magenta" if r["special"] else ("bold green" if r["trained"] else "dim")
        if r["special"] and r["trained"]:
            style = "bold magenta on dark_green"
        out.append(r["text"], style)
        if not color:
            out.append("│")
    console.print(out)
    console.print()
    console.print(f"{'#':>5} {'id':>7}  {'trained':<7} {'msg':>3}  token")
    for r in rows:
        console.print(
            f"{r['index']:>5} {r['id']:>7}  {'yes' if r['trained'] else '·':<7} {r['message_index']:>3}  {json.dumps(r['text'], ensure_ascii=False)}",
            style=("green" if r["trained"] else None) if color else None,
        )


def main(argv: list[str] | None = None) -> int:
    p = kit.parser("sftdata show", DESCRIPTION)
    p.add_argument("input", help="data file (any format sftdata reads) or saved HF dataset dir")
    p.add_argument("--model", required=True, help="local HF dir, hub id, or alias (see `sftdata models`)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--line", type=int, help="1-based line of the example in the file (default: the first example)")
    sel.add_argument("--id", dest="ex_id", help="example id (file stem/record number, e.g. data/3)")
    p.add_argument("--from", dest="fmt", help="input format (default: detected)")
    p.add_argument("--policy", default="assistant", choices=POLICIES, help="mask policy (default: assistant)")
    p.add_argument("--max-length", type=kit.positive_int, help="truncate at this many tokens, as training would")
    p.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour output (default: auto = when stdout is a terminal)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with every token")

    def body() -> int:
        args = p.parse_args(argv)
        from sftdata import masks, models, readers

        conv, _ = _select(readers.local_path(args.input), args.fmt, args.line, args.ex_id)
        tokenizer = models.load_tokenizer(args.model)
        tok = masks.tokenize(conv, tokenizer, policy=args.policy, max_length=args.max_length)
        rows = _token_rows(tok, tokenizer)
        if args.json:
            obj = {
                "schema_version": 1,
                "example_id": conv.id,
                "source": conv.source.to_dict(),
                "n_tokens": len(tok.input_ids),
                "n_trained": tok.n_trained,
                "truncated": tok.truncated,
                "tokens": [{k: r[k] for k in ("id", "text", "trained", "message_index")} for r in rows],
                "findings": [f.to_dict() for f in tok.findings],
            }
            sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        else:
            color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
            _print_human(conv, tok, rows, args.model, args.policy, color)
        return 1 if any(f.severity == "error" for f in tok.findings) else 0

    return kit.run(body)


if __name__ == "__main__":
    sys.exit(main())
