"""Config: defaults < YAML < flags, unknown keys and flags suggest the nearest, shipped configs parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftdata.errors import UsageError
from sfttrain import cli, config

REPO = Path(__file__).resolve().parents[2]


def test_every_field_has_help():
    for f in config.FIELDS.values():
        assert f.metadata.get("help"), f.name


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("model: m\ndata: [a.jsonl]\noutput_dir: run\nlora_r: 8\nmax_length: 64\nlearning_rate: 1e-4\n")
    rc = cli.main(["run", str(y), "--lora-r", "4", "--no-packing", "--data", "b.jsonl", "c.jsonl", "--print-config"])
    assert rc == 0
    cfg = config.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert (cfg.lora_r, cfg.max_length, cfg.packing, cfg.learning_rate) == (4, 64, False, 1e-4)
    assert cfg.data == ("b.jsonl", "c.jsonl")
    assert cfg.lora_dropout == 0.05  # untouched keys keep their defaults


def test_unknown_key_suggests_the_nearest(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("model: m\nlearnig_rate: 1e-4\n")
    assert cli.main(["run", str(y)]) == 2
    err = capsys.readouterr().err
    assert "learnig_rate" in err and "did you mean 'learning_rate'" in err and str(y) in err


def test_unknown_flag_suggests_the_nearest(capsys):
    assert cli.main(["run", "--max-lenght", "5"]) == 2
    assert "did you mean --max-length" in capsys.readouterr().err


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("max_length: long\n", "max_length must be an integer"),
        ("packing: 1\n", "packing must be true or false"),
        ("policy: assistants\n", "did you mean 'assistant'"),
        ("- a list\n", "expected a mapping"),
        ("data: [1, 2]\n", "data must be a list of strings"),
    ],
)
def test_bad_values_name_the_key(tmp_path, capsys, yaml_text, fragment):
    y = tmp_path / "c.yaml"
    y.write_text(yaml_text)
    assert cli.main(["run", str(y), "--print-config"]) == 2
    assert fragment in capsys.readouterr().err


def test_missing_required_key_names_the_flag(capsys):
    assert cli.main(["run", "--model", "m", "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "output_dir is required" in err and "--output-dir" in err


def test_out_of_range_values_name_the_key(capsys):
    assert cli.main(["run", "--model", "m", "--data", "x", "--output-dir", "r", "--batch-size", "0"]) == 2
    assert "batch_size must be at least 1, got 0" in capsys.readouterr().err


def test_missing_config_file_is_a_usage_error(capsys):
    assert cli.main(["run", "nope.yaml"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_print_config_round_trips(capsys):
    assert cli.main(["run", "--model", "m", "--data", "a", "--output-dir", "r", "--print-config"]) == 0
    out = capsys.readouterr().out
    cfg = config.from_dict(yaml.safe_load(out))
    assert cfg == config.Config(model="m", data=("a",), output_dir="r")


def test_shipped_configs_parse():
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert any(f.name == "demo.yaml" for f in files)
    for f in files:
        cfg = config.load_yaml(f)
        config.check_required(cfg)
        for d in cfg.data:  # paths are relative to the repository root
            assert (REPO / d).exists(), f"{f.name}: {d} does not exist"


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(UsageError, match="did you mean 'lora_alpha'"):
        config.from_dict({"lora_alhpa": 3})


@pytest.mark.parametrize(
    "argv, rc",
    [([], 2), (["--help"], 0), (["run", "--help"], 0), (["merge", "--help"], 0), (["rnu"], 2), (["merge"], 2)],
)
def test_help_and_exit_codes(argv, rc, capsys):
    assert cli.main(argv) == rc
    if argv == ["rnu"]:
        assert "did you mean 'run'" in capsys.readouterr().err


def test_resume_starts_from_the_saved_config(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    saved = config.Config(model="m", data=("a",), output_dir=str(run), lora_r=4)
    (run / "train" / "config.yaml").write_text(config.to_yaml(saved))
    assert cli.main(["run", "--resume", "--output-dir", str(run), "--max-steps", "9", "--print-config"]) == 0
    cfg = config.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert (cfg.model, cfg.lora_r, cfg.max_steps) == ("m", 4, 9)
