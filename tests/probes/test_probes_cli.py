"""`probes` CLI: exit codes, --json envelope, model directories and sfttrain run directories."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from probes.cli import main

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dirs(fact_models, tmp_path_factory):
    base, sft, tok = fact_models
    root = tmp_path_factory.mktemp("models")
    for name, model in (("base", base), ("sft", sft)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "base", root / "sft"


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_help_and_usage_errors(capsys, tmp_path):
    assert main(["--help"]) == 0
    assert main([]) == 2
    assert main(["nope"]) == 2
    for cmd in ("hallucination", "known", "suite", "overfit"):
        assert main([cmd, "--help"]) == 0
    assert main(["hallucination"]) == 2  # --sft is required
    assert main(["hallucination", "--sft", str(tmp_path / "missing-model")]) == 2  # not a run dir, no --base
    err = capsys.readouterr().err
    assert "--base is required" in err
    assert main(["hallucination", "--base", "x", "--sft", "y", "--suite", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_python_dash_m_works():
    r = subprocess.run(
        [sys.executable, "-m", "probes", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "hallucination" in r.stdout


def test_flagged_model_dirs_exit_1_with_json_envelope(model_dirs, suite_file, tmp_path, capsys):
    base, sft = model_dirs
    bad = suite_file.read_text() + '{"question": "no gold here", "relation": "r1", "distractors": ["a"]}\nnot json\n'
    suite_file.write_text(bad)
    rc = main(
        [
            "hallucination",
            "--base",
            str(base),
            "--sft",
            str(sft),
            "--suite",
            str(suite_file),
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
        ]
    )
    out = _json(capsys)
    assert rc == 1
    assert out["schema_version"] == 1 and out["command"] == "hallucination"
    s = out["summary"]
    for key in (
        "items",
        "base_known",
        "flips",
        "recoveries",
        "flip_rate",
        "flip_rate_ci",
        "mcnemar_p",
        "flagged",
        "by_relation",
    ):
        assert key in s
    assert s["flagged"] and s["flips"] == 12 and s["bad_rows"] == 2
    checks = [f["check"] for f in out["findings"]]
    assert checks.count("probes.narrow-hallucination") == 12 and checks.count("probes.suite-row") == 2
    bad_rows = [f for f in out["findings"] if f["check"] == "probes.suite-row"]
    assert bad_rows[0]["source"]["line"] == 23 and "'gold'" in bad_rows[0]["message"]
    assert (tmp_path / "run/probes/hallucination.jsonl").is_file()


def test_sfttrain_run_dir_toggles_the_adapter(fact_models, model_dirs, suite_file, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    base_dir, _ = model_dirs
    _, _, tok = fact_models
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "train/config.yaml").write_text(f"model: {base_dir}\nlora: true\n")
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )  # B = 0: the adapter is a no-op
    peft_model.save_pretrained(run / "train/adapter")
    tok.save_pretrained(run / "train/adapter")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["hallucination", "--sft", str(run), "--suite", str(suite_file), "--json"])
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # peft's, not the user's
    s = _json(capsys)["summary"]
    assert rc == 0, s
    assert s["adapter_toggled"] is True and s["base"] == str(base_dir)
    assert s["flips"] == 0 and s["base_known"] == 22
    assert (run / "probes/hallucination.jsonl").is_file()  # the run directory is the default --run-dir
    stage = json.loads((run / "manifest.json").read_text())["stages"]["probes.hallucination"]
    assert stage["command"] == ["probes", "hallucination", "--sft", str(run), "--suite", str(suite_file), "--json"]
    # an unfinished run is a usage error naming the fix
    (run / "train/adapter/adapter_config.json").unlink()
    import shutil

    shutil.rmtree(run / "train/adapter")
    assert main(["hallucination", "--sft", str(run), "--suite", str(suite_file)]) == 2
    assert "did not finish" in capsys.readouterr().err


def test_known_and_suite_commands(model_dirs, suite_file, tmp_path, capsys):
    base, _ = model_dirs
    assert (
        main(["known", "--model", str(base), "--suite", str(suite_file), "-o", str(tmp_path / "k.jsonl"), "--json"])
        == 0
    )
    assert _json(capsys)["summary"]["known"] == 22
    assert len((tmp_path / "k.jsonl").read_text().splitlines()) == 22
    kn = tmp_path / "knowledge.jsonl"
    kn.write_text(
        '{"entity": "Zorbia", "facts": [{"fact": "capital", "value": "Quell"}, {"fact": "river", "value": "Ash"}]}\n'
        '{"entity": "Mardon", "facts": [{"fact": "capital", "value": "Pells"}]}\n'
        '{"entity": "Teyla", "facts": [{"fact": "capital", "value": "Orin"}]}\n'
        '{"entity": 5}\n'
    )
    assert main(["suite", "--from", str(kn), "-o", str(tmp_path / "s.jsonl"), "--json"]) == 0
    out = _json(capsys)
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["relation"] for r in rows} == {"capital"}
    z = rows[0]
    assert z["question"] == "What is the capital of Zorbia?" and z["gold"] == "Quell"
    assert sorted(z["distractors"]) == ["Orin", "Pells"]
    checks = {f["check"] for f in out["findings"]}
    assert "probes.suite-row" in checks  # river has no second value to draw distractors from
    assert any(c.startswith("format.") for c in checks)  # the bad record, with its line
    from probes.suite import read_suite

    items, bad = read_suite(str(tmp_path / "s.jsonl"))
    assert len(items) == 3 and not bad
