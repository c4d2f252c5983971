"""A corpus of bad inputs, generated here, through the real commands (DESIGN.md §3, §5; issue 9).

Broken and hostile files, odd paths, bad flags and configs, broken models: none may end in exit 3
or a traceback. Each gives a clear message naming the path / file:line / flag and the fix, writes
no half-written output, processes every good record of a file with bad ones, and puts file:line
(or the parquet row) on every record-level finding. Interrupting audit, convert and dedup with
SIGINT or SIGTERM leaves no temporary file and nothing that looks complete.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sftdata import cli, masks
from sftdata.models import DEMO_MODEL, resolve_tokenizer_path
from sftdata.testing.families import family_tokenizer

REPO = Path(__file__).resolve().parents[2]
GOOD = {"messages": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}]}
GOOD2 = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four."}]}
G, G2 = json.dumps(GOOD), json.dumps(GOOD2)
HUGE = "1" * 5000  # past Python's int-string limit (4300 digits)
SURROGATE = '{"messages": [{"role": "user", "content": "cut \\ud83d"}, {"role": "assistant", "content": "x"}]}'
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def run(argv, capsys, *, expect=None):
    """main(argv) in this process: never exit 3, never a traceback. Returns (rc, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc != 3, f"crash (exit 3) on {argv}:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    if expect is not None:
        assert rc == expect, f"exit {rc}, expected {expect}: {argv}\n{out}\n{err}"
    return rc, out, err


def leftovers(folder):
    """Temporary files (ours end in .tmp) anywhere under `folder`."""
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".sftdata-probe")]


def write(path, text, mode="w"):
    path = Path(path)
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def parquet(path, columns, json_columns=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if json_columns is not None:
        table = table.replace_schema_metadata({b"sftdata.json_columns": json_columns})
    pq.write_table(table, path)
    return path


# ============================================================================================
# Broken and hostile records: one bad record among good ones


def _lines(*rows):
    return "\n".join(rows) + "\n"


def _array(*rows):
    return "[\n" + ",\n".join(rows) + "\n]\n"


# name -> (file name, builder(path) -> path, 1-based line (or parquet row) of the bad record, expected check)
RECORDS = {
    "huge-int-jsonl": (
        "d.jsonl",
        lambda p: write(p, _lines(G, '{"messages": [], "n": ' + HUGE + "}", G2)),
        2,
        "format.parse-error",
    ),
    "huge-int-json-array": (
        "d.json",
        lambda p: write(p, _array(G, '{"n": ' + HUGE + "}", G2)),
        3,
        "format.parse-error",
    ),
    "huge-int-json-lines-named-json": (
        "d.json",
        lambda p: write(p, _lines(G, '{"n": ' + HUGE + "}", G2)),
        2,
        "format.parse-error",
    ),
    "huge-float-exponent": (
        "d.jsonl",
        lambda p: write(p, _lines(G, '{"messages": 1e999999}', G2)),
        2,
        "format.wrong-type",
    ),
    "lone-surrogate-jsonl": ("d.jsonl", lambda p: write(p, _lines(G, SURROGATE, G2)), 2, "format.parse-error"),
    "lone-surrogate-json-array": ("d.json", lambda p: write(p, _array(G, SURROGATE, G2)), 3, "format.parse-error"),
    "lone-low-surrogate-upper-case": (
        "d.jsonl",
        lambda p: write(p, _lines(G, SURROGATE.replace("\\ud83d", "\\uDC00"), G2)),
        2,
        "format.parse-error",
    ),
    "invalid-utf8-line": (
        "d.jsonl",
        lambda p: write(p, (G + "\n").encode() + b'{"messages": "\xff\xfe"}\n' + (G2 + "\n").encode(), "wb"),
        2,
        "format.parse-error",
    ),
    "nul-bytes": (
        "d.jsonl",
        lambda p: write(p, (G + "\n").encode() + b"\x00\x00\x00\n" + (G2 + "\n").encode(), "wb"),
        2,
        "format.parse-error",
    ),
    "broken-json-line": ("d.jsonl", lambda p: write(p, _lines(G, '{"messages": [', G2)), 2, "format.parse-error"),
    "deeply-nested": (
        "d.jsonl",
        lambda p: write(p, _lines(G, "[" * 200_000 + "]" * 200_000, G2)),
        2,
        "format.parse-error",
    ),
    "array-not-object": ("d.jsonl", lambda p: write(p, _lines(G, "[1, 2]", G2)), 2, "format.parse-error"),
    "missing-content-key": (
        "d.jsonl",
        lambda p: write(p, _lines(G, '{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}', G2)),
        2,
        "format.missing-field",
    ),
    "missing-role": (
        "d.jsonl",
        lambda p: write(p, _lines(G, '{"messages": [{"content": "x"}]}', G2)),
        2,
        "format.missing-field",
    ),
    "content-wrong-type": (
        "d.jsonl",
        lambda p: write(p, _lines(G, '{"messages": [{"role": "user", "content": {"a": 1}}]}', G2)),
        2,
        "format.wrong-type",
    ),
    "messages-null": ("d.jsonl", lambda p: write(p, _lines(G, '{"messages": null}', G2)), 2, "format.missing-field"),
    "bad-role": (
        "d.jsonl",
        lambda p: write(p, _lines(G, '{"messages": [{"role": "wizard", "content": "x"}]}', G2)),
        2,
        "format.bad-role",
    ),
    "bom-and-crlf": (
        "d.jsonl",
        lambda p: write(p, ("\ufeff" + G + "\r\n" + '{"messages": 5}\r\n' + G2 + "\r\n").encode(), "wb"),
        2,
        "format.wrong-type",
    ),
    "truncated-gzip": (
        "d.jsonl.gz",
        lambda p: write(p, gzip.compress(_lines(G, G2, G, G2).encode())[:-12], "wb"),
        None,
        "format.parse-error",
    ),
}
SHAREGPT_MISSING_VALUE = _lines(
    json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}),
    json.dumps({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}),
    json.dumps({"conversations": [{"from": "human", "value": "A"}, {"from": "gpt", "value": "B"}]}),
)


def _record_findings(findings, expected_check, line):
    bad = [f for f in findings if f["severity"] == "error"]
    assert bad, "the bad record was not reported"
    for f in findings:
        if f.get("example_id") is not None:
            src = f.get("source") or {}
            assert src.get("file") and (src.get("line") or src.get("row") is not None), f"no file:line on {f}"
    assert any(f["check"] == expected_check for f in bad), [f["check"] for f in bad]
    if line is not None:
        assert any((f.get("source") or {}).get("line") == line for f in bad), [f.get("source") for f in bad]


@pytest.mark.parametrize("case", list(RECORDS))
def test_bad_record_among_good_ones_convert(case, tmp_path, capsys):
    name, build, line, check = RECORDS[case]
    src = build(tmp_path / name)
    out = tmp_path / "out" / "kept.jsonl"
    _, stdout, _ = run(["convert", src, "-o", out, "--json"], capsys, expect=1)
    obj = json.loads(stdout)
    written = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    expected = 1 if case == "truncated-gzip" else 2  # a cut gzip stream: what precedes the cut
    assert obj["summary"]["written"] >= expected and len(written) == obj["summary"]["written"]
    if case != "truncated-gzip":
        assert [w["messages"] for w in written] == [GOOD["messages"], GOOD2["messages"]]
    _record_findings(obj["findings"], check, line)
    assert not leftovers(tmp_path)


@pytest.mark.parametrize(
    "case",
    [
        "huge-int-jsonl",
        "huge-int-json-array",
        "lone-surrogate-jsonl",
        "missing-content-key",
        "invalid-utf8-line",
        "deeply-nested",
    ],
)
def test_bad_record_among_good_ones_audit(case, tmp_path, capsys):
    name, build, line, check = RECORDS[case]
    src = build(tmp_path / name)
    _, stdout, _ = run(
        ["audit", src, "--model", DEMO_MODEL, "--run-dir", tmp_path / "run", "--json", "--workers", "1"],
        capsys,
        expect=1,
    )
    obj = json.loads(stdout)
    assert obj["summary"]["examples"] == 2 and obj["summary"]["records_unreadable"] == 1
    _record_findings(obj["findings"], check, line)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "run" / "audit" / "examples.parquet").num_rows == 2
    assert not leftovers(tmp_path)


def test_sharegpt_turn_without_value_is_a_missing_field(tmp_path, capsys):
    src = write(tmp_path / "s.jsonl", SHAREGPT_MISSING_VALUE)
    _, stdout, _ = run(["convert", src, "-o", tmp_path / "o.jsonl", "--json"], capsys, expect=1)
    obj = json.loads(stdout)
    assert obj["summary"]["written"] == 2
    [f] = obj["findings"]
    assert f["check"] == "format.missing-field" and f["source"]["line"] == 2 and "'value'" in f["message"]


def test_lone_surrogate_is_never_written(tmp_path, capsys):
    """Each writer (JSONL, JSON array, parquet, gzip) skips an unencodable conversation with a
    finding and writes the rest, also for conversations built in code (no reader check)."""
    from sftdata import formats
    from sftdata.pytest_plugin import new_conversation

    convs = [
        new_conversation([("user", "a"), ("assistant", "b")], line=1),
        new_conversation([("user", "cut \ud83d"), ("assistant", "b")], line=2),
        new_conversation([("user", "c"), ("assistant", "d")], line=3),
    ]
    for name in ("o.jsonl", "o.json", "o.parquet", "o.jsonl.gz"):
        result = formats.write(iter(convs), str(tmp_path / name))
        assert result.written == 2, name
        [f] = result.skipped
        assert f.source.line == 2 and "surrogate" in f.message
        back = [x for x in formats.read(str(tmp_path / name))]
        assert len(back) == 2
    assert not leftovers(tmp_path)


PARQUET = {
    "messages-as-numbers": (lambda p: parquet(p, {"messages": [1, 2]}), "format.wrong-type"),
    "messages-not-json-text": (
        lambda p: parquet(p, {"messages": ["not json", json.dumps(GOOD["messages"])]}),
        "format.parse-error",
    ),
    "our-json-column-not-json": (
        lambda p: parquet(p, {"messages": ["{oops", json.dumps(GOOD["messages"])]}, b'["messages"]'),
        "format.parse-error",
    ),
    "our-json-column-wrong-type": (lambda p: parquet(p, {"messages": [5, 6]}, b'["messages"]'), "format.parse-error"),
    "our-json-column-huge-int": (
        lambda p: parquet(p, {"messages": ["[" + HUGE + "]", json.dumps(GOOD["messages"])]}, b'["messages"]'),
        "format.parse-error",
    ),
    "our-metadata-not-json": (
        lambda p: parquet(p, {"messages": [json.dumps(GOOD["messages"])]}, b"not json"),
        "format.parse-error",
    ),
    "our-metadata-not-a-list": (
        lambda p: parquet(p, {"messages": [json.dumps(GOOD["messages"])]}, b'{"a": 1}'),
        "format.parse-error",
    ),
    "not-parquet-at-all": (lambda p: write(p, b"PAR1 this is not parquet", "wb"), "format.parse-error"),
}


@pytest.mark.parametrize("case", list(PARQUET))
def test_broken_parquet(case, tmp_path, capsys):
    build, check = PARQUET[case]
    src = build(tmp_path / "d.parquet")
    _, stdout, _ = run(["convert", src, "-o", tmp_path / "o.jsonl", "--json"], capsys, expect=1)
    obj = json.loads(stdout)
    assert any(f["check"] == check for f in obj["findings"]), obj["findings"]
    for f in obj["findings"]:
        assert f["source"]["file"] == str(src) and f["source"]["row"] is not None
    good_rows = {"messages-not-json-text": 1, "our-json-column-not-json": 1, "our-json-column-huge-int": 1}
    assert obj["summary"]["written"] == good_rows.get(case, 0)


# ============================================================================================
# Odd paths


def _dangling(tmp_path):
    p = tmp_path / "dangling.jsonl"
    p.symlink_to(tmp_path / "nowhere.jsonl")
    return p, "does not exist"


def _loop(tmp_path):
    p = tmp_path / "loop.jsonl"
    p.symlink_to(p)
    return p, "symbolic links"


def _not_a_dataset_dir(tmp_path):
    p = tmp_path / "folder.jsonl"
    p.mkdir()
    write(p / "inside.jsonl", G + "\n")
    return p, "pass the data files inside it"


def _too_long(tmp_path):
    return tmp_path / ("x" * 300 + ".jsonl"), "too long"


def _missing(tmp_path):
    return tmp_path / "nope.jsonl", "file not found"


def _unknown_extension(tmp_path):
    return write(tmp_path / "data.txt", G + "\n"), "unknown file extension"


def _under_a_file(tmp_path):
    write(tmp_path / "f.jsonl", G + "\n")
    return tmp_path / "f.jsonl" / "x.jsonl", "not a directory"


PATHS = {
    "dangling-symlink": _dangling,
    "symlink-loop": _loop,
    "directory-not-a-dataset": _not_a_dataset_dir,
    "name-too-long": _too_long,
    "missing": _missing,
    "unknown-extension": _unknown_extension,
    "under-a-file": _under_a_file,
}


@pytest.mark.parametrize("command", ["convert", "audit", "dedup", "show"])
@pytest.mark.parametrize("case", list(PATHS))
def test_unreadable_input_paths(case, command, tmp_path, capsys):
    path, why = PATHS[case](tmp_path)
    argv = {
        "convert": ["convert", path, "-o", tmp_path / "o.jsonl"],
        "audit": ["audit", path, "--model", DEMO_MODEL, "--run-dir", tmp_path / "run"],
        "dedup": ["dedup", path],
        "show": ["show", path, "--model", DEMO_MODEL],
    }[command]
    _, _, err = run(argv, capsys, expect=2)
    assert str(path) in err and why.lower() in err.lower(), err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "run" / "audit").exists()


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_permission_denied_says_so(tmp_path, capsys):
    p = write(tmp_path / "secret.jsonl", G + "\n")
    p.chmod(0)
    try:
        _, _, err = run(["convert", p, "-o", tmp_path / "o.jsonl"], capsys, expect=2)
        assert "permission denied" in err and str(p) in err
    finally:
        p.chmod(0o644)


def test_odd_but_valid_names_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for k, name in enumerate(("with space.jsonl", "ünïcødé 数据.jsonl", "-dash.jsonl", "UPPER.JSONL")):
        write(tmp_path / name, _lines(G, G2))
        run(["convert", f"./{name}", "-o", f"./out {k}.jsonl"], capsys, expect=0)
        assert len((tmp_path / f"out {k}.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_named_pipe_is_read(tmp_path, capsys):
    """`sftdata convert <(zcat data.jsonl.gz) -o out.jsonl`: a FIFO is read like a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write(_lines(G, "{broken", G2))

    t = threading.Thread(target=feed)
    t.start()
    _, stdout, _ = run(["convert", fifo, "-o", tmp_path / "o.jsonl", "--json"], capsys, expect=1)
    t.join(10)
    obj = json.loads(stdout)
    assert obj["summary"]["written"] == 2
    [f] = obj["findings"]
    assert f["source"]["line"] == 2 and f["source"]["file"].endswith("stdin.jsonl")


def _sftdata(*args, stdin=None, cwd=None, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "sftdata.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def test_standard_input_through_a_real_pipe(tmp_path):
    """`zcat big.jsonl.gz | sftdata audit - --model ...`, and a gzipped and a JSON-array stream."""
    r = _sftdata(
        "audit",
        "-",
        "--model",
        DEMO_MODEL,
        "--run-dir",
        tmp_path / "run",
        "--json",
        stdin=_lines(G, "{broken", G2).encode(),
    )
    assert r.returncode == 1, r.stderr.decode()
    obj = json.loads(r.stdout)
    assert obj["summary"]["examples"] == 2
    bad = [f for f in obj["findings"] if f["check"] == "format.parse-error"]
    assert bad and bad[0]["source"]["line"] == 2
    assert b"Traceback" not in r.stderr


def test_standard_input_gzip_and_json_array(tmp_path, capsys, monkeypatch):
    """The stream's container is told from its first bytes: gzip, a JSON array, parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"messages": [json.dumps(GOOD["messages"])]}), tmp_path / "in.parquet")
    streams = {
        "gz.jsonl": gzip.compress(_lines(G, G2).encode()),
        "array.jsonl": _array(G, G, G2).encode(),
        "pq.jsonl": (tmp_path / "in.parquet").read_bytes(),
    }
    for out, data in streams.items():
        with open(write(tmp_path / "stream", data, "wb"), "rb") as stdin:
            monkeypatch.setattr(sys, "stdin", stdin)
            run(["convert", "-", "-o", tmp_path / out], capsys, expect=0)
    assert [len((tmp_path / o).read_text().splitlines()) for o in streams] == [2, 3, 1]


def test_standard_input_given_twice_is_a_usage_error(tmp_path, capsys):
    _, _, err = run(["dedup", "-", "--against", "-"], capsys, expect=2)
    assert "standard input" in err


# ============================================================================================
# Output paths: checked before the work starts


def _outputs(tmp_path):
    src = write(tmp_path / "in.jsonl", _lines(G, G2))
    folder = tmp_path / "existing.jsonl"
    folder.mkdir()
    afile = write(tmp_path / "afile.txt", "x")
    return src, folder, afile


OUTPUT_CASES = {
    # name -> (argv builder, words the message must hold)
    "convert -o directory": (lambda s, d, f: ["convert", s, "-o", d], "is a directory"),
    "convert -o under a file": (lambda s, d, f: ["convert", s, "-o", f / "o.jsonl"], "not a directory"),
    "convert -o unwritable": (lambda s, d, f: ["convert", s, "-o", "/proc/sftdata-test.jsonl"], "cannot write"),
    "convert -o name too long": (lambda s, d, f: ["convert", s, "-o", d / ("y" * 250 + ".jsonl")], "too long"),
    "audit --run-dir is a file": (lambda s, d, f: ["audit", s, "--model", DEMO_MODEL, "--run-dir", f], "is a file"),
    "audit --run-dir under a file": (
        lambda s, d, f: ["audit", s, "--model", DEMO_MODEL, "--run-dir", f / "run"],
        "not a directory",
    ),
    "audit --run-dir unwritable": (
        lambda s, d, f: ["audit", s, "--model", DEMO_MODEL, "--run-dir", "/proc/sftdata-run"],
        "cannot write",
    ),
    "dedup -o directory": (lambda s, d, f: ["dedup", s, "-o", d], "is a directory"),
    "dedup -o under a file": (lambda s, d, f: ["dedup", s, "-o", f / "k.jsonl"], "not a directory"),
    "dedup --run-dir under a file": (lambda s, d, f: ["dedup", s, "--run-dir", f / "r"], "not a directory"),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_bad_output_paths_fail_before_the_work(case, tmp_path, capsys):
    src, folder, afile = _outputs(tmp_path)
    build, words = OUTPUT_CASES[case]
    argv = build(src, folder, afile)
    flag = argv[-2]
    _, out, err = run(argv, capsys, expect=2)
    assert flag in err and words in err, err
    assert out == ""  # nothing was read, audited or reported: the check came first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "existing.jsonl", "in.jsonl"]
    assert list(folder.iterdir()) == [] and afile.read_text() == "x"


# ============================================================================================
# Bad flags and configs


FLAGS = {
    "dedup --seed too big": (["dedup", "{src}", "--seed", str(2**40)], "--seed"),
    "dedup --seed negative": (["dedup", "{src}", "--seed", "-1"], "--seed"),
    "dedup --threshold 1.5": (["dedup", "{src}", "--threshold", "1.5"], "threshold"),
    "dedup --num-perm 0": (["dedup", "{src}", "--num-perm", "0"], "num"),
    "dedup --shingle bogus": (["dedup", "{src}", "--shingle", "bogus"], "shingle"),
    "audit --max-length 0": (
        ["audit", "{src}", "--model", DEMO_MODEL, "--max-length", "0", "--run-dir", "{tmp}/r"],
        "--max-length",
    ),
    "audit --workers 0": (
        ["audit", "{src}", "--model", DEMO_MODEL, "--workers", "0", "--run-dir", "{tmp}/r"],
        "--workers",
    ),
    "audit --select bogus": (
        ["audit", "{src}", "--model", DEMO_MODEL, "--select", "bogus", "--run-dir", "{tmp}/r"],
        "--select",
    ),
    "audit --from bogus": (
        ["audit", "{src}", "--model", DEMO_MODEL, "--from", "bogus", "--run-dir", "{tmp}/r"],
        "bogus",
    ),
    "audit --model missing dir": (["audit", "{src}", "--model", "./no/such/model", "--run-dir", "{tmp}/r"], "--model"),
    "convert --to bogus": (["convert", "{src}", "-o", "{tmp}/o.jsonl", "--to", "bogus"], "--to"),
    "convert --from bogus": (["convert", "{src}", "-o", "{tmp}/o.jsonl", "--from", "bogus"], "--from"),
    "convert -o .txt": (["convert", "{src}", "-o", "{tmp}/o.txt"], "-o"),
    "show --line 99": (["show", "{src}", "--model", DEMO_MODEL, "--line", "99"], "--line 99"),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_bad_flags(case, tmp_path, capsys):
    src = write(tmp_path / "in.jsonl", _lines(G, G2))
    argv, words = FLAGS[case]
    argv = [a.replace("{src}", str(src)).replace("{tmp}", str(tmp_path)) for a in argv]
    _, _, err = run(argv, capsys, expect=2)
    assert words in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "o.jsonl").exists()


PYPROJECTS = {
    "not utf-8": (b'[tool.sftdata]\nmodel = "\xff\xfe"\n', ["pyproject.toml:2", "UTF-8"]),
    "not toml": (b"[tool.sftdata\nmodel = 1\n", ["pyproject.toml", "TOML"]),
    "unknown format": (
        b'[tool.sftdata]\nmodel = "smollm2-135m-instruct"\nfrom = "bogus"\n',
        ["pyproject.toml", "from", "bogus"],
    ),
    "unknown check": (
        b'[tool.sftdata]\nmodel = "smollm2-135m-instruct"\n[tool.sftdata.audit]\nignore = ["tokens.bogus"]\n',
        ["pyproject.toml", "tokens.bogus"],
    ),
    "unknown key": (b'[tool.sftdata]\nmodle = "x"\n', ["pyproject.toml", "did you mean 'model'"]),
    "wrong type": (
        b'[tool.sftdata]\nmodel = "smollm2-135m-instruct"\nmax-length = "long"\n',
        ["pyproject.toml", "max-length"],
    ),
    "missing model dir": (
        b'[tool.sftdata]\nmodel = "./models/nope"\n',
        ["pyproject.toml", "[tool.sftdata]", "models/nope"],
    ),
    "run-dir under a file": (
        b'[tool.sftdata]\nmodel = "smollm2-135m-instruct"\nrun-dir = "pyproject.toml/run"\n',
        ["run-dir", "pyproject.toml", "not a directory"],
    ),
}


@pytest.mark.parametrize("case", list(PYPROJECTS))
def test_bad_pyproject_config_names_the_file(case, tmp_path, capsys, monkeypatch):
    content, words = PYPROJECTS[case]
    write(tmp_path / "pyproject.toml", content, "wb")
    src = write(tmp_path / "in.jsonl", _lines(G, G2))
    monkeypatch.chdir(tmp_path)
    _, _, err = run(["audit", src], capsys, expect=2)
    for w in words:
        assert w in err, err
    assert not (tmp_path / "runs").exists()


DATASET_INFO = {
    "file_name not a string": ({"d": {"file_name": 5}}, "file_name"),
    "columns not an object": ({"d": {"file_name": "in.jsonl", "columns": "prompt"}}, "columns"),
    "column name not a string": ({"d": {"file_name": "in.jsonl", "columns": {"prompt": ["a"]}}}, "columns.prompt"),
    "tags a list": ({"d": {"file_name": "in.jsonl", "formatting": "sharegpt", "tags": ["x"]}}, "tags"),
    "formatting a number": ({"d": {"file_name": "in.jsonl", "formatting": 3}}, "formatting"),
    "ranking a string": ({"d": {"file_name": "in.jsonl", "ranking": "yes"}}, "ranking"),
    "entry a list": ({"d": ["in.jsonl"]}, "'d'"),
    "top level a list": ([{"d": 1}], "expected an object"),
}


@pytest.mark.parametrize("case", list(DATASET_INFO))
def test_bad_dataset_info(case, tmp_path, capsys):
    info, words = DATASET_INFO[case]
    write(tmp_path / "in.jsonl", _lines(G, G2))
    path = write(tmp_path / "dataset_info.json", json.dumps(info))
    _, _, err = run(["convert", "--dataset-info", path, "--dataset", "d", "-o", tmp_path / "o.jsonl"], capsys, expect=2)
    assert words in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_dataset_info_not_utf8(tmp_path, capsys):
    path = write(tmp_path / "dataset_info.json", b'{"d": {"file_name": "\xff"}}', "wb")
    _, _, err = run(["convert", "--dataset-info", path, "--dataset", "d", "-o", tmp_path / "o.jsonl"], capsys, expect=2)
    assert str(path) in err


def test_show_on_an_unreadable_record_says_why(tmp_path, capsys):
    src = write(tmp_path / "bad.jsonl", '{"messages": [\n')
    _, _, err = run(["show", src, "--model", DEMO_MODEL], capsys, expect=2)
    assert "bad.jsonl:1" in err and "not valid JSON" in err
    empty = write(tmp_path / "empty.jsonl", "")
    _, _, err = run(["show", empty, "--model", DEMO_MODEL], capsys, expect=2)
    assert "no records" in err


# ============================================================================================
# Broken models


@pytest.fixture
def model_dir(tmp_path):
    """make(template=None, weights=None, **files): a copy of the demo tokenizer directory."""

    def make(name="model", template=None, weights=None, files=None):
        d = tmp_path / name
        shutil.copytree(resolve_tokenizer_path(DEMO_MODEL), d)
        if template is not None:
            write(d / "chat_template.jinja", template)
        if weights is not None:
            write(d / "model.safetensors", weights, "wb")
            write(d / "config.json", json.dumps({"model_type": "llama", "max_position_embeddings": 2048}))
        for fname, content in (files or {}).items():
            write(d / fname, content, "wb" if isinstance(content, bytes) else "w")
        return d

    return make


def _audit_model(tmp_path, model, capsys, expect):
    src = write(tmp_path / "in.jsonl", _lines(G, G2))
    return run(["audit", src, "--model", model, "--run-dir", tmp_path / "run", "--json"], capsys, expect=expect)


def test_template_that_does_not_compile_is_a_clear_error(tmp_path, model_dir, capsys):
    m = model_dir(template="{% for m in messages %}{{ m.content }")
    _, _, err = _audit_model(tmp_path, m, capsys, expect=2)
    assert str(m / "chat_template.jinja") in err and "does not compile" in err and "line 1" in err
    assert not (tmp_path / "run" / "audit").exists()
    _, _, err = run(["show", tmp_path / "in.jsonl", "--model", m], capsys, expect=1)


def test_template_that_renders_nothing_is_an_error(tmp_path, model_dir, capsys):
    m = model_dir(template="{% if false %}never{% endif %}")
    _, out, _ = _audit_model(tmp_path, m, capsys, expect=1)
    findings = [f for f in json.loads(out)["findings"] if f["check"] == "template.render-error"]
    assert len(findings) == 2 and all(f["source"]["line"] for f in findings)
    assert "empty text" in findings[0]["message"]


def test_template_that_drops_the_assistant_turn_is_an_error(tmp_path, model_dir, capsys):
    m = model_dir(
        template="{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n"
        "{% endif %}{% endfor %}"
    )
    _, out, _ = _audit_model(tmp_path, m, capsys, expect=1)
    assert {f["check"] for f in json.loads(out)["findings"] if f["severity"] == "error"} == {"mask.no-trained-tokens"}


@pytest.mark.parametrize("weights", [b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage", b"", b"\xff" * 64])
def test_corrupt_safetensors_skips_the_embedding_check(weights, tmp_path, model_dir, capsys):
    m = model_dir(weights=weights)
    _, out, _ = _audit_model(tmp_path, m, capsys, expect=0)
    assert json.loads(out)["summary"]["embedding_check"].startswith("skipped: cannot read the embeddings")


@pytest.mark.parametrize(
    "files", [{"tokenizer.json": b"{not json"}, {"tokenizer_config.json": b"\xff\xfe"}, {"tokenizer.json": b""}]
)
def test_corrupt_tokenizer_files_are_input_errors(files, tmp_path, model_dir, capsys):
    m = model_dir(files=files)
    _, _, err = _audit_model(tmp_path, m, capsys, expect=2)
    assert "--model" in err and str(m) in err


def test_corrupt_config_files(tmp_path, model_dir, capsys):
    m = model_dir("m1", files={"config.json": b"{not json"})
    _, _, err = _audit_model(tmp_path, m, capsys, expect=2)
    assert str(m / "config.json") in err and "--model" in err
    m = model_dir("m2", files={"generation_config.json": b"[1, 2"})
    _audit_model(tmp_path, m, capsys, expect=0)


# ============================================================================================
# `tools: []` is tokenized as the template renders it, as transformers and TRL's SFTTrainer do


def test_empty_tools_list_renders_as_given(tmp_path, sft_tokenizer):
    from sftdata import formats

    tok = family_tokenizer(sft_tokenizer, "llama3_1")
    path = write(tmp_path / "t.jsonl", _lines(json.dumps({**GOOD, "tools": []}), G))
    with_empty, without = [c for c in formats.read(str(path))]
    assert with_empty.tools == () and without.tools is None
    for conv, tools in ((with_empty, []), (without, None)):
        t = masks.tokenize(conv, tok)
        expected = tok.apply_chat_template(GOOD["messages"], tools=tools, tokenize=False)
        assert tok.decode(t.input_ids) == expected
        assert t.n_trained > 0
    t = masks.tokenize(with_empty, tok)
    assert "Environment: ipython" in tok.decode(t.input_ids)  # Llama-3.1's tool preamble, as TRL trains it
    assert [f.check for f in t.findings] == ["template.empty-tools"]
    assert masks.tokenize(with_empty, sft_tokenizer).findings == ()  # ChatML renders [] as no tools: nothing to say


# ============================================================================================
# SIGINT / SIGTERM: no temporary files, nothing that looks complete


def _big_jsonl(path, n):
    rows = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: " + "lorem ipsum dolor " * 20},
                    {"role": "assistant", "content": f"Answer {i} " + "sit amet " * 30},
                ]
            }
        )
        for i in range(n)
    ]
    return write(path, "\n".join(rows) + "\n")


def _interrupt_when(proc, predicate, sig, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            proc.send_signal(sig)
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["convert", "audit", "dedup"])
def test_interrupt_leaves_no_temporary_or_complete_looking_files(command, sig, tmp_path):
    src = _big_jsonl(tmp_path / "big.jsonl", {"convert": 30_000, "audit": 6_000, "dedup": 12_000}[command])
    out = tmp_path / "out"
    out.mkdir()
    argv = {
        "convert": ["convert", src, "-o", out / "conv.parquet"],
        "audit": ["audit", src, "--model", DEMO_MODEL, "--run-dir", out / "run", "--workers", "2"],
        "dedup": ["dedup", src, "-o", out / "kept.jsonl", "--run-dir", out / "run"],
    }[command]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftdata.cli", *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        # signal while a temporary output file is open (what used to be left behind)
        sent = _interrupt_when(proc, lambda: bool(leftovers(out)), sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sent, f"{command} finished before a temporary file was seen: {err.decode()[-2000:]}"
    assert proc.returncode == 128 + sig, (proc.returncode, err.decode()[-2000:])
    assert b"Traceback" not in err, err.decode()
    assert leftovers(out) == []
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert not any(
        p.endswith(
            ("conv.parquet", "kept.jsonl", "summary.json", "clusters.parquet", "examples.parquet", "manifest.json")
        )
        for p in written
    ), written
