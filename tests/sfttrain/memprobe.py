"""Measure one training step's peak memory in a fresh process, run as a script by test_memory.py (and
for the estimator-vs-measured table in BENCHMARKS.md):

    python tests/sfttrain/memprobe.py '{"hidden": 64, "layers": 2, "rows": 2, "length": 128, "dir": "/tmp/x"}'

`dir` must be a new directory per run (the probe trains into dir/run).

Prints one JSON line: the estimate (sfttrain.memory, with the same inputs the trainer gives it) and
the measured peak RSS the first optimizer step added to the process (Linux: /proc/self/clear_refs
resets VmHWM just before the step; VmHWM after it is the step's peak). glibc's mmap threshold is
fixed and the heap trimmed before the step, so the number is the step's live memory, the same from
run to run, not what the allocator happened to keep from building the model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _glibc() -> object | None:
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None  # not glibc: the measurement then includes whatever the allocator keeps


def _fix_mmap_threshold() -> None:
    """Allocations over 128 KiB come from mmap and go back to the OS when freed (glibc's default
    threshold, made fixed: by default it grows after frees and big tensors then reuse heap pages).
    Without it the same small step measured anywhere from 58 to 102 MB; with it, the same to the MB."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _malloc_trim() -> None:
    """Hand the heap's free pages back to the OS, so the pre-step RSS is live memory only."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class PeakOfFirstStep(TrainerCallback):
    def __init__(self) -> None:
        self.base = self.peak = 0

    def on_train_begin(self, args, state, control, **kw):
        import gc

        gc.collect()
        _malloc_trim()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base = _status("VmRSS")

    def on_step_end(self, args, state, control, **kw):
        if not self.peak:
            self.peak = _status("VmHWM") - self.base
        control.should_training_stop = True


def main(spec: dict) -> dict:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sftdata.models import resolve_tokenizer_path
    from sfttrain import train as train_mod
    from sfttrain.config import Config

    _fix_mmap_threshold()
    torch.set_num_threads(int(spec.get("threads", 1)))
    tok = AutoTokenizer.from_pretrained(resolve_tokenizer_path("smollm2-135m-instruct"))
    if spec.get("model") == "demo":
        from sftdata.models import load_model

        model = load_model("smollm2-135m-instruct")
    else:
        torch.manual_seed(0)
        h = spec["hidden"]
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=h,
                intermediate_size=spec.get("intermediate", 2 * h),
                num_hidden_layers=spec["layers"],
                num_attention_heads=spec.get("heads", 4),
                num_key_value_heads=2,
                max_position_embeddings=4096,
                tie_word_embeddings=True,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        )
    if spec.get("attn"):
        model.set_attn_implementation(spec["attn"])
    rows, length = spec["rows"], spec["length"]
    # Rows of two examples each (packed), half of each example trained: a chat-like mask.
    n = rows * 2
    g = torch.Generator().manual_seed(0)
    data = Path(spec["dir"]) / "data.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa"]
    with data.open("w") as f:
        for i in range(n):

            def text(k: int) -> str:
                return " ".join(words[j] for j in torch.randint(0, len(words), (k,), generator=g).tolist())

            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": text(length // 5)},
                            {"role": "assistant", "content": text(length // 5)},
                        ]
                    }
                )
                + "\n"
            )
    cfg = Config(
        model="probe",
        data=(str(data),),
        output_dir=str(Path(spec["dir"]) / "run"),
        max_length=length,
        batch_size=rows,
        max_steps=1,
        save_steps=0,
        lora=spec.get("lora", True),
        gradient_checkpointing=spec.get("gc", False),
        memory_gb=1000.0,
    )
    estimates = {}

    original = train_mod.fit_memory

    def spy(cfg, model, examples, autocast):
        from sfttrain import memory

        n_tokens = sum(len(e.input_ids) for e in examples)
        est = memory.estimate(
            model,
            length=cfg.max_length,
            lora=cfg.lora,
            gradient_checkpointing=cfg.gradient_checkpointing,
            attn_implementation=model.config._attn_implementation,
            activation_bytes=4,
            trained_fraction=sum(e.n_trained for e in examples) / n_tokens,
        )
        estimates["estimate"] = est.peak(cfg.batch_size)
        estimates["tokens_per_row"] = n_tokens / max(1, len(data_rows(examples, cfg)))
        return original(cfg, model, examples, autocast)

    def data_rows(examples, cfg):
        from sfttrain import data as data_mod

        return data_mod.pack_bfd([len(e.input_ids) for e in examples], cfg.max_length)

    train_mod.fit_memory = spy
    probe = PeakOfFirstStep()
    train_mod.train(cfg, model=model, tokenizer=tok, callbacks=[probe], audit=False)
    return {**spec, **estimates, "measured": probe.peak}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
