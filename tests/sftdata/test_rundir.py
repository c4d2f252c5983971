"""sftdata.rundir: atomic writes, the manifest, the examples.parquet writer."""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from pathlib import Path

import pytest

from sftdata import rundir
from sftdata.records import Finding


def test_atomic_open_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError):
        with rundir.atomic_open(target) as f:
            f.write("{half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []
    rundir.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and len(list((tmp_path / "sub").iterdir())) == 1
    assert rundir.write_jsonl(tmp_path / "r.jsonl", [{"x": 1}, {"x": 2}]) == 2


def test_jsonl_finite_lines_hold_the_same_values_as_json_dumps(tmp_path):
    """write_jsonl(finite=True) encodes with msgspec: each line parses to what json.dumps's line
    parses to (text in any script, escapes, nested values, big and small numbers); a row with a
    value msgspec does not know (a path, a numpy number) falls back to json.dumps(default=str)."""
    import numpy as np

    rows = [
        {"check": "dedup.near", "message": 't.jsonl:3 near-duplicates … 中文 ‘quotes’ "q" \\ \n\t\u2028', "data": None},
        {"x": [1, 2.5, -0.0, 1e-07, 123456789012345678901234567890, True, None, {"a": []}], "y": (1, "two")},
        {"path": Path("/tmp/a b.jsonl"), "n": np.int64(5), "f": np.float64(0.25)},
        {},
    ]
    plain, fast = tmp_path / "plain.jsonl", tmp_path / "fast.jsonl"
    assert rundir.write_jsonl(plain, rows) == rundir.write_jsonl(fast, rows, finite=True) == len(rows)
    # split on "\n" only, as JSONL readers do (U+2028 in a string is written as itself)
    a, b = (p.read_text(encoding="utf-8").split("\n")[:-1] for p in (plain, fast))
    assert [json.loads(x) for x in a] == [json.loads(x) for x in b]
    assert b[2] == a[2]  # the fallback row: json.dumps's own line
    assert b[0] != a[0]  # msgspec's: no spaces after , and :


def test_manifest_records_stages_and_input_hashes(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    rundir.update_manifest(
        tmp_path / "run", "audit", command=["sftdata", "audit"], config={"policy": "last"}, inputs=[str(data)]
    )
    m = rundir.update_manifest(tmp_path / "run", "dedup", command=["sftdata", "dedup"])
    assert m["stages_present"] == ["audit", "dedup"]
    assert m["stages"]["audit"]["inputs"][0]["sha256"] == rundir.sha256_file(data)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text()) == m
    (tmp_path / "run" / "manifest.json").write_text("{not json")
    m = rundir.update_manifest(tmp_path / "run", "train")
    assert m["stages_present"] == ["train"] and list((tmp_path / "run").glob("manifest.corrupt-*.json"))


@dataclass
class _Ex:
    id: str
    file: str
    line: int | None
    row: int | None
    findings: tuple
    input_ids: bytes
    loss_mask: bytes
    message_index: bytes
    n_tokens_full: int
    n_trained: int
    truncated: bool


def test_examples_writer_writes_the_run_directory_schema(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(rundir, "EXAMPLES_ROW_GROUP_ROWS", 2)
    warn = Finding("format.role-order", "warning", "m", "h")
    err = Finding("mask.eot-not-trained", "error", "m", "h")
    examples = [
        _Ex(
            f"d/{i}",
            "d.jsonl",
            i,
            None,
            (warn, err)[: i % 3],
            array("i", [5, 6, 7][: i + 1]).tobytes(),
            bytes([0, 1, 1][: i + 1]),
            array("i", [-1, 0, 0][: i + 1]).tobytes(),
            i + 1,
            min(i, 2),
            False,
        )
        for i in range(3)
    ]
    with rundir.atomic_open(tmp_path / "examples.parquet", "wb") as f, rundir.ExamplesWriter(f) as w:
        w.add(examples[:2])
        w.add([])
        w.add(examples[2:])
    table = pq.read_table(tmp_path / "examples.parquet")
    assert table.schema == rundir.examples_schema()
    assert pq.ParquetFile(tmp_path / "examples.parquet").num_row_groups == 2
    rows = table.to_pylist()
    assert [r["input_ids"] for r in rows] == [[5], [5, 6], [5, 6, 7]]
    assert [r["loss_mask"] for r in rows] == [[False], [False, True], [False, True, True]]
    assert [(r["n_findings"], r["severity"]) for r in rows] == [(0, None), (1, "warning"), (2, "error")]
