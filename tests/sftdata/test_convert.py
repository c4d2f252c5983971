"""`sftdata convert`: exit codes, output, --json, --dataset-info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftdata import cli, formats
from sftdata.cli import convert as cmd_convert

REPO = Path(__file__).resolve().parents[2]
SHARED = (REPO / ".." / "shared" / "data").resolve()
EXAMPLES = REPO / "examples"

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cmd_convert.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "--dataset-info" in out and "sharegpt" in out and "typed-blocks" in out
    assert cli.main(["convert", "--help"]) == 0


def test_converts_example_alpaca_to_messages(capsys, tmp_path):
    out_path = tmp_path / "alpaca.messages.jsonl"
    code, out, err = run(capsys, str(EXAMPLES / "alpaca.json"), "-o", str(out_path))
    assert code == 0, err
    assert "read         12 records" in out and "wrote        12 records" in out and "(alpaca)" in out
    rows = lines_of(out_path)
    assert len(rows) == 12 and rows[1]["messages"][0] == {
        "role": "user",
        "content": "Translate the sentence into French.\nThe library opens at nine o'clock.",
    }
    # and back: messages -> alpaca reproduces the example
    back = tmp_path / "back.json"
    assert run(capsys, str(out_path), "-o", str(back), "--to", "alpaca")[0] == 0
    assert json.loads(back.read_text()) == json.loads((EXAMPLES / "alpaca.json").read_text())


def test_json_output_is_one_object(capsys, tmp_path):
    code, out, _ = run(capsys, str(EXAMPLES / "sharegpt.jsonl"), "-o", str(tmp_path / "s.parquet"), "--json")
    assert code == 0
    obj = json.loads(out)  # exactly one JSON document on stdout
    assert obj["schema_version"] == 1 and obj["command"] == "convert"
    assert obj["summary"] == {
        "read": 10,
        "written": 10,
        "skipped": 0,
        "input": str(EXAMPLES / "sharegpt.jsonl"),
        "output": str(tmp_path / "s.parquet"),
        "from": "sharegpt",
        "to": "parquet",
    }
    assert obj["findings"] == []


def test_bad_records_are_reported_and_exit_1(capsys, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(
        "\n".join(
            [
                GOOD,
                "{oops",
                GOOD,
                json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
                "{again",
                "{and again",
                "{4th",
                GOOD,
            ]
        )
        + "\n"
    )
    out_path = tmp_path / "o.jsonl"
    code, out, _ = run(capsys, str(src), "-o", str(out_path))
    assert code == 1
    assert len(lines_of(out_path)) == 3
    assert "read          8 records" in out and "skipped       5 records" in out
    assert "format.parse-error: 4 skipped" in out and "format.bad-role: 1 skipped" in out
    assert f"{src}:2" in out and f"{src}:5" in out and f"{src}:4  " in out
    assert "... and 1 more" in out and "hint:" in out

    code, out, _ = run(capsys, str(src), "-o", str(out_path), "--json")
    obj = json.loads(out)
    assert code == 1 and obj["summary"]["skipped"] == 5
    assert [(f["check"], f["source"]["line"]) for f in obj["findings"]] == [
        ("format.parse-error", 2),
        ("format.bad-role", 4),
        ("format.parse-error", 5),
        ("format.parse-error", 6),
        ("format.parse-error", 7),
    ]


def test_unrepresentable_records_are_skipped_with_reasons(capsys, tmp_path):
    code, out, _ = run(capsys, str(EXAMPLES / "messages.jsonl"), "-o", str(tmp_path / "a.json"), "--to", "alpaca")
    assert code == 1
    assert "format.unrepresentable: 1 skipped" in out and "messages/4" in out and "tool call" in out
    assert len(json.loads((tmp_path / "a.json").read_text())) == 11


def test_warnings_do_not_fail(capsys, tmp_path):
    src = tmp_path / "w.jsonl"
    src.write_text(
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}) + "\n"
    )
    code, out, _ = run(capsys, str(src), "-o", str(tmp_path / "o.jsonl"))
    assert code == 0 and "format.empty-content: 1 warning\n" in out and "skipped       0" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["missing.jsonl", "-o", "o.jsonl"], "INPUT missing.jsonl: file not found"),
        (
            ["{ex}", "-o", "o.jsonl", "--from", "sharegtp"],
            "--from 'sharegtp': unknown format (did you mean 'sharegpt'?)",
        ),
        (["{ex}", "-o", "o.jsonl", "--to", "alpacca"], "--to 'alpacca': unknown format (did you mean 'alpaca'?)"),
        (["{ex}", "-o", "o.txt"], "unknown extension"),
        (["{ex}", "-o", "o.parquet", "--to", "alpaca"], "parquet files hold the messages format"),
        (["{ex}"], "-o/--output"),
        (["-o", "o.jsonl"], "INPUT is missing"),
        (["-o", "o.jsonl", "--dataset", "x"], "--dataset-info and --dataset go together"),
        (["{ex}", "-o", "o.jsonl", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{ex}", str(EXAMPLES / "messages.jsonl")) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and out == ""
    assert not (tmp_path / "o.jsonl").exists()


def test_undetectable_format_names_the_keys(capsys, tmp_path):
    src = tmp_path / "odd.jsonl"
    src.write_text(json.dumps({"foo": 1}) + "\n")
    code, _, err = run(capsys, str(src), "-o", str(tmp_path / "o.jsonl"))
    assert code == 2 and "['foo']" in err and "--from" in err and "messages, sharegpt, alpaca" in err


def test_dataset_info(capsys, tmp_path):
    data = tmp_path / "tool.json"
    data.write_text(
        json.dumps(
            [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "tools": "[]"}]
        )
    )
    info = tmp_path / "dataset_info.json"
    info.write_text(
        json.dumps(
            {
                "tool_demo": {
                    "file_name": "tool.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "tools": "tools"},
                }
            }
        )
    )
    out_path = tmp_path / "o.jsonl"
    code, out, _ = run(capsys, "--dataset-info", str(info), "--dataset", "tool_demo", "-o", str(out_path))
    assert code == 0 and "(sharegpt)" in out
    assert lines_of(out_path) == [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "tools": []}
    ]
    code, _, err = run(capsys, "--dataset-info", str(info), "--dataset", "tool_dem", "-o", str(out_path))
    assert code == 2 and "did you mean 'tool_demo'" in err


def test_shared_glaive_via_dataset_info(capsys, tmp_path):
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present (only on the project's machines)")
    out_path = tmp_path / "glaive.parquet"
    code, out, _ = run(
        capsys,
        "--dataset-info",
        str(SHARED / "llamafactory/dataset_info.json"),
        "--dataset",
        "glaive_toolcall_en_demo",
        "-o",
        str(out_path),
        "--json",
    )
    obj = json.loads(out)
    assert code == 0 and obj["summary"]["read"] == obj["summary"]["written"] == 300
    convs = [c for c in formats.read(str(out_path)) if not hasattr(c, "check")]
    assert len(convs) == 300 and sum(bool(m.tool_calls) for c in convs for m in c.messages) == 211
