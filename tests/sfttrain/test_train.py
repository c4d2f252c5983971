"""Training end to end on a tiny in-process model: pinned losses, outputs, Ctrl-C + resume, merge,
full fine-tuning, new special tokens, the audit gate."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from sftdata.testing.fixtures import build_tiny_causal_lm
from sfttrain import cli
from sfttrain import train as train_mod
from sfttrain.config import Config
from sfttrain.train import train

REPO = Path(__file__).resolve().parents[2]

# Regression pins: the first two logged losses of test_two_step_smoke (tiny random Llama, seed 42).
PINNED_LOSSES = (10.810018539428711, 10.80124282836914)


def smoke_config(data_file, out, **kw) -> Config:
    base = dict(
        model="tiny",
        data=(str(data_file),),
        output_dir=str(out),
        max_length=64,
        batch_size=4,
        max_steps=2,
        save_steps=0,
        seed=42,
    )
    return Config(**{**base, **kw})


def test_two_step_smoke(data_file, tiny_model, sft_tokenizer, tmp_path):
    r = train(smoke_config(data_file, tmp_path / "run"), model=tiny_model, tokenizer=sft_tokenizer, audit=False)
    assert not r.interrupted and r.global_step == 2
    assert r.losses == pytest.approx(PINNED_LOSSES, abs=1e-4)

    t = tmp_path / "run" / "train"
    saved = yaml.safe_load((t / "config.yaml").read_text())
    assert saved["max_length"] == 64 and saved["data"] == [str(data_file)]
    rows = [json.loads(x) for x in (t / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "trained_tokens_per_step", "tokens"):
            assert isinstance(row[key], (int, float)) and row[key] > 0, key
        assert row["trained_tokens_per_step"] < row["tokens"]
    table = pq.read_table(t / "example_loss.parquet").to_pylist()
    assert len(table) == r.n_examples == 24
    assert set(table[0]) >= {"example_id", "source", "n_trained", "loss"}
    assert all(row["n_trained"] > 0 and 5 < row["loss"] < 15 for row in table)  # random model: ~ln(vocab)
    assert table[0]["source"].endswith("chat.jsonl:1")
    assert (t / "adapter" / "adapter_config.json").is_file() and (t / "adapter" / "adapter_model.safetensors").is_file()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "train" in manifest["stages"] and manifest["stages"]["train"]["inputs"][0]["sha256"]


def _sigint_at_step_2(self, args, state, control, **kw):
    if state.global_step == 1:  # during step 2: the checkpoint lands at the end of step 2
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_the_same_trajectory(
    small_data_file, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """Also the reproducibility test: two runs with NEFTune noise and LoRA dropout on agree exactly."""
    args = [
        "--model",
        str(tiny_model_dir),
        "--data",
        str(small_data_file),
        "--max-length",
        "64",
        "--batch-size",
        "2",
        "--max-steps",
        "4",
        "--save-steps",
        "0",
        "--neftune-alpha",
        "5",
        "--lora-dropout",
        "0.1",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli.main(["run", *args, "--output-dir", str(straight)]) == 0

    monkeypatch.setattr(train_mod.ProgressBar, "on_step_begin", _sigint_at_step_2, raising=False)
    assert cli.main(["run", *args, "--output-dir", str(resumed)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert [p.name for p in (resumed / "train" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (resumed / "train" / "adapter").exists()
    monkeypatch.undo()

    assert cli.main(["run", *args, "--output-dir", str(resumed)]) == 2  # checkpoints exist: must say --resume
    assert cli.main(["run", "--resume", "--output-dir", str(resumed)]) == 0  # the saved config is reused

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]

    assert len(losses(straight)) == 4
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-5)


def test_merge_folds_the_adapter_into_the_base_model(small_data_file, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = tmp_path / "run", tmp_path / "merged"
    assert (
        cli.main(
            [
                "run",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(small_data_file),
                "--output-dir",
                str(run),
                "--max-length",
                "64",
                "--max-steps",
                "1",
                "--save-steps",
                "0",
                "--learning-rate",
                "0.01",
            ]
        )
        == 0
    )
    assert cli.main(["merge", str(run), "-o", str(out)]) == 0
    assert cli.main(["merge", str(run), "-o", str(out)]) == 2  # not empty
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base_for_adapter = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapted = PeftModel.from_pretrained(base_for_adapter, run / "train" / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-4)


def test_full_finetune_with_gradient_checkpointing(data_file, tiny_model, sft_tokenizer, tmp_path):
    cfg = smoke_config(
        data_file, tmp_path / "run", lora=False, gradient_checkpointing=True, max_steps=1, learning_rate=1e-3
    )
    before = tiny_model.model.layers[0].mlp.up_proj.weight.detach().clone()
    r = train(cfg, model=tiny_model, tokenizer=sft_tokenizer, audit=False)
    assert r.global_step == 1
    assert not torch.equal(before, tiny_model.model.layers[0].mlp.up_proj.weight.detach())
    assert (tmp_path / "run" / "train" / "model" / "config.json").is_file()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_new_special_token_rows_are_trained_on_both_sides(tied, sft_tokenizer):
    """A new token that is only ever predicted (never context) must still get a gradient: its
    output row. TRL's fused LM head reads lm_head.weight, so this checks peft's wrapper reaches it."""
    from trl.trainer.utils import add_fused_lm_head

    tok = copy.deepcopy(sft_tokenizer)
    model = build_tiny_causal_lm(tok)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    cfg = Config(new_special_tokens=("<|new|>",))
    new_ids = train_mod.prepare_tokenizer(tok, cfg)
    assert new_ids == [len(sft_tokenizer)]
    model = train_mod.prepare_model(model, tok, cfg, new_ids)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    add_fused_lm_head(model.get_base_model())
    new = new_ids[0]
    out = model(input_ids=torch.tensor([[1, 2, new]]), labels=torch.tensor([[-100, -100, new]]), fused_lm_head=True)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "trainable_tokens" in n}
    head_side = [g for n, g in grads.items() if ("lm_head" in n) or tied]
    assert grads and all(g is not None for g in head_side)
    assert any(g.abs().sum() > 0 for g in head_side), "the new token's output row gets no gradient"


def test_new_special_tokens_end_to_end(tmp_path, sft_tokenizer, jsonl):
    tok = copy.deepcopy(sft_tokenizer)
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i} <|tool|>"}]}
        for i in range(8)
    ]
    f = jsonl(tmp_path / "tool.jsonl", rows)
    cfg = Config(
        model="tiny",
        data=(str(f),),
        output_dir=str(tmp_path / "run"),
        max_length=64,
        max_steps=1,
        save_steps=0,
        new_special_tokens=("<|tool|>",),
        learning_rate=0.05,
    )
    r = train(cfg, model=build_tiny_causal_lm(sft_tokenizer), tokenizer=tok, audit=False)
    assert r.global_step == 1 and "<|tool|>" in tok.get_vocab()
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "train" / "adapter" / "adapter_model.safetensors")
    assert any("trainable_tokens" in k for k in weights)


def test_the_gate_refuses_error_level_findings(tmp_path, tiny_model_dir, capsys, jsonl, chat_rows):
    pytest.importorskip("sftdata.audit")
    no_answer = {"messages": [{"role": "user", "content": "no answer"}]}
    bad = jsonl(tmp_path / "bad.jsonl", [*chat_rows(6), "{not json", no_answer])
    args = [
        "run",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(bad),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-length",
        "64",
        "--max-steps",
        "1",
        "--save-steps",
        "0",
    ]
    assert cli.main([*args, "--json"]) == 1
    out, err = capsys.readouterr()
    assert "refusing to train" in err and f"{bad}:7" in err and "fix:" in err and "--force" in err
    report = json.loads(out)
    assert report["command"] == "sfttrain run" and report["summary"]["refused"] is True
    assert {f["check"] for f in report["findings"]} >= {"format.parse-error", "format.no-assistant"}
    assert (tmp_path / "run" / "audit").is_dir() and not (tmp_path / "run" / "train" / "adapter").exists()
    assert cli.main([*args, "--force", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["steps"] == 1 and summary["examples"] == 6 and summary["skipped"] == 1  # the no-answer one


def test_no_trainable_examples_is_a_usage_error(tmp_path, tiny_model, sft_tokenizer, jsonl):
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    f = jsonl(tmp_path / "x.jsonl", [row])
    from sftdata.errors import UsageError

    with pytest.raises(UsageError, match="no trainable examples"):
        train(
            Config(model="t", data=(str(f),), output_dir=str(tmp_path / "r"), policy="last", max_length=8),
            model=tiny_model,
            tokenizer=sft_tokenizer,
            audit=False,
        )


@pytest.mark.slow
def test_demo_model_trains_two_steps(tmp_path):
    """The real demo model (SmolLM2-135M-Instruct), through the CLI, 2 short steps on CPU."""
    data = REPO / "examples" / "messages.jsonl"
    if not data.is_file():
        pytest.skip("examples/messages.jsonl is not there yet")
    run = tmp_path / "run"
    rc = cli.main(
        [
            "run",
            str(REPO / "configs" / "demo.yaml"),
            "--output-dir",
            str(run),
            "--max-steps",
            "2",
            "--max-length",
            "128",
            "--batch-size",
            "1",
            "--save-steps",
            "0",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < r["loss"] < 10 for r in rows)
    assert (run / "train" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, data_file, tiny_model_dir):
    """DDP on CPU (gloo): 2 processes, 2 steps; rank 0 writes the outputs."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "sfttrain.cli",
            "run",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data_file),
            "--output-dir",
            str(run),
            "--max-length",
            "64",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--save-steps",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert len(pq.read_table(run / "train" / "example_loss.parquet")) == 24


def test_precision_is_chosen_from_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_mod.precision(Config()) == (torch.float32, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert train_mod.precision(Config()) == (torch.bfloat16, "bf16")  # LoRA: bf16 frozen weights
    assert train_mod.precision(Config(lora=False)) == (torch.float32, "bf16")  # full: fp32 master + autocast
    assert train_mod.precision(Config(dtype="fp32")) == (torch.float32, None)
