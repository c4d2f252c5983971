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
