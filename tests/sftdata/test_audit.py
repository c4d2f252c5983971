"""sftdata audit end to end: run directory, what the trainer trains, CLI exit codes and output,
--select/--ignore/--fail-on, --explain, pyproject config, the pytest fixture, the check catalogue,
and auditing every shared data file without a crash."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sftdata import audit as audit_mod
from sftdata import formats, masks
from sftdata.audit import AuditResult, run_audit
from sftdata.cli import audit as cmd_audit
from sftdata.records import Conversation

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples"
DEFECTS = str(EXAMPLES / "defects.jsonl")
CLEAN = str(EXAMPLES / "messages.jsonl")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")


@pytest.fixture(scope="module")
def model_dir(sft_tokenizer, tmp_path_factory):
    """The demo tokenizer as a local directory without weights: a --model for CLI tests that
    never triggers the weights conversion."""
    d = tmp_path_factory.mktemp("demo-tokenizer")
    sft_tokenizer.save_pretrained(str(d))
    return str(d)


def cli(capsys, *argv):
    code = cmd_audit.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------
# run directory and what the trainer trains


def test_run_directory_is_complete(tmp_path, sft_tokenizer):
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    r = run_audit([DEFECTS], sft_tokenizer, max_length=256, run_dir=str(run))
    audit_dir = run / "audit"
    assert sorted(p.name for p in audit_dir.iterdir()) == ["examples.parquet", "findings.jsonl", "summary.json"]
    lines = (audit_dir / "findings.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == r.summary["findings"] == len(r.findings)
    assert {json.loads(x)["check"] for x in lines} == set(r.summary["checks"])
    assert json.loads((audit_dir / "summary.json").read_text()) == json.loads(json.dumps(r.summary))
    table = pq.read_table(audit_dir / "examples.parquet")
    assert table.num_rows == r.summary["examples"] == 9
    assert table.column_names == [
        "id",
        "file",
        "line",
        "row",
        "n_tokens",
        "n_tokens_full",
        "n_trained",
        "truncated",
        "n_findings",
        "severity",
        "input_ids",
        "loss_mask",
        "message_index",
    ]
    rows = table.to_pylist()
    assert [x["line"] for x in rows] == [1, 2, 3, 4, 5, 6, 7, 9, 10]  # line 8 is broken JSON
    assert rows[1]["severity"] == "error" and rows[0]["severity"] is None
    assert rows[5]["truncated"] and rows[5]["n_tokens"] == 256 < rows[5]["n_tokens_full"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert "audit" in manifest["stages"] and manifest["stages"]["audit"]["inputs"][0]["sha256"]
    assert not list(audit_dir.glob(".*.tmp"))  # nothing half-written left behind


def test_examples_parquet_is_what_masks_tokenize_gives_the_trainer(tmp_path, sft_tokenizer):
    """Token for token: the audit truncates exactly as masks.tokenize(max_length=) does."""
    import pyarrow.parquet as pq

    run_audit([DEFECTS, CLEAN], sft_tokenizer, max_length=64, run_dir=str(tmp_path))
    rows = pq.read_table(tmp_path / "audit" / "examples.parquet").to_pylist()
    convs = [c for p in (DEFECTS, CLEAN) for c in formats.read(p) if isinstance(c, Conversation)]
    assert len(rows) == len(convs)
    for row, conv in zip(rows, convs):
        tok = masks.tokenize(conv, sft_tokenizer, max_length=64)
        assert row["id"] == conv.id
        assert tuple(row["input_ids"]) == tok.input_ids
        assert tuple(row["loss_mask"]) == tok.loss_mask
        assert tuple(row["message_index"]) == tok.message_index
        assert (row["truncated"], row["n_trained"], row["n_tokens_full"]) == (
            tok.truncated,
            tok.n_trained,
            tok.n_tokens_full,
        )


def _all_containers(tmp_path):
    """The bundled examples in every container the readers shard (JSONL, JSON array, parquet,
    CSV), plus files a reader cannot finish: a truncated gzip and a corrupt parquet file."""
    parquet = tmp_path / "defects.parquet"
    formats.write((c for c in formats.read(DEFECTS) if isinstance(c, Conversation)), str(parquet))
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text(
        "question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(7)) + "only one field\n", encoding="utf-8"
    )
    cut = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(Path(CLEAN).read_bytes() * 3)
    cut.write_bytes(data[: len(data) * 2 // 3])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not a parquet file PAR1")
    return [
        DEFECTS,
        str(EXAMPLES / "alpaca.json"),
        str(parquet),
        CLEAN,
        str(cut),
        str(csv_path),
        str(broken),
        str(EXAMPLES / "sharegpt.jsonl"),
    ]


@pytest.mark.parametrize("workers", [2, 3])
def test_worker_processes_give_the_same_result(tmp_path, sft_tokenizer, monkeypatch, workers):
    """Forked workers (each reading every workers-th block of every file itself) produce the same
    findings, order, summary and parquet as one process, on every container format, with bad
    records and with more blocks than workers."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(audit_mod, "_BATCH", 2)
    inputs = _all_containers(tmp_path)
    one = run_audit(inputs, sft_tokenizer, max_length=128, run_dir=str(tmp_path / "one"), workers=1)
    two = run_audit(inputs, sft_tokenizer, max_length=128, run_dir=str(tmp_path / "two"), workers=workers)
    assert (one.summary["workers"], two.summary["workers"]) == (1, workers)
    assert one.summary["examples"] > 40 and one.summary["records_unreadable"] == 4  # csv, defects, gzip, parquet
    assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in two.findings]
    drop = ("elapsed_s", "examples_per_s", "run_dir", "workers")
    assert {k: v for k, v in one.summary.items() if k not in drop} == {
        k: v for k, v in two.summary.items() if k not in drop
    }
    assert pq.read_table(tmp_path / "one/audit/examples.parquet").equals(
        pq.read_table(tmp_path / "two/audit/examples.parquet")
    )
    assert (tmp_path / "one/audit/findings.jsonl").read_bytes() == (tmp_path / "two/audit/findings.jsonl").read_bytes()


def _fail_on_line_5(batch, ctx, tokenized=None):
    if any(c.source.line == 5 for c in batch):
        raise ValueError("planted bug on line 5")
    return _real_audit_batch(batch, ctx, tokenized)


_real_audit_batch = audit_mod._audit_batch


def test_a_crashing_worker_fails_the_audit_with_its_traceback(tmp_path, sft_tokenizer, monkeypatch):
    """A bug in a worker process is not swallowed: the audit raises with the worker's traceback
    (the CLI prints it and exits 3) and leaves no half-written run directory files."""
    monkeypatch.setattr(audit_mod, "_BATCH", 2)
    monkeypatch.setattr(audit_mod, "_audit_batch", _fail_on_line_5)
    with pytest.raises(RuntimeError, match="planted bug on line 5") as info:
        run_audit([DEFECTS, CLEAN], sft_tokenizer, run_dir=str(tmp_path / "run"), workers=2)
    assert "Traceback" in str(info.value) and "_fail_on_line_5" in str(info.value)
    audit_dir = tmp_path / "run" / "audit"
    assert not (audit_dir / "findings.jsonl").exists() and not (audit_dir / "examples.parquet").exists()


def test_a_killed_worker_fails_the_audit(tmp_path, sft_tokenizer, monkeypatch):
    """A worker that dies without a word (killed, out of memory) fails the audit instead of
    leaving the parent waiting forever."""
    import os
    import signal

    def die(batch, ctx, tokenized=None):
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(audit_mod, "_BATCH", 2)
    monkeypatch.setattr(audit_mod, "_audit_batch", die)
    with pytest.raises(RuntimeError, match="exited with code -9"):
        run_audit([DEFECTS, CLEAN], sft_tokenizer, run_dir=str(tmp_path / "run"), workers=2)


def test_many_small_files_are_spread_over_the_workers(tmp_path, sft_tokenizer, monkeypatch):
    """Block b of file j goes to worker (b + j) % workers: files of one block each do not all
    land on the first worker."""
    import os

    pids = tmp_path / "pids"

    def record(batch, ctx, tokenized=None):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return _real_audit_batch(batch, ctx, tokenized)

    monkeypatch.setattr(audit_mod, "_audit_batch", record)
    files = []
    for j in range(6):
        files.append(tmp_path / f"part{j}.jsonl")
        files[-1].write_text(Path(CLEAN).read_text())
    result = run_audit([str(f) for f in files], sft_tokenizer, workers=2)
    assert result.summary["examples"] == 6 * 12
    seen = pids.read_text().split()
    assert len(seen) == 6 and len(set(seen)) == 2 and os.getpid() not in map(int, seen)


def test_workers_die_with_the_parent(tmp_path):
    """Workers whose parent is killed (out of memory, SIGKILL) exit instead of waiting forever."""
    import os
    import signal
    import time

    script = tmp_path / "slow_audit.py"
    script.write_text(f"""
import sys, time
from sftdata import audit
from sftdata.models import DEMO_MODEL, load_tokenizer
def slow(batch, ctx, tokenized=None):
    time.sleep(120)
audit._audit_batch = slow
audit.run_audit([{DEFECTS!r}, {CLEAN!r}], load_tokenizer(DEMO_MODEL), workers=2)
""")
    proc = subprocess.Popen([sys.executable, str(script)])

    def children():
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == proc.pid:
                        out.append(int(d.name))
                except (OSError, IndexError, ValueError):
                    pass
        return out

    deadline = time.monotonic() + 60
    while len(children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    kids = children()
    assert len(kids) >= 2, "the audit did not start its workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = kids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [
            k
            for k in kids
            if Path(f"/proc/{k}").exists()
            and "Z" not in (Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0])
        ]
    assert not alive, f"workers {alive} outlived their parent"


def test_worker_count_excludes_this_process_and_small_inputs(tmp_path, monkeypatch):
    """The automatic worker count: 1 for small files; otherwise the CPUs other processes leave
    idle, measured from /proc/stat minus this process's own CPU time (the load average would
    count this process's own recent work as a busy machine)."""
    monkeypatch.delenv("SFTLAB_AUDIT_WORKERS", raising=False)
    small = tmp_path / "small.jsonl"
    small.write_text('{"messages": []}\n')
    from sftdata import parallel

    assert audit_mod._workers(None, [str(small)], parallel.cpu_sample()) == 1
    assert audit_mod._workers(3, [str(small)], parallel.cpu_sample()) == 3  # asked for: used
    monkeypatch.setenv("SFTLAB_AUDIT_WORKERS", "2")
    assert audit_mod._workers(None, [str(small)], parallel.cpu_sample()) == 2


def test_pipelined_single_process_matches_serial(tmp_path, sft_tokenizer, monkeypatch):
    """workers=1 tokenizes the next batches in a thread (parallel.pipelined): same findings, order and
    parquet as auditing each batch in turn; TOKENIZERS_PARALLELISM is restored afterwards."""
    import os

    import pyarrow.parquet as pq

    monkeypatch.setattr(audit_mod, "_BATCH", 2)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    piped = run_audit([DEFECTS, CLEAN], sft_tokenizer, max_length=128, run_dir=str(tmp_path / "piped"), workers=1)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    from sftdata import parallel

    monkeypatch.setattr(
        parallel, "pipelined", lambda items, prepare, finish, ahead=2: (finish(item, prepare(item)) for item in items)
    )
    serial = run_audit([DEFECTS, CLEAN], sft_tokenizer, max_length=128, run_dir=str(tmp_path / "serial"), workers=1)
    assert [f.to_dict() for f in piped.findings] == [f.to_dict() for f in serial.findings]
    drop = ("elapsed_s", "examples_per_s", "run_dir")
    assert {k: v for k, v in piped.summary.items() if k not in drop} == {
        k: v for k, v in serial.summary.items() if k not in drop
    }
    assert pq.read_table(tmp_path / "piped/audit/examples.parquet").equals(
        pq.read_table(tmp_path / "serial/audit/examples.parquet")
    )


def test_findings_in_memory_are_bounded_but_errors_always_kept(tmp_path, sft_tokenizer, monkeypatch, capsys, model_dir):
    monkeypatch.setattr(audit_mod, "MAX_FINDINGS_IN_MEMORY", 1)
    r = run_audit([DEFECTS], sft_tokenizer, run_dir=str(tmp_path))
    assert r.summary["findings_dropped_from_memory"] > 0
    assert [f.severity for f in r.findings].count("error") == 1 and len(r.findings) == 2
    lines = (tmp_path / "audit" / "findings.jsonl").read_text().splitlines()
    assert len(lines) == r.summary["findings"] > 2  # the file has every finding
    code, out, _ = cli(capsys, DEFECTS, "--model", model_dir, "--json", "--run-dir", str(tmp_path / "j"))
    assert len(json.loads(out)["findings"]) == json.loads(out)["summary"]["findings"] > 2


def test_summary_token_statistics(sft_tokenizer):
    r = run_audit([CLEAN], sft_tokenizer)
    stats = r.summary["token_stats"]
    n = [len(masks.tokenize(c, sft_tokenizer).input_ids) for c in formats.read(CLEAN) if isinstance(c, Conversation)]
    assert stats["n_tokens"]["max"] == max(n) and stats["n_tokens"]["min"] == min(n)
    assert stats["tokens"] == sum(n) and stats["truncated_examples"] == 0
    assert set(stats["max_length_candidates"]) == {"512", "1024", "2048", "4096", "8192"}
    assert stats["max_length_candidates"]["512"]["over"] == sum(x > 512 for x in n)


def test_audit_result_repr_lists_findings_for_assertions(sft_tokenizer):
    r = run_audit([DEFECTS], sft_tokenizer)
    text = r.report
    assert text.startswith("<AuditResult FAILED (fail-on error)")
    assert "error tokens.special-in-content defects.jsonl:2: '<|im_end|>' in message 0" in text
    assert "format.role-order" not in text  # only findings at or above fail-on
    assert len(repr(r)) < 240 and repr(r).count("\n") == 2  # head, the first error, "... and 2 more"
    assert isinstance(r, AuditResult) and r.run_dir is None


def test_bad_arguments_are_usage_errors(sft_tokenizer):
    from sftdata.errors import DataError, UsageError

    with pytest.raises(UsageError, match="policy 'most'") as e:
        run_audit([CLEAN], sft_tokenizer, policy="most")
    assert e.value.param == "policy" and "--" not in str(e.value)  # the library names its parameter, not a flag
    with pytest.raises(UsageError, match="select: 'tokens.double-bosx'.*did you mean 'tokens.double-bos'"):
        run_audit([CLEAN], sft_tokenizer, select=["tokens.double-bosx"])
    with pytest.raises(DataError, match="file not found"):
        run_audit(["no/such/file.jsonl"], sft_tokenizer)


def test_import_does_not_import_torch():
    code = "import sys, sftdata, sftdata.audit, sftdata.checks, sftdata.cli.audit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_exit_codes_and_report(tmp_path, capsys, model_dir):
    code, out, _ = cli(capsys, CLEAN, "--model", model_dir, "--run-dir", str(tmp_path / "a"))
    assert code == 0, out
    assert "PASSED" in out and "token lengths" in out and str(tmp_path / "a" / "audit") in out
    code, out, _ = cli(capsys, DEFECTS, "--model", model_dir, "--max-length", "256", "--run-dir", str(tmp_path / "b"))
    assert code == 1
    assert re.search(r"tokens\.special-in-content\s+error\s+1\s+.*defects\.jsonl:2", out)
    assert "worst examples" in out and "fix:" in out and "FAILED" in out
    assert cli(capsys, "missing.jsonl", "--model", model_dir, "--run-dir", str(tmp_path / "c"))[0] == 2
    assert not (tmp_path / "c").exists()  # nothing written for a usage error
    assert cli(capsys, CLEAN)[0] == 2  # no --model
    assert cli(capsys, "--model", model_dir)[0] == 2  # no input
    code, _, err = cli(capsys, CLEAN, "--model", model_dir, "--select", "tokens.nope")
    assert code == 2 and "tokens.nope" in err
    assert cli(capsys, CLEAN, "--model", model_dir, "--fail-on", "fatal")[0] == 2
    assert cli(capsys, CLEAN, "--model", model_dir, "--policy", "most")[0] == 2


def test_cli_json_is_one_object_with_every_finding(tmp_path, capsys, model_dir):
    code, out, err = cli(capsys, DEFECTS, "--model", model_dir, "--json", "--run-dir", str(tmp_path))
    assert code == 1
    obj = json.loads(out)  # exactly one JSON document on stdout
    assert list(obj) == ["schema_version", "command", "summary", "findings"]
    assert obj["schema_version"] == 1 and obj["command"] == "audit"
    assert len(obj["findings"]) == obj["summary"]["findings"]
    for f in obj["findings"]:
        assert {"check", "severity", "example_id", "source", "message", "hint"} <= set(f)
    f = next(f for f in obj["findings"] if f["check"] == "tokens.special-in-content")
    assert f["source"] == {"file": DEFECTS, "line": 2} and f["example_id"] == "defects/2"
    assert obj["summary"]["run_dir"] == str(tmp_path) and "audit written to" in err


def test_cli_select_ignore_fail_on(tmp_path, capsys, model_dir):
    def checks_of(*extra):
        code, out, _ = cli(capsys, DEFECTS, "--model", model_dir, "--json", "--run-dir", str(tmp_path), *extra)
        return code, {f["check"] for f in json.loads(out)["findings"]}

    code, ids = checks_of("--select", "tokens")
    assert ids == {"tokens.special-in-content", "tokens.unknown-special", "tokens.pad-is-eos"} and code == 1
    assert checks_of("--select", "tokens.*,format.role-order")[1] == ids | {"format.role-order"}
    code, ids = checks_of("--ignore", "tokens.special-in-content,format", "--ignore", "tokens.pad-is-eos")
    assert code == 0 and not any(i.startswith("format.") for i in ids) and "tokens.special-in-content" not in ids
    assert checks_of("--select", "format.role-order")[0] == 0  # warnings only: passes at --fail-on error
    assert checks_of("--select", "format.role-order", "--fail-on", "warning")[0] == 1
    assert checks_of("--select", "tokens.pad-is-eos", "--fail-on", "warning")[0] == 0
    assert checks_of("--select", "tokens.pad-is-eos", "--fail-on", "info")[0] == 1


def test_cli_explain(capsys):
    code, out, _ = cli(capsys, "--explain", "tokens.pad-is-eos")
    assert code == 0 and out.startswith("tokens.pad-is-eos (info)") and "DataCollatorForLanguageModeling" in out
    code, _, err = cli(capsys, "--explain", "tokens.pad-is-eso")
    assert code == 2 and "did you mean tokens.pad-is-eos" in err


def test_cli_default_run_dir(tmp_path, capsys, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, CLEAN, "--model", model_dir)
    (run,) = (tmp_path / "runs").iterdir()
    assert code == 0 and re.fullmatch(r"audit-\d{8}T\d{6}Z", run.name)
    assert (run / "audit" / "summary.json").is_file() and f"wrote {Path('runs') / run.name / 'audit'}" in out


def test_pyproject_config(tmp_path, capsys, model_dir, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'x'\n\n[tool.sftdata]\n"
        f"model = {json.dumps(model_dir)}\nmax-length = 256\nrun-dir = 'audits/here'\n\n"
        "[tool.sftdata.audit]\nselect = ['length', 'format.parse-error']\n\n[tool.sftdata.dedup]\nthreshold = 0.8\n"
    )
    sub = tmp_path / "pkg" / "data"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # found by walking up
    code, out, _ = cli(capsys, DEFECTS, "--json")
    obj = json.loads(out)
    assert code == 1 and {f["check"] for f in obj["findings"]} == {"length.truncated-answer", "format.parse-error"}
    assert obj["summary"]["max_length"] == 256 and obj["summary"]["config_file"] == str(tmp_path / "pyproject.toml")
    written = json.loads((tmp_path / "audits" / "here" / "audit" / "summary.json").read_text())
    assert written == obj["summary"]  # summary.json and --json agree, config_file included
    code, out, _ = cli(capsys, DEFECTS, "--json", "--max-length", "4096", "--select", "length")  # flags override
    assert code == 0 and json.loads(out)["findings"] == []
    (tmp_path / "pyproject.toml").write_text("[tool.sftdata]\nmax_length = 256\n")
    code, _, err = cli(capsys, DEFECTS, "--model", model_dir)
    assert code == 2 and "unknown key 'max_length'" in err and "did you mean 'max-length'" in err
    (tmp_path / "pyproject.toml").write_text("[tool.sftdata.audit]\nfail-on = 'sometimes'\n")
    code, _, err = cli(capsys, DEFECTS, "--model", model_dir)
    assert code == 2 and "fail-on" in err


def test_sftdata_dispatcher_runs_audit(capsys, model_dir, tmp_path):
    from sftdata import cli as sftdata_cli

    assert sftdata_cli.main(["audit", CLEAN, "--model", model_dir, "--run-dir", str(tmp_path)]) == 0
    assert sftdata_cli.main(["audit", "--help"]) == 0
    assert "--explain" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# the pytest fixture


def test_fixture_function_directly(sft_tokenizer):
    from sftdata.testing.audit_fixture import audit_files

    r = audit_files(CLEAN, model=sft_tokenizer)
    assert r.passed and r.summary["examples"] == 12
    assert not audit_files([DEFECTS], model=sft_tokenizer, select=["format"]).passed


def test_fixture_in_a_users_test_suite(pytester, model_dir):
    pytester.makepyfile(f"""
        def test_clean(sftdata_audit):
            result = sftdata_audit({CLEAN!r}, model={model_dir!r})
            assert result.passed, result.report

        def test_defects(sftdata_audit):
            result = sftdata_audit([{DEFECTS!r}], model={model_dir!r}, max_length=256)
            assert result.passed, result.report

        def test_defects_repr(sftdata_audit):
            assert sftdata_audit({DEFECTS!r}, model={model_dir!r}).passed, "see below"
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: <AuditResult FAILED (fail-on error): 9 examples, 10 findings (3 error, 6 warning, 1 info)>",
            "*error format.parse-error defects.jsonl:8: record 8 is unreadable*",
            "*error tokens.special-in-content defects.jsonl:2: '<|im_end|>' in message 0 (user) at char 55*",
            "*error format.no-assistant defects.jsonl:9: no assistant turn*",
        ]
    )


# --------------------------------------------------------------------------------------------
# every shared data file


@pytest.mark.slow
@needs_shared
def test_every_shared_data_file_audits_without_a_crash(tmp_path, sft_tokenizer):
    """What the audit finds in ../shared/data (with the demo tokenizer, --max-length 2048); the
    T0 file is audited on its first 3,000 records."""
    t0 = tmp_path / "t0_prefix.jsonl.gz"
    with (
        gzip.open(SHARED / "self_instruct" / "t0_train_50k_per_template.jsonl.gz", "rt") as src,
        gzip.open(t0, "wt") as dst,
    ):
        dst.writelines(itertools.islice(src, 3000))
    files = sorted(
        p
        for p in SHARED.rglob("*")
        if p.is_file()
        and p.suffix in (".json", ".jsonl", ".gz")
        and p.name != "dataset_info.json"
        and "t0_train" not in p.name
    ) + [t0]
    seen = {}
    for path in files:
        r = run_audit([str(path)], sft_tokenizer, max_length=2048, run_dir=str(tmp_path / "runs" / path.name))
        seen[path.name] = {check: c["examples"] for check, c in r.summary["checks"].items()}
        assert r.summary["examples"] > 0 and r.summary["records_unreadable"] == 0
    # what is real in there (see the issue note): T0 completions end with a literal <|endoftext|>,
    # SmolLM2's template drops glaive's tool calls and the reasoning of reason_tool_use, and injects
    # its default system prompt; long c4/T0 texts are cut at 2048.
    assert seen["t0_prefix.jsonl.gz"]["tokens.special-in-content"] == 3000
    assert seen["glaive_toolcall_en_demo.json"]["mask.boundary-mismatch"] > 100
    assert seen["reason_tool_use_demo_50.jsonl"]["mask.boundary-mismatch"] > 10
    assert seen["alpaca_en_demo.json"] == {"template.default-system-prompt": 999, "tokens.pad-is-eos": 999}
    assert "length.truncated-answer" in seen["c4_demo.jsonl"]


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle this")


def _unpicklable_last_block(batch, ctx, tokenized=None):
    examples = _real_audit_batch(batch, ctx, tokenized)
    if any(c.source.line == 12 for c in batch):
        examples.append(_Unpicklable())
    return examples


def test_a_result_that_cannot_be_sent_fails_the_audit(tmp_path, sft_tokenizer, monkeypatch):
    """multiprocessing queues drop what they cannot pickle with only a message on stderr; a block
    must never go missing silently: the worker pickles itself and reports the failure."""
    monkeypatch.setattr(audit_mod, "_BATCH", 2)
    monkeypatch.setattr(audit_mod, "_audit_batch", _unpicklable_last_block)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        run_audit([CLEAN], sft_tokenizer, workers=2)
