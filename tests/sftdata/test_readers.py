"""sftdata.readers: containers to raw records (format parsing is tested in test_formats.py)."""

from __future__ import annotations

import gzip
import json

import pytest

from sftdata import readers
from sftdata.errors import DataError


def test_container_of(tmp_path):
    for name, container in (
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.json", "json"),
        ("a.csv", "csv"),
        ("a.parquet", "parquet"),
    ):
        (tmp_path / name).write_text("")
        assert readers.container_of(str(tmp_path / name)) == (container, False)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b""))
    assert readers.container_of(str(tmp_path / "a.jsonl.gz")) == ("jsonl", True)
    assert readers.container_of(str(tmp_path)) == ("hf-disk", False)
    assert readers.container_of("owner/name") == ("hf-hub", False)
    with pytest.raises(DataError, match="file not found"):
        readers.container_of(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file extension"):
        readers.container_of(str(tmp_path / "notes.txt"))


def test_jsonl_records_carry_numbers_lines_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n{broken\n{"a": 3}\n')
    records = list(readers.iter_records(str(path)))
    assert [(r.number, r.source.line, r.row) for r in records if r.error is None] == [
        (1, 1, {"a": 1}),
        (3, 4, {"a": 3}),
    ]
    (bad,) = [r for r in records if r.error is not None]
    assert (bad.number, bad.source.line, bad.row) == (2, 3, None)
    kept = list(readers.iter_records(str(path), keep=lambda n: n == 3))
    assert [r.row for r in kept] == [{"a": 3}]


def test_json_errors_name_the_column_in_the_line(tmp_path):
    """A JSONL line json.loads refuses is reported at its column in the line; one that ends before
    its record does (a cut line, also one cut inside a string with no newline after it) says so,
    instead of the "column 1" of the line's newline."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1, "b": [1, 2\n{"a": 1,, "b": 2}\n{"a": "x"}   }\r\n{"a":   \n{"a": "abc')
    errors = [r.error for r in readers.iter_records(str(path))]
    assert errors[0] == (
        "not valid JSON: the line ends before the record does (Expecting ',' delimiter, line 19 characters long): "
        "was it cut short?"
    ), errors[0]
    assert errors[1] == "not valid JSON: Expecting property name enclosed in double quotes at column 9", errors[1]
    assert errors[2] == "not valid JSON: Extra data at column 14", errors[2]
    assert "line 5 characters long" in errors[3] and "cut short" in errors[3], errors[3]
    assert errors[4] == (
        "not valid JSON: the line ends before the record does (a string is not closed, line 10 characters long): "
        "was it cut short?"
    ), errors[4]


def test_gzip_csv_and_parquet(tmp_path):
    rows = [{"instruction": "Name a prime.", "output": "7"}, {"instruction": "2+2?", "output": "4"}]
    gz = tmp_path / "d.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert [r.row for r in readers.iter_records(str(gz))] == rows
    csv = tmp_path / "d.csv"
    csv.write_text("instruction,output\nName a prime.,7\n2+2?,4\n")
    assert [(r.row, r.source.line) for r in readers.iter_records(str(csv))] == [(rows[0], 2), (rows[1], 3)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    got = list(readers.iter_records(str(tmp_path / "d.parquet")))
    assert [r.row for r in got] == rows and [r.source.row for r in got] == [0, 1]


# Lines msgspec reads (the fast path) and lines it refuses (the json path reads them as before).
FAST_LINES = [
    b'{"a": 1, "a": 2}',  # duplicate keys: the last wins, as in json.loads
    b'{"id": 18446744073709551616, "neg": -9223372036854775809}',  # past 64 bits: exact ints, no floats
    b'{"x": 1.0, "y": -0.0, "z": 1E5, "w": 0.1e-400, "v": 123456789012345678901234567890.5}',
    b'{"x": "\\ud83d\\ude00 \\u00e9 \\/ \\u0000", "\xc3\xa9": [true, null, {"q": false}]}',
    b'  {"x": 1}  \r',
    b"[1, 2]",
    b'"a string"',
]
SLOW_LINES = [
    b'{"x": NaN}',
    b'{"x": Infinity}',
    b'{"x": 1e400}',
    b'{"x": "\\ud800"}',  # lone surrogate escapes: json reads them, the surrogate check reports them
    b'{"x": "\\udc00\\ud800"}',
    b'{"x": "\xed\xa0\x80"}',  # invalid UTF-8
    b'{"x": "\xc0\x80"}',
    b'{"x": 1,}',
    b'{"x": 1} {"y": 2}',
    b'{"x": ' + b"9" * 5000 + b"}",  # past Python's int-string limit
    b"[" * 100_000 + b"]" * 100_000,
]


def test_fast_json_path_agrees_with_json_loads(tmp_path):
    """JSONL lines go through msgspec first: each line it reads must give exactly json.loads's
    value (types included), and each it refuses must read as it did before msgspec (same row or
    same error), because it falls through to the json path."""
    for line in FAST_LINES:
        assert readers._fast_loads(line + b"\n") is not readers._SLOW, line
    for line in SLOW_LINES:
        assert readers._fast_loads(line + b"\n") is readers._SLOW, line[:40]
    path = tmp_path / "edge.jsonl"
    path.write_bytes(b"\n".join(FAST_LINES + SLOW_LINES) + b"\n")
    records = list(readers.iter_records(str(path)))
    assert len(records) == len(FAST_LINES) + len(SLOW_LINES)
    for rec, line in zip(records, FAST_LINES):
        want = json.loads(line.decode("utf-8"))
        assert rec.error is None and repr(rec.row) == repr(want), line
    slow = {r.source.line: (r.row, r.error) for r in records[len(FAST_LINES) :]}
    assert slow[len(FAST_LINES) + 1][0]["x"] != slow[len(FAST_LINES) + 1][0]["x"]  # NaN read by json
    assert slow[len(FAST_LINES) + 3] == ({"x": float("inf")}, None)
    assert "surrogate" in slow[len(FAST_LINES) + 4][1]
    assert "invalid UTF-8" in slow[len(FAST_LINES) + 6][1]
    assert "not valid JSON" in slow[len(FAST_LINES) + 8][1]
    assert "nested too deeply" in slow[len(FAST_LINES) + 11][1]
    assert all(r.error for r in records[len(FAST_LINES) + 3 :] if r.source.line != len(FAST_LINES) + 3)


def _line_by_line(path):
    """What reading a gzip file line by line with the standard library gives: lines, then the error."""
    lines, error = [], None
    try:
        with gzip.open(path, "rb") as f:
            for line in f:
                lines.append(line)
    except (OSError, EOFError) as e:
        error = type(e)
    return lines, error


@pytest.mark.parametrize("damage", ["none", "truncated", "corrupt", "not-gzip", "multi-member"])
def test_fast_gzip_reads_what_the_standard_library_reads(tmp_path, damage):
    """JSONL .gz is decompressed by isal; on a damaged stream the lines given and the error raised
    are exactly those of reading it line by line with `gzip`."""
    assert readers._fast_gzip()[0] is not gzip  # isal is what runs
    text = b"".join(b'{"text": "line %d %s"}\n' % (i, b"x" * (i % 300)) for i in range(5000))
    data = gzip.compress(text)
    blob = {
        "none": data,
        "truncated": data[: len(data) * 2 // 3],
        "corrupt": data[:4000] + bytes(64) + data[4064:],
        "not-gzip": b"plain text, no gzip header\n",
        "multi-member": data + gzip.compress(b'{"text": "second member"}\n'),
    }[damage]
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(blob)
    want_lines, want_error = _line_by_line(path)
    got_lines, got_error = [], None
    try:
        for line in readers._chunked_lines(str(path), True):
            got_lines.append(line)
    except (OSError, EOFError) as e:
        got_error = type(e)
    assert got_lines == want_lines and got_error == want_error
    assert (want_error is None) == (damage in ("none", "multi-member"))
