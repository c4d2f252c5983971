"""Issue 9, trainer items: every offered scheduler runs, a finished run keeps no checkpoints and
refuses --resume, DataParallel is refused naming the launchers, the memory plan splits micro-batches,
and the LM head scores only trained positions."""

from __future__ import annotations

import pytest
import torch
import yaml

from sfttrain import cli
from sfttrain import train as train_mod
from sfttrain.config import SCHEDULERS, Config
from sfttrain.train import train


def _cfg(data_file, out, **kw):
    base = {
        "model": "tiny",
        "data": (str(data_file),),
        "output_dir": str(out),
        "max_length": 64,
        "batch_size": 4,
        "max_steps": 2,
        "save_steps": 0,
        "seed": 42,
    }
    return Config(**{**base, **kw})


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_offered_runs(scheduler, small_data_file, tiny_model, sft_tokenizer, tmp_path):
    r = train(
        _cfg(small_data_file, tmp_path / "run", lr_scheduler=scheduler, max_steps=3),
        model=tiny_model,
        tokenizer=sft_tokenizer,
        audit=False,
    )
    assert r.global_step == 3


def test_a_finished_run_keeps_no_checkpoints_and_refuses_resume(small_data_file, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(small_data_file),
        "--max-length",
        "64",
        "--max-steps",
        "2",
        "--save-steps",
        "1",
        "--output-dir",
        str(run),
    ]
    assert cli.main(["run", *args]) == 0
    assert (run / "train" / "adapter").is_dir() and not (run / "train" / "checkpoints").exists()
    capsys.readouterr()
    assert cli.main(["run", "--resume", "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "finished run after 2 steps" in err and "nothing to resume" in err
    assert cli.main(["run", *args]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_data_parallel_is_refused_naming_the_launchers(small_data_file, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rc = cli.main(
        [
            "run",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(small_data_file),
            "--max-steps",
            "1",
            "--neftune-alpha",
            "5",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "torchrun --nproc_per_node 2" in err and "accelerate launch" in err and "Traceback" not in err


def test_the_memory_plan_splits_the_micro_batch_keeping_rows_per_step(
    small_data_file, tiny_model, sft_tokenizer, tmp_path, caplog, monkeypatch
):
    import dataclasses

    from sftdata.pytest_plugin import build_tiny_causal_lm
    from sfttrain import data, memory

    cfg = _cfg(small_data_file, tmp_path / "run", batch_size=4, max_steps=1)
    ests = []
    real = memory.estimate
    monkeypatch.setattr(memory, "estimate", lambda *a, **k: ests.append(real(*a, **k)) or ests[-1])
    model = train_mod.prepare_model(tiny_model, sft_tokenizer, cfg, [])
    examples, _ = data.load_examples(
        data.read_conversations(cfg.data), sft_tokenizer, policy="assistant", max_length=64
    )
    assert train_mod.fit_memory(dataclasses.replace(cfg, memory_gb=1000.0), model, examples, None).batch_size == 4
    budget = (ests[-1].peak(2) + ests[-1].peak(1)) / 2 / memory.GiB  # one row fits, two do not
    cfg = dataclasses.replace(cfg, memory_gb=budget)
    planned = train_mod.fit_memory(cfg, model, examples, None)
    assert (planned.batch_size, planned.gradient_accumulation_steps) == (1, 4)

    r = train(cfg, model=build_tiny_causal_lm(sft_tokenizer), tokenizer=sft_tokenizer, audit=False)
    assert r.global_step == 1
    text = (tmp_path / "run" / "train" / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    assert saved["batch_size"] == 1 and saved["gradient_accumulation_steps"] == 4
    assert text.startswith("# batch_size 4 -> 1")
    assert any("gradient_accumulation_steps 4 instead" in m for m in caplog.messages)


def test_no_row_fits_is_exit_2_naming_the_flags(small_data_file, tiny_model_dir, tmp_path, capsys):
    rc = cli.main(
        [
            "run",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(small_data_file),
            "--max-steps",
            "1",
            "--memory-gb",
            "0.001",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--max-length" in err and "--gradient-checkpointing" in err and "--memory-gb" in err


def test_the_lm_head_scores_only_trained_positions(small_data_file, tiny_model, sft_tokenizer, tmp_path, monkeypatch):
    from trl.trainer import utils as trl_utils

    seen = []
    real = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        seen.append(hidden.shape[0])
        return real(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    counted = []
    cfg = _cfg(small_data_file, tmp_path / "run", policy="last", max_steps=1, batch_size=12)

    class Count(train_mod.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            model.register_forward_pre_hook(
                lambda m, a, k: counted.append(int((k["labels"][:, 1:] != -100).sum())) if m.training else None,
                with_kwargs=True,
            )

    train(cfg, model=tiny_model, tokenizer=sft_tokenizer, callbacks=[Count()], audit=False)
    assert counted and seen[0] == counted[0]  # the first training forward: trained positions only
