"""`sftdata` dispatcher, `show` and `models`: --help, exit codes, JSON shape, colours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftdata import cli
from sftdata.cli import models as cmd_models
from sftdata.cli import show as cmd_show

REPO = Path(__file__).resolve().parents[2]

ROWS = [
    {"messages": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}]},
    {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    },
]


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "chat.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n{not json\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    assert cli.main([command, "--help"]) == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_dispatcher_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "convert" in capsys.readouterr().out
    assert cli.main(["shwo"]) == 2
    assert "did you mean 'show'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_show_json_lists_every_token(data, capsys, sft_tokenizer):
    assert cmd_show.main([str(data), "--model", "smollm2-135m-instruct", "--line", "2", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["schema_version"] == 1 and obj["source"]["line"] == 2
    toks = obj["tokens"]
    assert set(toks[0]) == {"id", "text", "trained", "message_index"}
    trained = "".join(t["text"] for t in toks if t["trained"])
    assert trained == "4<|im_end|>6<|im_end|>"
    assert {t["message_index"] for t in toks if t["trained"]} == {2, 4}
    assert "".join(t["text"] for t in toks) == sft_tokenizer.apply_chat_template(ROWS[1]["messages"], tokenize=False)


def test_show_policy_last_and_id(data, capsys):
    assert (
        cmd_show.main([str(data), "--model", "smollm2-135m-instruct", "--id", "chat/2", "--policy", "last", "--json"])
        == 0
    )
    toks = json.loads(capsys.readouterr().out)["tokens"]
    assert "".join(t["text"] for t in toks if t["trained"]) == "6<|im_end|>"


def test_show_human_output_and_colours(data, capsys):
    assert cmd_show.main([str(data), "--model", "smollm2-135m-instruct", "--line", "1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "chat.jsonl:1" in out and "message 1 · assistant" in out and "trained: 3" in out
    assert "\x1b[" not in out
    assert cmd_show.main([str(data), "--model", "smollm2-135m-instruct", "--line", "1", "--color", "always"]) == 0
    assert "\x1b[" in capsys.readouterr().out


def test_show_errors_are_usage_errors(data, tmp_path, capsys):
    assert cmd_show.main([str(data), "--model", "smollm2-135m-instruct", "--line", "3"]) == 2
    err = capsys.readouterr().err
    assert "chat.jsonl:3" in err  # the broken line is named
    assert cmd_show.main([str(data), "--model", "smollm2-135m-instruct", "--line", "99"]) == 2
    assert "--line 99" in capsys.readouterr().err
    assert cmd_show.main([str(tmp_path / "missing.jsonl"), "--model", "smollm2-135m-instruct"]) == 2
    assert cmd_show.main([str(data), "--model", str(tmp_path / "no-such-model")]) == 2
    assert "--model" in capsys.readouterr().err


def test_models_lists_the_demo_alias(capsys, sft_tokenizer):
    assert cmd_models.main(["--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    (alias,) = obj["models"]
    assert alias["alias"] == "smollm2-135m-instruct" and alias["gguf"] and alias["tokenizer_cached"]


def test_show_token_text_is_never_markup(tmp_path, sft_tokenizer, capsys):
    # Mistral's [INST] / [/INST] control tokens look like Rich markup tags.
    from sftdata.testing.families import family_tokenizer

    model = tmp_path / "mistral-tok"
    family_tokenizer(sft_tokenizer, "mistral").save_pretrained(model)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n")
    assert cmd_show.main([str(data), "--model", str(model), "--line", "1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "[INST]" in out and "[/INST]" in out
    # a system turn makes Mistral's template raise: a finding, exit 1, in both output modes
    assert cmd_show.main([str(data), "--model", str(model), "--line", "2", "--color", "never"]) == 1
    assert "[error] template.render-error" in capsys.readouterr().out
    assert cmd_show.main([str(data), "--model", str(model), "--line", "2", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["findings"][0]["check"] == "template.render-error"


def test_show_a_record_with_only_a_warning(tmp_path, capsys):
    data = tmp_path / "w.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}) + "\n"
    )
    assert cmd_show.main([str(data), "--model", "smollm2-135m-instruct", "--line", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"]["line"] == 1


@pytest.mark.parametrize("bad", ["0", "-3", "ten"])
def test_show_rejects_bad_max_length(data, bad, capsys):
    assert cmd_show.main([str(data), "--model", "smollm2-135m-instruct", f"--max-length={bad}"]) == 2
    assert "--max-length" in capsys.readouterr().err


def test_broken_model_dir_is_an_input_error(data, tmp_path, capsys):
    model = tmp_path / "broken"
    model.mkdir()
    (model / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    (model / "tokenizer_config.json").write_text("{}")
    assert cmd_show.main([str(data), "--model", str(model)]) == 2
    assert "--model" in capsys.readouterr().err


def test_print_json_finite_is_the_same_json_value(capsys, monkeypatch):
    """`finite=True` (dedup's --json) encodes with msgspec: the same JSON value json.dumps gives
    for plain types; an object holding a type msgspec does not know (numpy scalars, paths) or
    cannot encode goes to json.dumps whole, as before."""
    import io
    import sys

    import numpy as np

    from sftdata.cli import kit

    summary = {"n": 3, "big": 1e16, "small": 1e-5, "pair": (1, 2), "none": None, "yes": True}
    findings = [{"check": "dedup.near", "data": {"verified_jaccard": 0.8125, "text": "é\u2028 \x00 日本"}}]
    kit.print_json("dedup", summary, findings)
    plain = capsys.readouterr().out
    kit.print_json("dedup", summary, findings, finite=True)
    fast = capsys.readouterr().out
    assert fast != plain and fast.endswith("\n") and fast.count("\n") == 1  # msgspec wrote it
    assert json.loads(fast) == json.loads(plain)
    for odd in ({"n": np.int64(3), "x": np.float64(0.1)}, {"path": Path("/x/y.jsonl")}):
        kit.print_json("dedup", odd, findings)
        want = capsys.readouterr().out
        kit.print_json("dedup", odd, findings, finite=True)
        assert capsys.readouterr().out == want
    out = io.StringIO()  # holds what a UTF-8 stdout cannot
    monkeypatch.setattr(sys, "stdout", out)
    kit.print_json("dedup", {"lone": "\ud800"}, [], finite=True)  # msgspec cannot encode it: json.dumps does
    assert out.getvalue() == (
        json.dumps(
            {"schema_version": 1, "command": "dedup", "summary": {"lone": "\ud800"}, "findings": []},
            ensure_ascii=False,
        )
        + "\n"
    )


def test_console_exit_is_quick_but_keeps_output_hooks_and_profilers(tmp_path):
    """The console script exits with os._exit after flushing and running the atexit hooks: the
    output is all there, a closed stdout is no crash, and under a profiler Python's own exit runs
    so the profile is written."""
    import subprocess
    import sys

    def run(args, **kw):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, **kw)

    hook = tmp_path / "hook.py"
    hook.write_text(
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: open({str(tmp_path / 'ran')!r}, 'w').write('yes'))\n"
        "sys.argv = ['sftdata', 'dedup', 'examples/messages.jsonl', '--json']\n"
        "runpy.run_module('sftdata.cli', run_name='__main__')\n"
    )
    done = run([str(hook)], cwd=REPO)
    assert done.returncode == 0 and (tmp_path / "ran").read_text() == "yes"
    assert json.loads(done.stdout)["summary"]["examples"] > 0  # the whole JSON line, flushed
    closed = subprocess.run(
        [sys.executable, "-m", "sftdata.cli", "--version"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    assert closed.returncode == 0
    shut = subprocess.run(f"{sys.executable} -m sftdata.cli --version >&-", shell=True, capture_output=True, timeout=60)
    assert shut.returncode == 0 and b"Traceback" not in shut.stderr
    prof = tmp_path / "p.out"
    profiled = run(["-m", "cProfile", "-o", str(prof), "-m", "sftdata.cli", "--version"])
    assert profiled.returncode == 0 and prof.stat().st_size > 0
