"""Every SFT format to and from `Conversation`: read, detect_format, write, read_dataset_info.

Reading: `sftdata.readers` yields raw rows from the container (JSONL, JSON, CSV, parquet, HF
datasets); this module turns each row into a Conversation with a parser per format, or into a
Finding when the row is bad. Nothing here raises on bad data.

Writing: an encoder per format turns a Conversation back into a row, or explains why it cannot
(the record is skipped with a `format.unrepresentable` finding: a writer never drops what a
conversation means, such as a tool call, reasoning or a per-message `train` override).

Round trips lose nothing. What a row holds beyond its format's fields goes into
`Conversation.meta` and comes back out of the writer:
  meta["columns"]       columns the format does not use (label, id, template, ...), written back as-is
  meta["message_keys"]  {"<message index>": {key: value}} unknown per-message keys
  meta["input"]         the alpaca `input` part of the last user turn (user = instruction + "\\n" + input)
  meta["rejected"]      preference data: the rejected answer as message dicts (SFT trains on chosen)
  plus a few format-specific keys (documented at their parsers).
The shape a record had before it became a chat ("text", "text-label", "prompt-completion" with
plain strings, "knowledge", "self-instruct-seed") is `Conversation.shape`, not meta: it changes
how the conversation is tokenized. The messages format keeps meta, and the shape as `kind`, under
a `_meta` key so messages -> messages is exact. Each parser returns a `Parsed`.

`import sftdata.formats` imports neither torch nor transformers; pyarrow and datasets are
imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from sftdata import readers
from sftdata.catalogue import emits, finding
from sftdata.errors import DataError, UsageError
from sftdata.records import (
    ROLES,
    SHAPES,
    Conversation,
    Finding,
    Message,
    Source,
    id_prefix,
    new_conversation,
    new_message,
)
from sftdata.rundir import atomic_open

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = (
    "messages",
    "sharegpt",
    "alpaca",
    "prompt-completion",
    "qa",
    "text",
    "text-label",
    "knowledge",
    "preference",
    "sharegpt-ranking",
    "typed-blocks",
    "self-instruct-seed",
)
# `parquet` is the messages format in a parquet file (one JSON text per row and column).
WRITE_FORMATS: tuple[str, ...] = FORMATS + ("parquet",)
META_KEY = "_meta"  # where the messages format keeps Conversation.meta
_DETECT_ROWS = 100  # dict records looked at before giving up on detection
_PARQUET_BATCH = 1024


class Parsed(NamedTuple):
    """What a format's parser makes of one row."""

    messages: list[Message]
    tools: tuple[dict[str, Any], ...] | None
    meta: dict[str, Any]  # Conversation.meta: what the writer needs to give the row back
    consumed: set[str]  # the row's keys the format used (the others are kept as meta["columns"])
    shape: str = "chat"  # Conversation.shape


@dataclass(frozen=True)
class WriteResult:
    written: int
    skipped: list[Finding]


class RecordError(Exception):
    """Why one record cannot be read or written; becomes a Finding, never escapes this module."""

    def __init__(self, check: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.check, self.message, self.hint = check, message, hint


# ============================================================================================
# Reading
# ============================================================================================


# What reading reports about records (one finding per bad record, or an oddity of a good one).
READ_EMITS = (
    "format.parse-error",
    "format.missing-field",
    "format.wrong-type",
    "format.bad-role",
    "format.unsupported-content",
    "format.empty-content",
)


@emits(*READ_EMITS)
def read(
    path: str, fmt: str | None = None, *, columns: dict | None = None, split: str = "train", limit: int | None = None
) -> Iterator[Conversation | Finding]:
    """Conversations from `path`, one per good record, and a Finding per bad one (severity
    "error": the record is skipped) or per oddity (warning: the conversation still follows).

    `fmt` is one of FORMATS, or None to detect it from the first record that tells.
    `columns` maps LLaMA-Factory column and tag names to this file's (see read_dataset_info).
    `limit` stops after that many records (good or bad).

    Raises (before yielding anything) only DataError when the path does not exist or the format
    cannot be detected, UsageError when `fmt` is unknown."""
    path = os.fspath(path)
    if columns and fmt is None:
        raise UsageError(
            "a columns mapping needs its format too: pass fmt= (read_dataset_info returns both)", param="columns"
        )
    fmt = resolve_format(path, fmt, split)  # DataError/UsageError now, not on first next()
    return (item for _, item in _read(path, fmt, dict(columns or {}), split, limit, None))


def resolve_format(path: str, fmt: str | None = None, split: str = "train") -> str | None:
    """`fmt` checked, or the format detected from the file (None: no record tells). Raises
    UsageError for an unknown format, DataError for a missing path or records that match no format."""
    path = os.fspath(path)
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(
            f"unknown format{_did_you_mean(fmt, FORMATS)}; known formats: {', '.join(FORMATS)}", param="fmt", value=fmt
        )
    readers.container_of(path)
    return fmt if fmt is not None else detect_file_format(path, split)


@emits(*READ_EMITS)
def read_numbered(
    path: str, fmt: str | None = None, *, split: str = "train", keep: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, Conversation | Finding]]:
    """What read() yields, each item with the 1-based number of the record it came from (one
    record may yield a Finding and its Conversation). `keep(number)` reads only the records it
    accepts, skipping the others before they are parsed (shards of one file for worker processes)."""
    path = os.fspath(path)
    return _read(path, resolve_format(path, fmt, split), {}, split, None, keep)


def _read(
    path: str,
    fmt: str | None,
    columns: dict[str, Any],
    split: str,
    limit: int | None,
    keep: Callable[[int], bool] | None,
) -> Iterator[tuple[int, Conversation | Finding]]:
    prefix = id_prefix(path)  # make_id(path, n) without working out the file stem per record
    for rec in readers.iter_records(path, split, keep):
        n = rec.number
        if limit is not None and n > limit:
            return
        example_id = f"{prefix}{n}"
        if rec.error is not None:
            yield (
                n,
                finding(
                    "format.parse-error",
                    f"record {n} is unreadable: {rec.error}",
                    hint="fix or delete this record; the rest of the file is read on",
                    example_id=example_id,
                    source=rec.source,
                ),
            )
            continue
        if not isinstance(rec.row, dict):
            yield (
                n,
                finding(
                    "format.parse-error",
                    f"record {n} is a JSON {_typename(rec.row)}, expected an object",
                    hint='every record must be a JSON object such as {"messages": [...]}',
                    example_id=example_id,
                    source=rec.source,
                ),
            )
            continue
        try:
            conv = _parse_row(rec.row, fmt, columns, example_id, rec.source)
        except RecordError as e:
            yield (
                n,
                finding(
                    e.check, f"{fmt} record {n}: {e.message}", hint=e.hint, example_id=example_id, source=rec.source
                ),
            )
            continue
        for f in _content_warnings(conv):
            yield n, f
        yield n, conv


def detect_file_format(path: str, split: str = "train") -> str | None:
    """The format of `path`: that of the first record that has one. None when the file has no
    object records at all (then every record becomes a finding anyway). Raises DataError when
    records exist but match no format."""
    path = os.fspath(path)
    seen: list[tuple[Source, list[str]]] = []
    records = readers.iter_records(path, split)
    try:
        for rec in records:
            if not isinstance(rec.row, dict):
                continue
            fmt = detect_format(rec.row)
            if fmt is not None:
                log.info("%s: detected format %s from %s", path, fmt, rec.source)
                return fmt
            seen.append((rec.source, sorted(rec.row)))
            if len(seen) >= _DETECT_ROWS:
                break
    finally:
        records.close()
    if not seen:
        return None
    source, keys = seen[0]
    raise DataError(
        f"{path}: cannot tell the format: the first record ({source}) has keys {keys}, "
        f"which match none of: {', '.join(FORMATS)}. Name it with --from FORMAT "
        "(or fmt=, or a dataset_info.json entry with --dataset-info)"
    )


def detect_format(row: dict) -> str | None:
    """The format a row is in, from its keys (and, for `messages`, its messages' shape)."""
    if not isinstance(row, dict):
        return None
    if "conversations" in row or ("messages" in row and _looks_sharegpt(row["messages"])):
        return "sharegpt-ranking" if "chosen" in row and "rejected" in row else "sharegpt"
    if "messages" in row:
        return "typed-blocks" if _looks_typed_blocks(row["messages"]) else "messages"
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "instruction" in row and "instances" in row:
        return "self-instruct-seed"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    if "question" in row and "answer" in row:
        return "qa"
    if "entity" in row and "facts" in row:
        return "knowledge"
    if "text" in row:
        return "text-label" if "label" in row else "text"
    return None


def _first_messages(value: Any) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return []
    return value[:4] if isinstance(value, list) else []


def _looks_sharegpt(messages: Any) -> bool:
    return any(isinstance(m, dict) and ("from" in m or "value" in m) for m in _first_messages(messages))


def _looks_typed_blocks(messages: Any) -> bool:
    for m in _first_messages(messages):
        if not isinstance(m, dict):
            continue
        if "loss_weight" in m:
            return True
        content = m.get("content")
        if isinstance(content, list) and any(isinstance(b, dict) and "value" in b for b in content):
            return True
    return False


def _parse_row(
    row: dict[str, Any], fmt: str | None, columns: dict[str, Any], example_id: str, source: Source
) -> Conversation:
    if fmt is None:  # no format could be detected for this file: say what this row looks like
        raise RecordError(
            "format.missing-field",
            f"no known format's fields (keys: {_keys(row)})",
            f"name the format with --from (one of {', '.join(FORMATS)})",
        )
    parsed = _PARSERS[fmt](row, columns)
    if not parsed.messages:
        raise RecordError("format.missing-field", "no messages", "a record needs at least one message")
    meta = parsed.meta
    extra = {} if parsed.consumed.issuperset(row) else {k: v for k, v in row.items() if k not in parsed.consumed}
    if meta.get("columns"):
        extra = {**meta["columns"], **extra}
    meta.pop("columns", None)
    if extra:
        meta["columns"] = extra
    return new_conversation(example_id, tuple(parsed.messages), source, parsed.tools, meta, parsed.shape)


def _content_warnings(conv: Conversation) -> list[Finding]:
    """format.empty-content for each message with nothing in it (a list: most records have none,
    and an empty list costs less per record than a generator). A message whose first character is
    not whitespace has content: most records are settled by that, without copying any text."""
    for m in conv.messages:
        if not m.content[:1].strip():  # empty, or starts with whitespace: look closer
            break
    else:
        return []
    return [
        finding(
            "format.empty-content",
            f"message {i} ({m.role}) has empty content",
            conv,
            hint="fill it in or drop the record: an empty assistant turn teaches the model to answer with nothing",
        )
        for i, m in enumerate(conv.messages)
        if not m.content.strip() and not m.tool_calls
    ]


# --- field helpers -----------------------------------------------------------------------------


def _typename(v: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _keys(row: dict[str, Any]) -> list[str]:
    keys = sorted(row)
    return keys[:12] + ["..."] if len(keys) > 12 else keys


def _get(row: dict[str, Any], key: str, types: type | tuple[type, ...], what: str = "record") -> Any:
    """row[key], which must be present, not null, and of `types`."""
    value = row.get(key)
    if value is None:
        raise RecordError(
            "format.missing-field",
            f"{what} has no {key!r} (keys: {_keys(row)})",
            f"add {key!r}, or name the right format with --from",
        )
    return _typed(value, types, f"{what} field {key!r}")


def _typed(value: Any, types: type | tuple[type, ...], what: str) -> Any:
    if type(value) is types or (type(types) is tuple and type(value) in types):
        return value  # exactly one of the types: the common case, checked first (a hot path of reading)
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(dict.fromkeys(_typename(t()) for t in types))
        raise RecordError(
            "format.wrong-type", f"{what} is a {_typename(value)}, expected a {expected}", f"make {what} a {expected}"
        )
    return value


def _opt_str(d: dict[str, Any], key: str, what: str) -> str | None:
    v = d.get(key)
    return None if v is None else _typed(v, str, f"{what} {key!r}")


def _as_list(value: Any, what: str) -> list[Any]:
    """A list, or a string holding a JSON list (LLaMA-Factory stores `tools` that way; CSV and
    parquet cells hold nested values that way)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(
                "format.parse-error",
                f"{what} is a string but not valid JSON ({e.msg} at column {e.colno})",
                f"store {what} as a JSON array",
            ) from None
    return _typed(value, list, what)


def _join_input(instruction: str, query: str | None) -> str:
    """LLaMA-Factory's convention for alpaca-style prompts: instruction + "\\n" + input."""
    return f"{instruction}\n{query}" if query else instruction


def _split_input(content: str, meta: dict[str, Any]) -> tuple[str, str]:
    query = meta.get("input")
    if isinstance(query, str) and query and content.endswith("\n" + query):
        return content[: -len(query) - 1], query
    return content, ""


def _tools(row: dict[str, Any], key: str) -> tuple[tuple[dict[str, Any], ...] | None, bool]:
    """(tools, consumed). An absent, null or empty-string column is left for passthrough."""
    value = row.get(key)
    if value is None or value == "":
        return None, False
    tools = _as_list(value, f"{key!r}")
    for i, t in enumerate(tools):
        _typed(t, dict, f"{key}[{i}]")
    return tuple(tools), True


def _scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


# ============================================================================================
# Writing
# ============================================================================================


@emits("format.unrepresentable", "format.parse-error")
def write(conversations: Iterable[Conversation], path: str, fmt: str | None = None) -> WriteResult:
    """Write conversations to `path` atomically, in `fmt` (default from the extension: .parquet ->
    parquet, .jsonl/.json -> messages). .jsonl writes one row per line, .json an array, .gz
    compresses either. A conversation the format cannot hold is skipped with a
    `format.unrepresentable` finding in WriteResult.skipped.

    Raises UsageError for an unknown format or a format/extension mismatch."""
    path = os.fspath(path)
    fmt = output_format(path, fmt)
    container, gz = _output_container(path)
    if container == "parquet":
        return _write_parquet(conversations, path, gz)
    encode = _ENCODERS[fmt]
    skipped: list[Finding] = []
    written = 0
    with atomic_open(path, "wb") as raw:
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
        if container == "json":
            out.write(b"[")
        for conv in conversations:
            try:
                row = encode(conv)
            except RecordError as e:
                skipped.append(_skip_finding(conv, fmt, e))
                continue
            try:
                if container == "json":
                    text = json.dumps(row, ensure_ascii=False, indent=2).replace("\n", "\n  ")
                    data = ((",\n  " if written else "\n  ") + text).encode("utf-8")
                else:
                    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            except UnicodeEncodeError as e:
                skipped.append(_skip_finding(conv, fmt, _not_unicode(e)))
                continue
            out.write(data)
            written += 1
        if container == "json":
            out.write(b"\n]\n" if written else b"]\n")
        if gz:
            out.close()
    log.info("wrote %d %s records to %s (%d skipped)", written, fmt, path, len(skipped))
    return WriteResult(written, skipped)


def _output_container(path: str) -> tuple[str, bool]:
    name = path.lower()
    gz = name.endswith(".gz")
    name = name[:-3] if gz else name
    for ext, container in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet")):
        if name.endswith(ext):
            return container, gz
    raise UsageError(f"output {path}: unknown extension; write .jsonl, .json or .parquet (optionally .gz)")


def output_format(path: str, fmt: str | None = None) -> str:
    """The format write() will use for `path`: `fmt`, or the extension's default. Raises
    UsageError for an unknown format, extension, or a mismatch of the two."""
    container, _ = _output_container(os.fspath(path))
    if fmt is None:
        return "parquet" if container == "parquet" else "messages"
    if fmt not in WRITE_FORMATS:
        raise UsageError(
            f"unknown output format {fmt!r}{_did_you_mean(fmt, WRITE_FORMATS)}; known: {', '.join(WRITE_FORMATS)}"
        )
    if container == "parquet" and fmt not in ("parquet", "messages"):
        raise UsageError(f"output {path}: parquet files hold the messages format; write {fmt} to .jsonl or .json")
    if fmt == "parquet" and container != "parquet":
        raise UsageError(f"output {path}: the parquet format needs a .parquet file name")
    return "parquet" if container == "parquet" else fmt


def _not_unicode(e: UnicodeEncodeError) -> RecordError:
    return RecordError(
        "format.parse-error",
        f"its text holds an unpaired surrogate {e.object[e.start : e.end]!r}, which is not valid Unicode",
        "repair or drop the character (text cut in the middle of an emoji)",
    )


def _skip_finding(conv: Conversation, fmt: str, e: RecordError) -> Finding:
    return finding(e.check, f"cannot write {conv.id} as {fmt}: {e.message}", conv, hint=e.hint)


def _cannot(fmt: str, why: str, hint: str | None = None) -> RecordError:
    return RecordError("format.unrepresentable", why, hint or f"write it as messages (.jsonl) instead of {fmt}")


def _with_columns(row: dict[str, Any], conv: Conversation) -> dict[str, Any]:
    """The format's fields, then the passthrough columns they do not shadow."""
    for key, value in conv.meta.get("columns", {}).items():
        row.setdefault(key, value)
    return row


def _require_plain(conv: Conversation, fmt: str, *, tools_ok: bool = False) -> None:
    """Formats without tool turns, reasoning or per-message overrides: say which message has one.
    A `train` flag that says what the default policy does anyway (assistant trained, others not)
    is not an override."""
    if conv.tools is not None and not tools_ok:
        raise _cannot(fmt, f"{fmt} has no place for the tool schemas")
    for i, m in enumerate(conv.messages):
        if m.role == "tool" or m.tool_calls:
            raise _cannot(fmt, f"message {i} is a tool {'call' if m.tool_calls else 'result'}, which {fmt} cannot hold")
        if m.reasoning is not None:
            raise _cannot(fmt, f"message {i} has reasoning, which {fmt} cannot hold")
        if m.name is not None:
            raise _cannot(fmt, f"message {i} has a name ({m.name!r}), which {fmt} cannot hold")
        _require_default_train(conv, i, m, fmt)


def _require_default_train(conv: Conversation, i: int, m: Message, fmt: str) -> None:
    if m.train is not None and m.train != (m.role == "assistant"):
        raise _cannot(fmt, f"message {i} ({m.role}) sets train={m.train}, which {fmt} cannot hold")
    if str(i) in conv.meta.get("loss_weights", {}):
        raise _cannot(fmt, f"message {i} has loss_weight {conv.meta['loss_weights'][str(i)]}, which {fmt} cannot hold")


def _roles(conv: Conversation) -> list[str]:
    return [m.role for m in conv.messages]


def _pairs(conv: Conversation, fmt: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(system, [(user, assistant), ...]) for a plain alternating conversation."""
    msgs = list(conv.messages)
    system = msgs.pop(0).content if msgs and msgs[0].role == "system" else None
    expected = ["user", "assistant"] * (len(msgs) // 2)
    if not msgs or [m.role for m in msgs] != expected:
        raise _cannot(fmt, f"{fmt} needs an optional system turn then user/assistant pairs; roles are {_roles(conv)}")
    return system, [(msgs[i].content, msgs[i + 1].content) for i in range(0, len(msgs), 2)]


# ============================================================================================
# The formats: each one's parser (row -> Parsed) and encoder (Conversation -> row), side by side
# ============================================================================================


# --- messages (OpenAI) ------------------------------------------------------------------------

_OPENAI_KEYS = {
    "role",
    "content",
    "tool_calls",
    "name",
    "tool_call_id",
    "reasoning_content",
    "reasoning",
    "train",
    "loss_weight",
}


def _parse_messages(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """OpenAI `messages` (+ `tools`). Keeps our own `_meta` key as Conversation.meta."""
    key, tools_key = cols.get("messages", "messages"), cols.get("tools", "tools")
    raw = _as_list(_get(row, key, (list, str)), f"{key!r}")
    meta: dict[str, Any] = {}
    consumed = {key}
    shape = "chat"
    if isinstance(row.get(META_KEY), dict):
        meta = _checked_meta(row[META_KEY])
        consumed.add(META_KEY)
        if meta.get("kind") in SHAPES:  # the shape the record had before it was written as messages
            shape = meta.pop("kind")
    messages = _openai_messages(raw, key, 0, meta)
    tools, used = _tools(row, tools_key)
    if used:
        consumed.add(tools_key)
    return Parsed(messages, tools, meta, consumed, shape)


# The meta keys writers read back, and their types: a hand-edited `_meta` must not crash a writer.
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "columns": dict,
    "message_keys": dict,
    "loss_weights": dict,
    "sharegpt": dict,
    "input": str,
    "rejected": list,
    "n_prompt": int,
    "preference_form": str,
    "prompt_key": str,
    "output_list": bool,
    "output_rest": list,
    "instances_rest": list,
    "label": (str, int, float, bool),
    "entity": str,
    "facts": list,
}


def _checked_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A private copy of a messages row's `_meta`, its known keys type-checked."""
    for key, types in _META_TYPES.items():
        if key in meta:
            _typed(meta[key], types, f"{META_KEY}.{key}")
    for key in ("message_keys", "sharegpt"):
        for k, v in meta.get(key, {}).items():
            _typed(v, dict if key == "message_keys" else str, f"{META_KEY}.{key}.{k}")
    for k, v in meta.get("loss_weights", {}).items():
        _typed(v, (int, float), f"{META_KEY}.loss_weights.{k}")
    for i, m in enumerate(meta.get("rejected", [])):
        _typed(m, dict, f"{META_KEY}.rejected[{i}]")
    meta = json.loads(json.dumps(meta))
    if "message_keys" in meta:  # the writer merges these into message dicts: keep what survives that
        kept = {
            i: {k: v for k, v in keys.items() if v is not None and k not in _OPENAI_KEYS}
            for i, keys in meta["message_keys"].items()
        }
        meta["message_keys"] = {i: keys for i, keys in kept.items() if keys}
        if not meta["message_keys"]:
            del meta["message_keys"]
    return meta


def _openai_messages(raw: list[Any], key: str, offset: int, meta: dict[str, Any]) -> list[Message]:
    return [_openai_message(d, f"{key}[{i}]", offset + i, meta) for i, d in enumerate(raw)]


def _openai_message(d: Any, where: str, index: int, meta: dict[str, Any]) -> Message:
    if type(d) is dict and len(d) == 2 and type(d.get("content")) is str and d.get("role") in ROLES:
        return new_message(d["role"], d["content"])  # the common plain message: nothing else to check
    _typed(d, dict, where)
    role = d.get("role")
    if role is None:
        raise RecordError(
            "format.missing-field",
            f"{where} has no 'role' (keys: {_keys(d)})",
            "give every message a role: system, user, assistant or tool",
        )
    if role not in ROLES:
        raise RecordError(
            "format.bad-role",
            f"{where} has role {role!r}, expected one of {', '.join(ROLES)}",
            "rename the role (developer -> system, function -> tool), or use --from sharegpt for from/value data",
        )
    if "content" not in d and not d.get("tool_calls"):
        raise RecordError(
            "format.missing-field",
            f"{where} ({role}) has no 'content' key (keys: {_keys(d)})",
            "add the message text as 'content' (\"\" if it really is empty)",
        )
    reasoning = d.get("reasoning_content") if d.get("reasoning_content") is not None else d.get("reasoning")
    message = new_message(
        role=role,
        content=_content_text(d.get("content"), f"{where}.content"),
        tool_calls=_tool_calls(d.get("tool_calls"), where),
        name=_opt_str(d, "name", where),
        tool_call_id=_opt_str(d, "tool_call_id", where),
        reasoning=None if reasoning is None else _typed(reasoning, str, f"{where} reasoning"),
        train=_train(d, where, index, meta),
    )
    _keep_extra_keys(d, _OPENAI_KEYS, index, meta)
    return message


def _content_text(content: Any, where: str) -> str:
    """A string, or OpenAI content parts of which only text parts are supported (joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            _typed(part, dict, f"{where}[{j}]")
            kind = part.get("type")
            if kind != "text":
                raise RecordError(
                    "format.unsupported-content",
                    f"{where}[{j}] is a {kind!r} part; only text is supported",
                    "drop image/audio parts: sftlab trains text-only models",
                )
            texts.append(_typed(part.get("text", part.get("value", "")), str, f"{where}[{j}].text"))
        return "".join(texts)
    return _typed(content, str, where)


def _tool_calls(value: Any, where: str) -> tuple[dict[str, Any], ...] | None:
    if value is None:
        return None
    calls = _as_list(value, f"{where}.tool_calls")
    for j, call in enumerate(calls):
        _typed(call, dict, f"{where}.tool_calls[{j}]")
        fn = call.get("function", call)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RecordError(
                "format.missing-field",
                f"{where}.tool_calls[{j}] has no function name",
                'write tool calls as {"type": "function", "function": {"name": ..., "arguments": {...}}}',
            )
    return tuple(calls)


def _train(d: dict[str, Any], where: str, index: int, meta: dict[str, Any]) -> bool | None:
    """`train` (bool) or LLaMA-Factory's `loss_weight` (0 -> False, >0 -> True; other weights
    than 0 and 1 are kept in meta["loss_weights"])."""
    if d.get("train") is not None:
        return _typed(d["train"], bool, f"{where} 'train'")
    weight = d.get("loss_weight")
    if weight is None:
        return None
    _typed(weight, (int, float), f"{where} 'loss_weight'")
    if weight not in (0, 1):
        meta.setdefault("loss_weights", {})[str(index)] = weight
    return weight > 0


def _keep_extra_keys(d: dict[str, Any], known: set[str], index: int, meta: dict[str, Any]) -> None:
    extra = {k: v for k, v in d.items() if k not in known and v is not None}
    if extra:
        meta.setdefault("message_keys", {}).setdefault(str(index), {}).update(extra)


def _encode_messages(conv: Conversation) -> dict[str, Any]:
    """Message.to_dict rows (+ their unknown keys), `tools`, passthrough columns, `_meta`."""
    extra = conv.meta.get("message_keys", {})
    messages = []
    for i, m in enumerate(conv.messages):
        d = m.to_dict()
        for key, value in extra.get(str(i), {}).items():
            d.setdefault(key, value)
        messages.append(d)
    row: dict[str, Any] = {"messages": messages}
    if conv.tools is not None:
        row["tools"] = [dict(t) for t in conv.tools]
    own = {k: v for k, v in conv.meta.items() if k not in ("columns", "message_keys")}
    if conv.shape != "chat":
        own = {"kind": conv.shape, **own}
    if own:
        row[META_KEY] = own
    return _with_columns(row, conv)


def _write_parquet(conversations: Iterable[Conversation], path: str, gz: bool) -> WriteResult:
    """Messages format with every column as JSON text, so no Arrow/datasets schema unification
    can add keys (e.g. None-valued tool-call arguments) or reorder them."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ("messages", "tools", META_KEY)
    schema = pa.schema(
        [(n, pa.string()) for n in names], metadata={readers.PARQUET_JSON_COLUMNS_KEY: json.dumps(list(names)).encode()}
    )
    written = 0
    skipped: list[Finding] = []
    with atomic_open(path, "wb") as raw:
        sink = io.BytesIO() if gz else raw
        with pq.ParquetWriter(sink, schema) as writer:
            batch: list[dict[str, Any]] = []
            for conv in conversations:
                row = _parquet_row(conv)
                try:
                    for value in row.values():
                        if value is not None:
                            value.encode("utf-8")
                except UnicodeEncodeError as e:
                    skipped.append(_skip_finding(conv, "parquet", _not_unicode(e)))
                    continue
                batch.append(row)
                if len(batch) >= _PARQUET_BATCH:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    written += len(batch)
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                written += len(batch)
        if gz:
            raw.write(gzip.compress(sink.getvalue(), mtime=0))
    log.info("wrote %d conversations to %s", written, path)
    return WriteResult(written, skipped)


def _parquet_row(conv: Conversation) -> dict[str, Any]:
    row = _encode_messages(conv)  # message_keys are back in the message dicts; the rest of meta goes to _meta
    own = {k: v for k, v in conv.meta.items() if k != "message_keys"}
    dumps = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    return {
        "messages": dumps(row["messages"]),
        "tools": dumps(row["tools"]) if "tools" in row else None,
        META_KEY: dumps(own) if own else None,
    }


# --- typed blocks (LLaMA-Factory v1) -------------------------------------------------------------


def _parse_typed_blocks(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """LLaMA-Factory v1: content is a list of {"type": text|reasoning|tool_call, "value": ...},
    each message may carry `loss_weight`; `tools` is a JSON string."""
    key, tools_key = cols.get("messages", "messages"), cols.get("tools", "tools")
    raw = _as_list(_get(row, key, (list, str)), f"{key!r}")
    meta: dict[str, Any] = {}
    messages = [_block_message(d, f"{key}[{i}]", i, meta) for i, d in enumerate(raw)]
    tools, used = _tools(row, tools_key)
    return Parsed(messages, tools, meta, {key} | ({tools_key} if used else set()))


def _block_message(d: Any, where: str, index: int, meta: dict[str, Any]) -> Message:
    _typed(d, dict, where)
    role = d.get("role")
    if role is None:
        raise RecordError("format.missing-field", f"{where} has no 'role'", "give every message a role")
    if role not in ROLES:
        raise RecordError(
            "format.bad-role",
            f"{where} has role {role!r}, expected one of {', '.join(ROLES)}",
            "rename the role to system, user, assistant or tool",
        )
    content = d.get("content")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for j, block in enumerate(_typed(content, list, f"{where}.content")):
            at = f"{where}.content[{j}]"
            _typed(block, dict, at)
            kind, value = block.get("type"), block.get("value")
            if kind == "text":
                texts.append(_typed(value, str, f"{at}.value"))
            elif kind == "reasoning":
                thoughts.append(_typed(value, str, f"{at}.value"))
            elif kind == "tool_call":
                calls.extend(_function_calls(value, at))
            else:
                raise RecordError(
                    "format.unsupported-content",
                    f"{at} is a {kind!r} block; supported: text, reasoning, tool_call",
                    "drop image/video/audio blocks: sftlab trains text-only models",
                )
    message = new_message(
        role=role,
        content="".join(texts),
        tool_calls=tuple(calls) if calls else None,
        reasoning="".join(thoughts) if thoughts else None,
        train=_train(d, where, index, meta),
    )
    _keep_extra_keys(d, {"role", "content", "loss_weight", "train"}, index, meta)
    return message


def _function_calls(value: Any, where: str) -> list[dict[str, Any]]:
    """A ShareGPT function_call value or a v1 tool_call block: JSON text (or an object) of
    {"name", "arguments"} or a list of them -> OpenAI-style tool calls with arguments as a dict."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(
                "format.parse-error",
                f"{where} is a tool call but not valid JSON ({e.msg} at column {e.colno})",
                'write the call as {"name": "fn", "arguments": {...}}',
            ) from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RecordError(
            "format.missing-field",
            f"{where} is a tool call turn holding no calls",
            'write the call as {"name": "fn", "arguments": {...}}',
        )
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise RecordError(
                "format.missing-field",
                f"{where} is a tool call without a 'name'",
                'write the call as {"name": "fn", "arguments": {...}}',
            )
        out.append({"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}})
    return out


def _encode_typed_blocks(conv: Conversation) -> dict[str, Any]:
    weights = conv.meta.get("loss_weights", {})
    extra = conv.meta.get("message_keys", {})
    messages = []
    for i, m in enumerate(conv.messages):
        blocks = []
        if m.reasoning is not None:
            blocks.append({"type": "reasoning", "value": m.reasoning})
        if m.content or (m.reasoning is None and not m.tool_calls):
            blocks.append({"type": "text", "value": m.content})
        for call in m.tool_calls or ():
            blocks.append({"type": "tool_call", "value": json.dumps(_name_arguments(call), ensure_ascii=False)})
        d: dict[str, Any] = {"role": m.role, "content": blocks}
        if m.train is not None:
            d["loss_weight"] = weights.get(str(i), 1.0 if m.train else 0.0)
        for key, value in extra.get(str(i), {}).items():
            d.setdefault(key, value)
        messages.append(d)
    row: dict[str, Any] = {"messages": messages}
    if conv.tools is not None:
        row["tools"] = json.dumps(list(conv.tools), ensure_ascii=False)
    return _with_columns(row, conv)


def _name_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style tool call as LLaMA-Factory writes it: {"name", "arguments": {...}}."""
    fn = call.get("function", call)
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):  # not JSON: keep the string, it is what the data says
            arguments = json.loads(arguments)
    return {"name": fn.get("name"), "arguments": arguments}


# --- ShareGPT -------------------------------------------------------------------------------------

# Source role name -> slot. LLaMA-Factory's tags (user_tag, ...) add to this per dataset.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "function_call": "function",
    "observation": "observation",
    "tool": "observation",
    "function": "observation",
}
_SHAREGPT_TAGS = {
    "user": "user_tag",
    "assistant": "assistant_tag",
    "system": "system_tag",
    "function": "function_tag",
    "observation": "observation_tag",
}
# How our writer spells ShareGPT unless the source spelled it otherwise (kept in meta["sharegpt"]).
_SHAREGPT_STYLE = {
    "messages": "conversations",
    "role_tag": "from",
    "content_tag": "value",
    "user": "human",
    "assistant": "gpt",
    "system": "system",
    "function": "function_call",
    "observation": "observation",
    "system_at": "column",
}


def _parse_sharegpt(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """ShareGPT `conversations` of {from, value} (or role/content), `system` and `tools` columns.
    human/user -> user, gpt/assistant/model/bot -> assistant, function_call -> assistant with
    tool_calls, observation/tool/function -> tool. meta["sharegpt"] keeps non-default spellings."""
    messages, tools, meta, consumed, style = _sharegpt_conversation(row, cols)
    _keep_style(style, meta)
    return Parsed(messages, tools, meta, consumed)


def _sharegpt_conversation(row: dict[str, Any], cols: dict[str, Any]) -> tuple:
    key = cols.get("messages") or ("conversations" if "conversations" in row else "messages")
    raw = _as_list(_get(row, key, (list, str)), f"{key!r}")
    style: dict[str, str] = {"messages": key}
    meta: dict[str, Any] = {}
    consumed = {key}
    messages: list[Message] = []
    system_key = cols.get("system", "system")
    system = row.get(system_key)
    if system is not None and system != "":
        messages.append(new_message("system", _typed(system, str, f"{system_key!r}")))
        consumed.add(system_key)
    for i, d in enumerate(raw):
        messages.append(_sharegpt_message(d, f"{key}[{i}]", len(messages), cols, style, meta))
    if messages and messages[0].role == "system" and system_key not in consumed:
        style["system_at"] = "inline"
    tools_key = cols.get("tools", "tools")
    tools, used = _tools(row, tools_key)
    if used:
        consumed.add(tools_key)
    return messages, tools, meta, consumed, style


def _keep_style(style: dict[str, str], meta: dict[str, Any]) -> None:
    custom = {k: v for k, v in style.items() if _SHAREGPT_STYLE.get(k) != v}
    if custom:
        meta["sharegpt"] = custom


def _sharegpt_message(
    d: Any, where: str, index: int, cols: dict[str, Any], style: dict[str, str], meta: dict[str, Any]
) -> Message:
    _typed(d, dict, where)
    role_tag = cols.get("role_tag") or ("from" if "from" in d else "role")
    content_tag = cols.get("content_tag") or (
        "value"
        if "value" in d
        else "content"
        if "content" in d
        else style.get("content_tag") or ("value" if role_tag == "from" else "content")
    )
    style.setdefault("role_tag", role_tag)
    style.setdefault("content_tag", content_tag)
    names = dict(_SHAREGPT_ROLES)
    names.update({cols[tag]: slot for slot, tag in _SHAREGPT_TAGS.items() if cols.get(tag)})
    name = d.get(role_tag)
    if name is None:
        raise RecordError(
            "format.missing-field",
            f"{where} has no {role_tag!r} (keys: {_keys(d)})",
            "give every turn a role: human, gpt, system, function_call or observation",
        )
    slot = names.get(name) if isinstance(name, str) else None
    if slot is None:
        raise RecordError(
            "format.bad-role",
            f"{where} has {role_tag} {name!r}, expected one of {', '.join(sorted(names))}",
            "rename the role, or map it with a dataset_info.json entry's tags (--dataset-info)",
        )
    style.setdefault(slot, name)
    if content_tag not in d:
        raise RecordError(
            "format.missing-field",
            f"{where} ({name}) has no {content_tag!r} key (keys: {_keys(d)})",
            f'add the turn\'s text as {content_tag!r} ("" if it really is empty)',
        )
    value = d.get(content_tag)
    value = "" if value is None else _typed(value, str, f"{where} {content_tag!r}")
    _keep_extra_keys(d, {role_tag, content_tag}, index, meta)
    if slot == "function":
        return new_message("assistant", "", tool_calls=tuple(_function_calls(value, where)))
    return new_message(
        {"user": "user", "assistant": "assistant", "system": "system", "observation": "tool"}[slot], value
    )


def _parse_sharegpt_ranking(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """LLaMA-Factory ranking rows: `conversations` + `chosen` and `rejected` turns. Trains on
    conversations + chosen; the rejected turn is kept as meta["rejected"]."""
    messages, tools, meta, consumed, style = _sharegpt_conversation(row, cols)
    picked = []
    for part in ("chosen", "rejected"):
        key = cols.get(part, part)
        turn = _get(row, key, dict)
        picked.append(_sharegpt_message(turn, key, len(messages), cols, style, {}))
        consumed.add(key)
    chosen, rejected = picked
    _keep_style(style, meta)
    meta.update(rejected=[rejected.to_dict()], n_prompt=len(messages), preference_form="sharegpt-ranking")
    return Parsed(messages + [chosen], tools, meta, consumed)


def _encode_sharegpt(conv: Conversation) -> dict[str, Any]:
    style, msgs, row, offset = _sharegpt_start(conv)
    row = {style["messages"]: _sharegpt_turns(conv, msgs, offset, style, "sharegpt"), **row}
    if conv.tools is not None:
        row["tools"] = json.dumps(list(conv.tools), ensure_ascii=False)
    return _with_columns(row, conv)


def _sharegpt_start(conv: Conversation) -> tuple[dict[str, str], list[Message], dict[str, Any], int]:
    """The row's style, its messages, and a leading system turn moved to the `system` column
    where the source kept it there (offset = how many messages that took)."""
    style = {**_SHAREGPT_STYLE, **conv.meta.get("sharegpt", {})}
    msgs = list(conv.messages)
    if msgs and msgs[0].role == "system" and style["system_at"] == "column":
        return style, msgs[1:], {"system": msgs[0].content}, 1
    return style, msgs, {}, 0


def _sharegpt_turns(
    conv: Conversation, msgs: list[Message], offset: int, style: dict[str, str], fmt: str
) -> list[dict[str, Any]]:
    extra = conv.meta.get("message_keys", {})
    return [_sharegpt_turn(conv, m, offset + i, style, fmt, extra.get(str(offset + i), {})) for i, m in enumerate(msgs)]


def _sharegpt_turn(
    conv: Conversation, m: Message, i: int, style: dict[str, str], fmt: str, extra: dict[str, Any]
) -> dict[str, Any]:
    if m.reasoning is not None:
        raise _cannot(
            fmt,
            f"message {i} has reasoning, which {fmt} cannot hold",
            "write it as messages or typed-blocks, which keep reasoning",
        )
    _require_default_train(conv, i, m, fmt)
    if m.tool_calls:
        if m.content:
            raise _cannot(fmt, f"message {i} has both text and tool calls; a {fmt} function_call turn holds only calls")
        calls = [_name_arguments(c) for c in m.tool_calls]
        slot, value = "function", json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
    else:
        slot = {"user": "user", "assistant": "assistant", "system": "system", "tool": "observation"}[m.role]
        value = m.content
    turn = {style["role_tag"]: style[slot], style["content_tag"]: value}
    for key, v in extra.items():
        turn.setdefault(key, v)
    return turn


def _encode_sharegpt_ranking(conv: Conversation) -> dict[str, Any]:
    rejected = _rejected(conv, "sharegpt-ranking")
    if len(rejected) != 1 or conv.messages[-1].role != "assistant":
        raise _cannot("sharegpt-ranking", "sharegpt-ranking needs exactly one chosen and one rejected final turn")
    style, msgs, row, offset = _sharegpt_start(conv)
    chosen = msgs.pop()
    rejected_msg = _openai_message(rejected[0], "rejected", len(conv.messages) - 1, {})
    row = {
        style["messages"]: _sharegpt_turns(conv, msgs, offset, style, "sharegpt-ranking"),
        **row,
        "chosen": _sharegpt_turn(conv, chosen, len(conv.messages) - 1, style, "sharegpt-ranking", {}),
        "rejected": _sharegpt_turn(conv, rejected_msg, len(conv.messages) - 1, style, "sharegpt-ranking", {}),
    }
    if conv.tools is not None:
        row["tools"] = json.dumps(list(conv.tools), ensure_ascii=False)
    return _with_columns(row, conv)


def _rejected(conv: Conversation, fmt: str) -> list[dict[str, Any]]:
    rejected = conv.meta.get("rejected")
    if not isinstance(rejected, list) or not rejected:
        raise _cannot(
            fmt,
            f"{fmt} needs a rejected answer and this conversation has none",
            "preference formats need data read from preference rows",
        )
    return rejected


# --- alpaca, self-instruct seed, qa, prompt/completion, text ------------------------------------


def _parse_alpaca(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """instruction/input/output (+ system, history [[q, a], ...], tools). user = instruction +
    "\\n" + input. An `output` list (LLaMA-Factory ranking style) trains on its first element;
    meta["output_list"] / meta["output_rest"] keep the list."""
    k_prompt, k_query = cols.get("prompt", "instruction"), cols.get("query", "input")
    k_response, k_system = cols.get("response", "output"), cols.get("system", "system")
    k_history, k_tools = cols.get("history", "history"), cols.get("tools", "tools")
    instruction = _get(row, k_prompt, str)
    output = _get(row, k_response, (str, list))
    meta: dict[str, Any] = {}
    consumed = {k_prompt, k_response}
    if isinstance(output, list):
        if not output:
            raise RecordError("format.missing-field", f"{k_response!r} is an empty list", "give at least one answer")
        meta["output_list"] = True
        if len(output) > 1:
            meta["output_rest"] = output[1:]
        output = _typed(output[0], str, f"{k_response}[0]")
    query = row.get(k_query)
    if k_query in row:  # null, "" and absent all mean no input
        consumed.add(k_query)
        if query is not None and query != "":
            meta["input"] = _typed(query, str, f"field {k_query!r}")
    messages: list[Message] = []
    system = row.get(k_system)
    if system is not None and system != "":
        messages.append(new_message("system", _typed(system, str, f"field {k_system!r}")))
        consumed.add(k_system)
    history = row.get(k_history)
    if history:
        for i, pair in enumerate(_as_list(history, f"{k_history!r}")):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise RecordError(
                    "format.wrong-type",
                    f"{k_history}[{i}] is not a [question, answer] pair of strings",
                    'write history as [["question", "answer"], ...]',
                )
            messages += [new_message("user", pair[0]), new_message("assistant", pair[1])]
        consumed.add(k_history)
    messages += [new_message("user", _join_input(instruction, query)), new_message("assistant", output)]
    tools, used = _tools(row, k_tools)
    if used:
        consumed.add(k_tools)
    return Parsed(messages, tools, meta, consumed)


def _parse_self_instruct_seed(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """self-instruct seed tasks {id, name, instruction, instances: [{input, output}], is_classification}:
    one conversation per task from instances[0]; further instances are kept in
    meta["instances_rest"], id/name/is_classification as columns."""
    instruction = _get(row, "instruction", str)
    instances = _get(row, "instances", list)
    if not instances:
        raise RecordError("format.missing-field", "'instances' is empty", "give the task at least one instance")
    first = _typed(instances[0], dict, "instances[0]")
    query = _opt_str(first, "input", "instances[0]") or ""
    output = _get(first, "output", str, "instances[0]")
    meta: dict[str, Any] = {}
    if query:
        meta["input"] = query
    if len(instances) > 1:
        meta["instances_rest"] = instances[1:]
    return Parsed(
        [new_message("user", _join_input(instruction, query)), new_message("assistant", output)],
        None,
        meta,
        {"instruction", "instances"},
        "self-instruct-seed",
    )


def _parse_qa(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    q, a = cols.get("prompt", "question"), cols.get("response", "answer")
    return Parsed(
        [new_message("user", _get(row, q, str)), new_message("assistant", _get(row, a, str))], None, {}, {q, a}
    )


def _parse_prompt_completion(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """TRL prompt/completion: two strings (shape "prompt-completion": trained as raw text
    in TRL), or two message lists (conversational; meta["n_prompt"] when the completion is not
    just the last assistant turn)."""
    prompt, completion = _get(row, "prompt", (str, list)), _get(row, "completion", (str, list))
    if isinstance(prompt, str) != isinstance(completion, str):
        raise RecordError(
            "format.wrong-type",
            f"'prompt' is a {_typename(prompt)} but 'completion' is a {_typename(completion)}",
            "make both strings, or both lists of messages",
        )
    if isinstance(prompt, str):
        return Parsed(
            [new_message("user", prompt), new_message("assistant", completion)],
            None,
            {},
            {"prompt", "completion"},
            "prompt-completion",
        )
    meta: dict[str, Any] = {}
    messages = _openai_messages(prompt, "prompt", 0, meta)
    messages += _openai_messages(completion, "completion", len(prompt), meta)
    if len(prompt) != _last_assistant(messages):
        meta["n_prompt"] = len(prompt)
    tools, used = _tools(row, "tools")
    return Parsed(messages, tools, meta, {"prompt", "completion"} | ({"tools"} if used else set()))


def _parse_text(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """Plain LM text: one assistant message, shape "text" (trained raw, no chat template)."""
    key = cols.get("prompt", "text")
    return Parsed([new_message("assistant", _get(row, key, str))], None, {}, {key}, "text")


def _parse_text_label(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """Classification rows: user = text, assistant = str(label); meta["label"] keeps its type."""
    text, label = _get(row, "text", str), _get(row, "label", (str, int, float, bool))
    return Parsed(
        [new_message("user", text), new_message("assistant", _scalar_text(label))],
        None,
        {"label": label},
        {"text", "label"},
        "text-label",
    )


def _parse_knowledge(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """{"entity", "facts": [{"fact", "value"}]} -> "What is the {fact} of {entity}?" / value
    turns; meta keeps entity and facts as they were."""
    entity = _get(row, "entity", str)
    facts = _get(row, "facts", list)
    if not facts:
        raise RecordError("format.missing-field", "'facts' is empty", "give the entity at least one fact")
    messages = []
    for i, fact in enumerate(facts):
        _typed(fact, dict, f"facts[{i}]")
        name = _get(fact, "fact", str, f"facts[{i}]")
        value = _get(fact, "value", (str, int, float, bool), f"facts[{i}]")
        messages += [
            new_message("user", f"What is the {name} of {entity}?"),
            new_message("assistant", _scalar_text(value)),
        ]
    return Parsed(messages, None, {"entity": entity, "facts": facts}, {"entity", "facts"}, "knowledge")


def _encode_alpaca(conv: Conversation) -> dict[str, Any]:
    _require_plain(conv, "alpaca", tools_ok=True)
    system, pairs = _pairs(conv, "alpaca")
    instruction, query = _split_input(pairs[-1][0], conv.meta)
    output: Any = pairs[-1][1]
    if conv.meta.get("output_list"):
        output = [output] + list(conv.meta.get("output_rest", []))
    row: dict[str, Any] = {"instruction": instruction, "input": query, "output": output}
    if system is not None:
        row["system"] = system
    if len(pairs) > 1:
        row["history"] = [list(p) for p in pairs[:-1]]
    if conv.tools is not None:
        row["tools"] = json.dumps(list(conv.tools), ensure_ascii=False)
    return _with_columns(row, conv)


def _encode_self_instruct_seed(conv: Conversation) -> dict[str, Any]:
    _require_plain(conv, "self-instruct-seed")
    if _roles(conv) != ["user", "assistant"]:
        raise _cannot("self-instruct-seed", f"a seed task is one user/assistant pair; roles are {_roles(conv)}")
    instruction, query = _split_input(conv.messages[0].content, conv.meta)
    instances = [{"input": query, "output": conv.messages[1].content}] + list(conv.meta.get("instances_rest", []))
    return _with_columns({"instruction": instruction, "instances": instances}, conv)


def _encode_qa(conv: Conversation) -> dict[str, Any]:
    _require_plain(conv, "qa")
    if _roles(conv) != ["user", "assistant"]:
        raise _cannot("qa", f"qa holds one user/assistant pair; roles are {_roles(conv)}")
    return _with_columns({"question": conv.messages[0].content, "answer": conv.messages[1].content}, conv)


def _encode_prompt_completion(conv: Conversation) -> dict[str, Any]:
    msgs = conv.messages
    if conv.shape == "prompt-completion" and _roles(conv) == ["user", "assistant"]:
        _require_plain(conv, "prompt-completion")
        return _with_columns({"prompt": msgs[0].content, "completion": msgs[1].content}, conv)
    last = _last_assistant(msgs)
    n_prompt = conv.meta.get("n_prompt", last)
    if last < 0 or not isinstance(n_prompt, int) or not 0 <= n_prompt <= last:
        raise _cannot(
            "prompt-completion", f"prompt-completion needs an assistant turn to complete; roles are {_roles(conv)}"
        )
    if "n_prompt" not in conv.meta and last != len(msgs) - 1:
        raise _cannot(
            "prompt-completion", f"turns after the last assistant turn would be lost; roles are {_roles(conv)}"
        )
    dicts = _encode_messages(conv)["messages"]
    row: dict[str, Any] = {"prompt": dicts[:n_prompt], "completion": dicts[n_prompt:]}
    if conv.tools is not None:
        row["tools"] = [dict(t) for t in conv.tools]
    return _with_columns(row, conv)


def _encode_text(conv: Conversation) -> dict[str, Any]:
    _require_plain(conv, "text")
    if len(conv.messages) != 1:
        raise _cannot("text", f"text holds one plain text; this conversation has {len(conv.messages)} messages")
    return _with_columns({"text": conv.messages[0].content}, conv)


def _encode_text_label(conv: Conversation) -> dict[str, Any]:
    _require_plain(conv, "text-label")
    if _roles(conv) != ["user", "assistant"]:
        raise _cannot("text-label", f"text-label holds one text and its label; roles are {_roles(conv)}")
    label = conv.meta.get("label")
    if label is None or _scalar_text(label) != conv.messages[1].content:
        label = conv.messages[1].content
    return _with_columns({"text": conv.messages[0].content, "label": label}, conv)


def _encode_knowledge(conv: Conversation) -> dict[str, Any]:
    if conv.shape != "knowledge" or "entity" not in conv.meta or "facts" not in conv.meta:
        raise _cannot("knowledge", "only conversations read from knowledge records can be written as knowledge")
    return _with_columns({"entity": conv.meta["entity"], "facts": conv.meta["facts"]}, conv)


# --- preference ----------------------------------------------------------------------------------


def _parse_preference(row: dict[str, Any], cols: dict[str, Any]) -> Parsed:
    """prompt/chosen/rejected as strings (TRL standard, LLaMA-Factory alpaca ranking with
    instruction/input/system) or message lists (TRL conversational; without a prompt, TRL's
    implicit-prompt form). SFT trains on the chosen answer; meta["rejected"] keeps the other
    (as message dicts), meta["n_prompt"] where the prompt ends, meta["preference_form"] the form."""
    k_chosen, k_rejected = cols.get("chosen", "chosen"), cols.get("rejected", "rejected")
    chosen, rejected = _get(row, k_chosen, (str, list)), _get(row, k_rejected, (str, list))
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise RecordError(
            "format.wrong-type",
            f"{k_chosen!r} is a {_typename(chosen)} but {k_rejected!r} is a {_typename(rejected)}",
            "make both strings, or both lists of messages",
        )
    k_prompt = cols.get("prompt") or next((k for k in ("prompt", "instruction", "question") if k in row), None)
    meta: dict[str, Any] = {} if k_prompt in (None, "prompt") else {"prompt_key": k_prompt}
    consumed = {k_chosen, k_rejected}
    if isinstance(chosen, str):
        if k_prompt is None:
            raise RecordError(
                "format.missing-field",
                f"string preference row has no prompt (keys: {_keys(row)})",
                "add 'prompt', or give chosen/rejected as full message lists",
            )
        prompt = _get(row, k_prompt, str)
        consumed.add(k_prompt)
        messages: list[Message] = []
        k_system, k_query = cols.get("system", "system"), cols.get("query", "input")
        if row.get(k_system) not in (None, ""):
            messages.append(new_message("system", _typed(row[k_system], str, f"field {k_system!r}")))
            consumed.add(k_system)
        query = row.get(k_query)
        if query is not None:
            consumed.add(k_query)
            if _typed(query, str, f"field {k_query!r}"):
                meta["input"] = query
        messages += [new_message("user", _join_input(prompt, query)), new_message("assistant", chosen)]
        meta.update(
            preference_form="string", n_prompt=len(messages) - 1, rejected=[{"role": "assistant", "content": rejected}]
        )
        return Parsed(messages, None, meta, consumed)
    chosen_msgs = _openai_messages(chosen, k_chosen, 0, {})
    rejected_msgs = _openai_messages(rejected, k_rejected, 0, {})
    if k_prompt is not None and row.get(k_prompt) is not None:
        prompt = _as_list(row[k_prompt], f"{k_prompt!r}")
        consumed.add(k_prompt)
        prompt_msgs = _openai_messages(prompt, k_prompt, 0, meta)
        messages, n_prompt, rejected_tail = prompt_msgs + chosen_msgs, len(prompt_msgs), rejected_msgs
        form = "conversational"
    else:
        n_prompt = 0
        while n_prompt < min(len(chosen_msgs), len(rejected_msgs)) and chosen_msgs[n_prompt] == rejected_msgs[n_prompt]:
            n_prompt += 1
        messages, rejected_tail, form = chosen_msgs, rejected_msgs[n_prompt:], "implicit"
    meta.update(preference_form=form, n_prompt=n_prompt, rejected=[m.to_dict() for m in rejected_tail])
    tools, used = _tools(row, "tools")
    return Parsed(messages, tools, meta, consumed | ({"tools"} if used else set()))


def _encode_preference(conv: Conversation) -> dict[str, Any]:
    rejected = _rejected(conv, "preference")
    form = conv.meta.get("preference_form")
    n_prompt = conv.meta.get("n_prompt", _last_assistant(conv.messages))
    if not isinstance(n_prompt, int) or not 0 <= n_prompt < len(conv.messages):
        raise _cannot("preference", "cannot tell where the prompt ends (meta n_prompt)")
    if form == "string":
        _require_plain(conv, "preference")
        system, pairs = _pairs(conv, "preference")
        if len(pairs) != 1 or len(rejected) != 1:
            raise _cannot("preference", "string preference rows hold one prompt, one chosen and one rejected answer")
        prompt, query = _split_input(pairs[0][0], conv.meta)
        row: dict[str, Any] = {
            conv.meta.get("prompt_key", "prompt"): prompt,
            "chosen": pairs[0][1],
            "rejected": rejected[0].get("content", ""),
        }
        if query:
            row["input"] = query
        if system is not None:
            row["system"] = system
        return _with_columns(row, conv)
    dicts = _encode_messages(conv)["messages"]
    if form == "implicit":
        row = {"chosen": dicts, "rejected": dicts[:n_prompt] + list(rejected)}
    else:
        row = {
            conv.meta.get("prompt_key", "prompt"): dicts[:n_prompt],
            "chosen": dicts[n_prompt:],
            "rejected": list(rejected),
        }
    if conv.tools is not None:
        row["tools"] = [dict(t) for t in conv.tools]
    return _with_columns(row, conv)


# --- the tables read() and write() use ------------------------------------------------------


_PARSERS = {
    "messages": _parse_messages,
    "sharegpt": _parse_sharegpt,
    "alpaca": _parse_alpaca,
    "prompt-completion": _parse_prompt_completion,
    "qa": _parse_qa,
    "text": _parse_text,
    "text-label": _parse_text_label,
    "knowledge": _parse_knowledge,
    "preference": _parse_preference,
    "sharegpt-ranking": _parse_sharegpt_ranking,
    "typed-blocks": _parse_typed_blocks,
    "self-instruct-seed": _parse_self_instruct_seed,
}


def _last_assistant(messages: list[Message] | tuple[Message, ...]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "assistant":
            return i
    return -1


_ENCODERS = {
    "messages": _encode_messages,
    "sharegpt": _encode_sharegpt,
    "alpaca": _encode_alpaca,
    "prompt-completion": _encode_prompt_completion,
    "qa": _encode_qa,
    "text": _encode_text,
    "text-label": _encode_text_label,
    "knowledge": _encode_knowledge,
    "preference": _encode_preference,
    "sharegpt-ranking": _encode_sharegpt_ranking,
    "typed-blocks": _encode_typed_blocks,
    "self-instruct-seed": _encode_self_instruct_seed,
}


# ============================================================================================
# LLaMA-Factory dataset_info.json
# ============================================================================================


def read_dataset_info(dataset_info: str, dataset: str) -> tuple[str, str, dict]:
    """(data file or hub id, format, columns) for entry `name` of a LLaMA-Factory
    dataset_info.json. `columns` merges the entry's `columns` and `tags` (LLaMA-Factory names:
    prompt, query, response, system, history, tools, messages, chosen, rejected, role_tag, ...)
    and is what read(..., columns=) takes. A relative file_name is resolved against the
    dataset_info.json directory."""
    path, name = os.fspath(dataset_info), dataset
    entry = _dataset_info_entry(path, name)
    if entry.get("file_name"):
        source = os.path.join(os.path.dirname(path), entry["file_name"])
    elif entry.get("hf_hub_url"):
        source = entry["hf_hub_url"]
    else:
        raise UsageError(
            f"the entry has neither file_name nor hf_hub_url "
            f"(keys: {sorted(entry)}); download the data and add a file_name",
            param="dataset",
            value=name,
        )
    return (source, *_dataset_info_format(entry, name))


def _dataset_info_entry(path: str, name: str) -> dict[str, Any]:
    """Entry `name` of the dataset_info.json at `path`, its value types checked."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise UsageError(
            "file not found; point it at LLaMA-Factory's data/dataset_info.json", param="dataset_info", value=path
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"not readable JSON ({e})", param="dataset_info", value=path) from None
    if not isinstance(info, dict):
        raise UsageError(
            f"expected an object of dataset entries, found a {_typename(info)}", param="dataset_info", value=path
        )
    entry = info.get(name)
    if not isinstance(entry, dict):
        raise UsageError(
            f"not in {path}{_did_you_mean(name, list(info))}; "
            f"it has {len(info)} entries, e.g. {', '.join(list(info)[:5])}",
            param="dataset",
            value=name,
        )
    for key, types, what in (
        ("file_name", str, "a file name"),
        ("hf_hub_url", str, "a hub id"),
        ("columns", dict, "an object of column names"),
        ("tags", dict, "an object of tag names"),
        ("formatting", str, "alpaca, sharegpt or openai"),
        ("ranking", bool, "true or false"),
        ("split", str, "a split name"),
    ):
        if entry.get(key) is not None and not isinstance(entry[key], types):
            raise UsageError(
                f"entry {name!r} has {key} = {entry[key]!r} ({_typename(entry[key])}), expected {what}; fix the entry",
                param="dataset_info",
                value=path,
            )
    for key in ("columns", "tags"):
        for k, v in (entry.get(key) or {}).items():
            if not isinstance(v, str):
                raise UsageError(
                    f"entry {name!r} has {key}.{k} = {v!r} ({_typename(v)}), "
                    "expected a column or tag name (a string); fix the entry",
                    param="dataset_info",
                    value=path,
                )
    return entry


def _dataset_info_format(entry: dict[str, Any], name: str) -> tuple[str, dict[str, str]]:
    """(sftdata format, columns) of a dataset_info.json entry: LLaMA-Factory's `formatting`
    and `ranking` mapped to ours; `columns` merges the entry's columns and tags."""
    columns = {**(entry.get("columns") or {}), **(entry.get("tags") or {})}
    formatting, ranking = entry.get("formatting", "alpaca"), bool(entry.get("ranking"))
    if formatting in ("sharegpt", "openai"):
        if formatting == "openai":
            columns = {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
                "observation_tag": "tool",
                **columns,
            }
        fmt = "sharegpt-ranking" if ranking else "sharegpt"
    elif formatting == "alpaca":
        if ranking:
            fmt = "preference"
        elif "prompt" in columns and not {"query", "response", "history", "chosen", "rejected"} & set(columns):
            fmt = "text"  # LLaMA-Factory pre-training data: only a prompt column
        else:
            fmt = "alpaca"
    else:
        raise UsageError(
            f"unknown formatting {formatting!r}; expected alpaca, sharegpt or openai", param="dataset", value=name
        )
    return fmt, columns


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""
