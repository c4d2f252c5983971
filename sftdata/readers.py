"""Raw records out of container files: JSONL (streamed), JSON arrays, CSV, parquet, HF datasets.

This layer knows files, not SFT formats: it yields one `RawRecord` per record with its 1-based
record number and where it came from, and turns unreadable records (broken JSON, invalid UTF-8,
a CSV row with too many fields) into `RawRecord.error` instead of raising. `sftdata.formats`
turns rows into Conversations.

JSONL (plain or gzipped) is read line by line, so memory stays bounded on any file size; parquet
is read in batches; a JSON array is loaded whole (its elements are located with
`json.JSONDecoder.raw_decode` so each keeps the line it starts on).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sftdata.errors import DataError
from sftdata.records import Source, fast_constructor, new_source

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Parquet files written by sftdata.formats mark the columns that hold JSON text.
PARQUET_JSON_COLUMNS_KEY = b"sftdata.json_columns"
_BATCH_ROWS = 1024
Keep = Callable[[int], bool]


@dataclass(frozen=True)
class RawRecord:
    """One record as the container holds it. `row` is the parsed value (normally a dict);
    `error` says why it could not be parsed (then `row` is None)."""

    number: int  # 1-based record number within the file (bad records count too)
    source: Source
    row: Any = None
    error: str | None = None


_new_raw = fast_constructor(RawRecord)  # RawRecord(...), built faster (records.fast_constructor)


def container_of(path: str) -> tuple[str, bool]:
    """(container, gzipped) for a path, from its extension or what it is on disk.

    Raises DataError when the path does not exist and does not look like a hub id."""
    name = path.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    _check_readable(path)
    if os.path.isdir(path):
        return "hf-disk", False
    for ext, container in (
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "json"),
        (".csv", "csv"),
        (".parquet", "parquet"),
    ):
        if name.endswith(ext):
            if not os.path.isfile(path):
                raise DataError(f"{path}: file not found (working directory {os.getcwd()}); check the path")
            return container, gz
    if os.path.isfile(path):
        raise DataError(
            f"{path}: unknown file extension; sftdata reads .jsonl, .json, .csv, .parquet "
            "(optionally .gz) and `datasets.save_to_disk` directories"
        )
    if _HUB_ID.match(path) and "/" in path:
        return "hf-hub", False
    raise DataError(
        f"{path}: file not found (working directory {os.getcwd()}); pass a .jsonl/.json/.csv/"
        ".parquet file, a `datasets.save_to_disk` directory, or a hub id like owner/name"
    )


STDIN = "-"


def local_path(path: str) -> str:
    """`path` itself, or for `-` (standard input) and a named pipe or device (`<(zcat f.gz)`),
    a temporary file the stream is copied into (removed when the process exits): readers go over
    a file more than once (format detection, worker processes), which a stream does not allow.
    The copy is named `stdin` plus the extension its first bytes call for (.jsonl, .json,
    .parquet, .csv; .gz kept), so findings say `.../stdin.jsonl:LINE`."""
    import stat

    if path != STDIN:
        try:
            if stat.S_ISREG(os.stat(path).st_mode) or os.path.isdir(path):
                return path
        except OSError:
            return path  # container_of says why
        if not os.access(path, os.R_OK):
            return path
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="sftdata-stdin-")
    atexit.register(shutil.rmtree, folder, True)
    tmp = os.path.join(folder, "stdin")
    try:
        with (
            open(path, "rb") if path != STDIN else os.fdopen(os.dup(sys.stdin.fileno()), "rb") as src,
            open(tmp, "wb") as dst,
        ):
            head = src.read(1 << 16)
            dst.write(head)
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as e:
        raise DataError(
            f"{'standard input' if path == STDIN else path}: cannot be read ({e.strerror or e}); check what is piped in"
        ) from None
    name = tmp + _stream_extension(head)
    os.replace(tmp, name)
    log.info("%s: copied to %s to be read", "standard input" if path == STDIN else path, name)
    return name


def _stream_extension(head: bytes) -> str:
    gz = head.startswith(b"\x1f\x8b")
    if gz:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 4096)
        except zlib.error:
            head = b""
    if head.startswith(b"PAR1"):
        return ".parquet" + (".gz" if gz else "")
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    ext = ".json" if text.startswith(b"[") else ".jsonl" if text.startswith(b"{") or not text else ".csv"
    return ext + (".gz" if gz else "")


def _check_readable(path: str) -> None:
    """DataError saying what `path` is and why it cannot be read: a dangling symlink, a symlink
    loop, permission denied, a named pipe or device (read those through `-`). A path that does
    not exist at all is left to the caller (it may be a hub id)."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(
                f"{path}: a symlink to {os.readlink(path)!r}, which does not exist; "
                "fix the link or pass the file itself"
            ) from None
        return
    except OSError as e:  # ELOOP, ENAMETOOLONG, ENOTDIR, EACCES on a parent folder
        raise DataError(f"{path}: cannot be read ({e.strerror}); check the path") from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise DataError(
                f"{path}: a directory this user cannot read (permission denied); "
                "fix its permissions (chmod u+rx) or pass a readable path"
            )
        return
    if not stat.S_ISREG(st.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "not a regular file (device or socket)"
        raise DataError(f"{path}: {kind}; pass it through readers.local_path() first, or copy it to a file")
    if not os.access(path, os.R_OK):
        raise DataError(
            f"{path}: permission denied (mode {stat.filemode(st.st_mode)}); "
            f"make it readable (chmod u+r {path}) or run as a user who can read it"
        )


def iter_records(path: str, split: str = "train", keep: Keep | None = None) -> Iterator[RawRecord]:
    """Every record of `path` in file order. Never raises on bad data (only DataError for a
    missing path and for hub/disk datasets that cannot be loaded).

    `keep(number)` (1-based record number) selects records: the others are skipped before they
    are parsed where the container allows (a JSONL line is not even decoded). Numbers count every
    record, kept or not, so a shard of a file has the numbers the whole file gives it."""
    container, gz = container_of(path)
    if container == "jsonl":
        records = _iter_jsonl(path, gz, keep)
    elif container == "json":
        records = _iter_json(path, gz, keep)
    elif container == "csv":
        records = _iter_csv(path, gz)
    elif container == "parquet":
        records = _iter_parquet(path, gz, keep)
    else:
        records = _iter_hf(path, container, split)
    return _kept(records, keep)  # also the error records a reader yields without asking keep


def _kept(records: Iterator[RawRecord], keep: Keep | None) -> Iterator[RawRecord]:
    return records if keep is None else (r for r in records if keep(r.number))


# --- JSONL ------------------------------------------------------------------------------------


def _iter_jsonl(path: str, gz: bool, keep: Keep | None = None) -> Iterator[RawRecord]:
    lines = _chunked_lines(path, gz)
    try:
        yield from _jsonl_records(path, lines, keep=keep)
    finally:
        lines.close()


_CHUNK = 1 << 16  # bytes of (decompressed) text read at a time (memory stays bounded)


def _chunked_lines(path: str, gz: bool) -> Iterator[bytes]:
    """The file's lines as `readline` gives them (each with its b"\\n", the last one maybe
    without), read 64 KiB at a time: a gzip readline per line costs more than the decompression.
    When a read fails (a truncated or corrupt gzip stream), the file is read again line by line
    from the first line not yet given, so the error is raised after exactly the lines, and at
    the place, that reading line by line gives."""
    given = 0
    fast_gzip, fast_errors = _fast_gzip()
    with fast_gzip.open(path, "rb") if gz else open(path, "rb") as f:
        rest = b""
        try:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line + b"\n"
                given += len(lines)
        except fast_errors:
            pass  # read again below, line by line, by the standard library
        else:
            if rest:
                yield rest
            return
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        for _ in range(given):
            f.readline()
        yield from f


def _fast_gzip() -> tuple[Any, tuple[type[BaseException], ...]]:
    """isal's gzip (python-isal: the same API, 2x faster decompression than zlib: 0.17 vs 0.37 s
    on T0) and the errors it raises on a broken stream. A broken stream is read again by `gzip`,
    so what is read and the errors stay the standard library's."""
    from isal import igzip, isal_zlib  # a dependency of sftlab, imported on first use

    return igzip, (OSError, EOFError, zlib.error, isal_zlib.error)


def _jsonl_records(path: str, lines: Any, first_line: int = 1, keep: Keep | None = None) -> Iterator[RawRecord]:
    number = 0
    lineno = first_line - 1
    it = iter(lines)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip stream
            yield _new_raw(number + 1, new_source(path, lineno + 1), error=f"cannot read past this line: {e}")
            return
        lineno += 1
        if isinstance(raw, bytes):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw or (raw[0] in _ASCII_SPACE and not raw.strip()):  # no copy of a line that starts with text
                continue
            number += 1
            if keep is not None and not keep(number):
                continue
            row = _fast_loads(raw)
            if row is not _SLOW:
                yield _new_raw(number, new_source(path, lineno), row)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield _new_raw(
                    number,
                    new_source(path, lineno),
                    error=f"invalid UTF-8 at byte {e.start} of the line ({raw[e.start : e.start + 4]!r})",
                )
                continue
        else:
            text = raw
            if not text.strip():
                continue
            number += 1
            if keep is not None and not keep(number):
                continue
        try:
            row = _loads(text)
        except json.JSONDecodeError as e:
            yield _new_raw(number, new_source(path, lineno), error=_json_error(text, e))
            continue
        except RecursionError:
            yield _new_raw(number, new_source(path, lineno), error="not readable JSON: nested too deeply")
            continue
        except ValueError:  # an integer literal past Python's int-string limit (4300 digits)
            yield _new_raw(number, new_source(path, lineno), error=_huge_number(text, 0)[0])
            continue
        if (b"\\u" in raw if raw is not text else "\\u" in text) and _may_hold_lone_surrogate(
            text
        ):  # bytes: a fast scan
            why = _lone_surrogate(row)
            if why:
                yield _new_raw(number, new_source(path, lineno), error=why)
                continue
        yield _new_raw(number, new_source(path, lineno), row)


def _json_error(line: str, e: json.JSONDecodeError) -> str:
    """What is wrong with a JSONL line json.loads refused, at its column (in characters) in the
    line. A line that ends before its record does says so: json.loads counts the line's own
    newline as a second line and reported "line 2 column 1", of which only the column was shown;
    a string cut off with no newline after it is the same case."""
    body = len(line.rstrip(" \t\r\n"))
    cut_string = e.msg.startswith("Unterminated string")
    what = "a string is not closed" if cut_string else e.msg.removesuffix(" at")  # "Invalid control character at"
    if e.pos >= body or cut_string:
        return f"not valid JSON: the line ends before the record does ({what}, line {body} characters long): was it cut short?"
    return f"not valid JSON: {what} at column {e.pos + 1}"


_SLOW = object()  # _fast_loads: this line takes the json path
_ASCII_SPACE = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.strip() strips


def _fast_loads(raw: bytes) -> Any:
    """The line's value by msgspec (about 3x json.loads on T0, UTF-8 decoding included), or _SLOW
    when msgspec refuses the line; the caller then reads it as before: UTF-8 decode, `_loads`, the
    lone-surrogate check, with their errors. msgspec accepts a subset of what json.loads does and
    returns the same value for it (a test checks edge cases: big integers stay exact, duplicate keys
    keep the last); it refuses invalid UTF-8, lone surrogate escapes, NaN/Infinity, floats out of
    range, nesting it cannot follow and integers past Python's int-string limit, all of which the
    json path reports or reads as it always did."""
    global _msgspec_decode, _FAST_ERRORS
    if _msgspec_decode is None:  # imported on first use: 40 ms
        import msgspec

        _FAST_ERRORS = (msgspec.MsgspecError, RecursionError)  # first: another thread may see the decoder set
        _msgspec_decode = msgspec.json.Decoder().decode
    try:
        return _msgspec_decode(raw)
    except _FAST_ERRORS:
        return _SLOW


_msgspec_decode: Any = None
_FAST_ERRORS: tuple[type[BaseException], ...] = ()

_scan_once = json.decoder.JSONDecoder().scan_once  # the scanner json.loads runs (the C one where built)


def _loads(text: str) -> Any:
    """json.loads(text): for a line that is one object plus whitespace (the common case) the
    scanner json.loads runs, called directly; anything else, and any error, goes through
    json.loads itself, so what it returns and raises is json.loads's."""
    if text[:1] == "{":
        try:
            row, end = _scan_once(text, 0)
        except (StopIteration, ValueError, RecursionError):
            return json.loads(text)
        if end == len(text) or not text[end:].strip(" \t\n\r"):
            return row
    return json.loads(text)


# A surrogate escape (\ud800-\udfff), a valid high+low pair matched whole: a match of 6
# characters is a lone half, a candidate (an escaped backslash can fool it) the decoded row confirms.
_SURROGATE_ESCAPES = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)


def _may_hold_lone_surrogate(text: str, start: int = 0, end: int | None = None) -> bool:
    end = len(text) if end is None else end
    if text.find("\\ud", start, end) < 0 and text.find("\\uD", start, end) < 0:  # the common case: one fast scan
        return False
    return any(m.end() - m.start() == 6 for m in _SURROGATE_ESCAPES.finditer(text, start, end))


def _lone_surrogate(row: Any) -> str | None:
    """Why a decoded row holds text that is not valid Unicode (an unpaired surrogate from a lone
    \\ud8xx JSON escape: text cut in the middle of an emoji), or None. Such text can be neither
    tokenized nor written as UTF-8."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"invalid Unicode: an unpaired surrogate {e.object[e.start : e.end]!r} (a lone \\u{ord(e.object[e.start]):x} "
            "escape, text cut in the middle of an emoji); repair or drop the character"
        )
    return None


def _huge_number(text: str, start: int) -> tuple[str, int | None]:
    """(message, end of the element) for JSON at `start` holding an integer longer than Python
    reads (sys.get_int_max_str_digits). The element is decoded again with such numbers kept as
    text, to find where it ends."""
    digits: list[int] = []

    def parse_int(s: str) -> Any:
        try:
            return int(s)
        except ValueError:
            digits.append(len(s))
            return None

    end = None
    try:
        _, end = json.JSONDecoder(parse_int=parse_int).raw_decode(text, start)
    except (ValueError, RecursionError):
        end = None  # broken in another way too: the element's end stays unknown
    n = max(digits) if digits else "too many"
    message = (
        f"a number with {n} digits, more than Python reads ({sys.get_int_max_str_digits()}); "
        "quote it as a string or shorten it"
    )
    return message, end


# --- JSON array -------------------------------------------------------------------------------


def _iter_json(path: str, gz: bool, keep: Keep | None = None) -> Iterator[RawRecord]:
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        yield _new_raw(1, new_source(path, 1), error=f"cannot read the file: {e}")
        return
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield _new_raw(
            1,
            new_source(path, line),
            error=f"invalid UTF-8 ({data[e.start : e.start + 4]!r}); the rest of the JSON file cannot be read",
        )
        return
    start = _skip_ws(text, 0)
    if start == len(text):
        return
    if text[start] == "{":
        # One object, or JSON Lines saved with a .json name (common): try the whole first.
        try:
            row = json.loads(text)
        except (ValueError, RecursionError):  # also a huge number: the JSON Lines reader reports it per line
            log.info("%s: not a JSON array; reading it as JSON Lines", path)
            yield from _jsonl_records(path, io.StringIO(text), keep=keep)
            return
        why = _lone_surrogate(row) if _may_hold_lone_surrogate(text) else None
        src = new_source(path, text.count("\n", 0, start) + 1, 0)
        yield _new_raw(1, src, row) if why is None else _new_raw(1, src, error=why)
        return
    if text[start] != "[":
        line = text.count("\n", 0, start) + 1
        yield _new_raw(
            1, new_source(path, line), error=f"expected a JSON array ('[') or JSON Lines, found {text[start]!r}"
        )
        return
    yield from _array_records(path, text, start + 1)


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


def _array_records(path: str, text: str, i: int) -> Iterator[RawRecord]:
    """Elements of a JSON array one by one, each with the line it starts on. A syntax error
    cannot be resynchronised inside an array: it becomes the last record."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0
    number = 0
    i = _skip_ws(text, i)
    if i < len(text) and text[i] == "]":
        return
    while True:
        line += text.count("\n", counted, i)
        counted = i
        number += 1
        try:
            row, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            where = text.count("\n", 0, e.pos) + 1
            yield _new_raw(
                number,
                new_source(path, where, number - 1),
                error=f"not valid JSON: {e.msg} (line {where} column {e.colno}); the rest of the array cannot be read",
            )
            return
        except RecursionError:
            yield _new_raw(number, new_source(path, line, number - 1), error="not readable JSON: nested too deeply")
            return
        except ValueError:  # an integer past Python's int-string limit: this element only
            why, end = _huge_number(text, i)
            if end is None:
                yield _new_raw(
                    number, new_source(path, line, number - 1), error=why + "; the rest of the array cannot be read"
                )
                return
            yield _new_raw(number, new_source(path, line, number - 1), error=why)
            row = None
        else:
            why = _lone_surrogate(row) if _may_hold_lone_surrogate(text, i, end) else None
            if why is None:
                yield _new_raw(number, new_source(path, line, number - 1), row)
            else:
                yield _new_raw(number, new_source(path, line, number - 1), error=why)
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if i < len(text) and text[i] == "]":
            return
        where = text.count("\n", 0, i) + 1
        found = repr(text[i]) if i < len(text) else "end of file"
        yield _new_raw(
            number + 1,
            new_source(path, where, number),
            error=f"not valid JSON: expected ',' or ']' after element {number}, found {found}",
        )
        return


# --- CSV --------------------------------------------------------------------------------------


def _iter_csv(path: str, gz: bool) -> Iterator[RawRecord]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # SFT cells can be long
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, OSError, EOFError, zlib.error) as e:
            yield _new_raw(1, new_source(path, 1), error=f"cannot read the CSV header: {e}")
            return
        number = 0
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                number += 1
                yield _new_raw(number, new_source(path, start), error=f"not valid CSV: {e}")
                continue
            except (OSError, EOFError, zlib.error) as e:
                yield _new_raw(number + 1, new_source(path, start), error=f"cannot read past this line: {e}")
                return
            if not cells:
                continue  # blank line
            number += 1
            src = new_source(path, start)
            if any(_has_surrogates(c) for c in cells):
                yield _new_raw(number, src, error="invalid UTF-8 in this row")
                continue
            if len(cells) > len(header):
                yield _new_raw(number, src, error=f"{len(cells)} fields, the header has {len(header)}")
                continue
            yield _new_raw(number, src, dict(zip(header, cells, strict=False)))  # short rows: keys absent


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


# --- parquet ----------------------------------------------------------------------------------


def _iter_parquet(path: str, gz: bool, keep: Keep | None = None) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if gz:
            with gzip.open(path, "rb") as f:
                pf = pq.ParquetFile(io.BytesIO(f.read()))
        else:
            pf = pq.ParquetFile(path)
    except (OSError, EOFError, zlib.error, pa.ArrowException) as e:
        yield _new_raw(1, new_source(path, None, 0), error=f"cannot read the parquet file: {e}")
        return
    meta = pf.schema_arrow.metadata or {}
    json_columns = None
    if PARQUET_JSON_COLUMNS_KEY in meta:
        try:
            json_columns = json.loads(meta[PARQUET_JSON_COLUMNS_KEY])
        except (ValueError, UnicodeDecodeError):
            json_columns = None
        if not isinstance(json_columns, list) or not all(isinstance(c, str) for c in json_columns):
            yield _new_raw(
                1,
                new_source(path, None, 0),
                error=f"the file's {PARQUET_JSON_COLUMNS_KEY.decode()} metadata is "
                "not a JSON list of column names; rewrite the file with `sftdata convert`",
            )
            return
        json_columns = set(json_columns)
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS):
            if keep is None:
                for row in batch.to_pylist():
                    yield _parquet_record(path, index, row, json_columns)
                    index += 1
                continue
            for j in range(batch.num_rows):  # convert only the kept rows, a run of them at a time
                if not keep(index + j + 1) or (j and keep(index + j)):
                    continue
                run = 1
                while j + run < batch.num_rows and keep(index + j + run + 1):
                    run += 1
                for k, row in enumerate(batch.slice(j, run).to_pylist()):
                    yield _parquet_record(path, index + j + k, row, json_columns)
            index += batch.num_rows
    except (OSError, pa.ArrowException) as e:
        yield _new_raw(index + 1, new_source(path, None, index), error=f"cannot read past this row: {e}")


def _parquet_record(path: str, index: int, row: dict[str, Any], json_columns: set[str] | None) -> RawRecord:
    src = new_source(path, None, index)
    if json_columns is None:
        return _new_raw(index + 1, src, row)
    # Written by sftdata: JSON columns hold JSON text, None means "absent".
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None:
            continue
        if key in json_columns:
            if not isinstance(value, str):
                return _new_raw(
                    index + 1, src, error=f"column {key!r} holds a {type(value).__name__}, expected JSON text"
                )
            text = value
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                return _new_raw(index + 1, src, error=f"column {key!r} is not valid JSON: {e}")
            except RecursionError:
                return _new_raw(index + 1, src, error=f"column {key!r}: JSON nested too deeply")
            except ValueError:
                return _new_raw(index + 1, src, error=f"column {key!r}: " + _huge_number(text, 0)[0])
            if _may_hold_lone_surrogate(text):
                why = _lone_surrogate(value)
                if why:
                    return _new_raw(index + 1, src, error=f"column {key!r}: {why}")
        out[key] = value
    return _new_raw(index + 1, src, out)


# --- Hugging Face datasets ----------------------------------------------------------------------


def _iter_hf(path: str, container: str, split: str) -> Iterator[RawRecord]:
    ds = _load_hf(path, container, split)
    for index, row in enumerate(ds):
        yield _new_raw(index + 1, new_source(path, None, index), row)


def _load_hf(path: str, container: str, split: str) -> Any:
    import datasets

    try:
        if container == "hf-disk":
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path, split=split)
    except FileNotFoundError as e:
        if container == "hf-disk":
            raise DataError(
                f"{path}: a directory, but not one `datasets.save_to_disk` wrote ({e}); pass the "
                "data files inside it (.jsonl/.json/.csv/.parquet) instead"
            ) from e
        raise DataError(
            f"{path}: not a `datasets.save_to_disk` directory or reachable hub dataset ({e}); "
            "check the path, or set HF_HUB_OFFLINE=0 where the hub is reachable"
        ) from e
    except (OSError, ValueError, ConnectionError) as e:
        raise DataError(f"{path}: cannot load the dataset ({type(e).__name__}: {e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; it has {sorted(ds)}; pass one of them as the split")
        ds = ds[split]
    return ds
