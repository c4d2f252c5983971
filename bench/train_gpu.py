"""sfttrain vs plain TRL SFTTrainer: tokens/s, peak GPU memory and final loss, side by side.

    python bench/train_gpu.py                # GPU: a ~0.5B Qwen2-architecture model, random weights, bf16
    python bench/train_gpu.py --tiny         # CPU toy size: checks the benchmark runs end to end

Same model (one random init, copied into every run), same data (synthetic chat conversations with a
long-tailed length distribution, tokenized and masked once by sftdata), same LoRA config, same
learning rate, same number of optimizer steps. Runs:

  trl            plain TRL SFTTrainer with its defaults: padded batches of 8 examples, gradient
                 checkpointing on, bf16; given the same pre-tokenized input_ids/labels
  sfttrain       sfttrain's defaults: padding-free best-fit packing into rows of max_length tokens,
                 no gradient checkpointing; as many rows per step as hold TRL's real tokens per step
  sfttrain+gc    the same with gradient checkpointing on (isolates what packing alone buys)

tokens/s counts real (non-padding) tokens, timed after warm-up steps. Final loss is the mean loss
per trained token on the same held-out examples after training (plus the mean of the last logged
training losses). No hub is needed: the tokenizer is the demo model's (pass --tokenizer DIR where
the alias cache is not there), the model is built from a config.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sftdata.models import load_tokenizer  # noqa: E402
from sftdata.records import Conversation, Message, Source  # noqa: E402
from sfttrain import data  # noqa: E402
from sfttrain.config import Config  # noqa: E402

LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.05)
TRL_BATCH = 8  # TRL's (transformers') default per_device_train_batch_size


# --------------------------------------------------------------------------------------------
# data and model


def synthetic_conversations(n: int, seed: int, *, median_words: int, max_words: int) -> list[Conversation]:
    """Chat turns of pseudo-words with a long-tailed (log-normal) length, like real SFT sets."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "fi", "he", "ja"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf
    convs = []
    for i in range(n):
        total = int(min(max_words, max(8, rng.lognormvariate(math.log(median_words), 0.8))))
        n_user = max(3, total // 4)
        user = " ".join(rng.choices(words, weights, k=n_user))
        answer = " ".join(rng.choices(words, weights, k=max(3, total - n_user))) + "."
        convs.append(
            Conversation(
                f"synthetic/{i + 1}",
                (Message("user", f"Continue: {user}"), Message("assistant", answer)),
                Source("synthetic", i + 1),
            )
        )
    return convs


def model_config(tokenizer: Any, tiny: bool) -> Any:
    from transformers import Qwen2Config

    size = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        if tiny
        else dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=4,
        )
    )
    return Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **size,
    )


def fresh_model(config: Any, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Any:
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(config).to(dtype)
    model.load_state_dict(state)
    return model


# --------------------------------------------------------------------------------------------
# measuring


class Meter(TrainerCallback):
    """Counts real tokens per training forward and times the steps after `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.tokens, self.t0, self.t1 = warmup, 0, None, None
        self.losses: list[float] = []
        self.model: Any = None

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.model = model

        def count(module, a, kwargs):
            if module.training and self.t0 is not None:
                mask = kwargs.get("attention_mask")
                self.tokens += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

        model.register_forward_pre_hook(count, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])

    def on_train_end(self, args, state, control, **kw):
        self._sync()
        self.t1 = time.perf_counter()


def heldout_loss(model: Any, examples: list[data.Example], device: str, batch: int = 8) -> float:
    """Mean NLL per trained token, padded batches, no dropout."""
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            width = max(len(e.input_ids) for e in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, e in enumerate(chunk):
                ids[r, : len(e.input_ids)] = torch.from_numpy(e.input_ids)
                labels[r, : len(e.labels)] = torch.from_numpy(e.labels)
                mask[r, : len(e.input_ids)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            target = labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            nll += float(loss)
            count += int((target != -100).sum())
    return nll / count


def summarize(name: str, meter: Meter, device: str, heldout: list[data.Example], timed_steps: int) -> dict[str, Any]:
    seconds = meter.t1 - meter.t0
    return {
        "run": name,
        "tokens_per_s": meter.tokens / seconds,
        "tokens_per_step": meter.tokens / timed_steps,
        "timed_tokens": meter.tokens,
        "timed_seconds": seconds,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "final_train_loss": sum(meter.losses[-5:]) / len(meter.losses[-5:]),
        "heldout_loss": heldout_loss(meter.model, heldout, device),
    }


# --------------------------------------------------------------------------------------------
# the runs


def run_trl(model: Any, tokenizer: Any, examples: list[data.Example], args: argparse.Namespace, out: Path) -> Meter:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    meter = Meter(args.warmup)
    ds = Dataset.from_dict(
        {"input_ids": [list(e.input_ids) for e in examples], "labels": [list(e.labels) for e in examples]}
    )
    cfg = SFTConfig(
        output_dir=str(out),
        max_steps=args.steps,
        learning_rate=args.lr,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=42,
        max_length=args.max_length,
        **({} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}),
    )
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=[meter],
        peft_config=LoraConfig(
            r=LORA["lora_r"],
            lora_alpha=LORA["lora_alpha"],
            lora_dropout=LORA["lora_dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)  # as sfttrain does: keep the output to the results
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return meter


def run_sfttrain(
    model: Any, tokenizer: Any, data_file: Path, rows: int, gc: bool, args: argparse.Namespace, out: Path
) -> Meter:
    from sfttrain.train import train

    meter = Meter(args.warmup)
    cfg = Config(
        model="bench",
        data=(str(data_file),),
        output_dir=str(out),
        max_length=args.max_length,
        batch_size=rows,
        max_steps=args.steps,
        learning_rate=args.lr,
        gradient_checkpointing=gc,
        save_steps=0,
        logging_steps=1,
        seed=42,
        **LORA,
    )
    train(cfg, model=model, tokenizer=tokenizer, callbacks=[meter], audit=False)
    return meter


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy model and data, runs on CPU in a minute or two")
    p.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer directory or alias")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60; tiny 4)")
    p.add_argument("--warmup", type=int, default=None, help="steps not timed (default 5; tiny 1)")
    p.add_argument("--examples", type=int, default=None, help="training examples (default 4000; tiny 100)")
    p.add_argument(
        "--max-length", type=int, default=None, help="tokens per example / packed row (default 1024; tiny 128)"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate, both trainers (random init: a high one makes the loss move within the few steps)",
    )
    p.add_argument("--runs", default="trl,sfttrain,sfttrain+gc", help="comma-separated subset of the runs")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "train_gpu.json"), help="JSON results file")
    args = p.parse_args()
    tiny = args.tiny
    args.steps = args.steps or (4 if tiny else 60)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 5)
    args.examples = args.examples or (100 if tiny else 4000)
    args.max_length = args.max_length or (128 if tiny else 1024)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not tiny:
        sys.exit("no CUDA device: run with --tiny on CPU")

    tokenizer = load_tokenizer(args.tokenizer)
    convs = synthetic_conversations(
        args.examples + 64, seed=0, median_words=20 if tiny else 110, max_words=60 if tiny else 700
    )
    train_convs, heldout_convs = convs[: args.examples], convs[args.examples :]
    examples, _ = data.load_examples(train_convs, tokenizer, policy="assistant", max_length=args.max_length)
    heldout, _ = data.load_examples(heldout_convs, tokenizer, policy="assistant", max_length=args.max_length)
    mean_len = sum(len(e.input_ids) for e in examples) / len(examples)
    rows = max(1, round(TRL_BATCH * mean_len / args.max_length))  # same real tokens per step as TRL

    config = model_config(tokenizer, tiny)
    torch.manual_seed(0)
    from transformers import Qwen2ForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    state = Qwen2ForCausalLM(config).to(dtype).state_dict()
    n_params = sum(v.numel() for k, v in state.items() if k != "lm_head.weight")
    print(
        f"model: Qwen2 architecture, {n_params / 1e6:.0f}M parameters, random init, {dtype}; device: "
        f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}",
        file=sys.stderr,
    )
    print(
        f"data: {len(examples)} examples, mean {mean_len:.0f} tokens (max_length {args.max_length}); "
        f"TRL: {TRL_BATCH} examples/step; sfttrain: {rows} packed rows/step; {args.steps} steps",
        file=sys.stderr,
    )

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_file = tmp_path / "train.jsonl"
        with open(data_file, "w", encoding="utf-8") as f:
            for c in train_convs:
                f.write(json.dumps({"messages": c.message_dicts()}) + "\n")
        for name in args.runs.split(","):
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            model = fresh_model(config, state, dtype)
            if name == "trl":
                meter = run_trl(model, tokenizer, examples, args, tmp_path / name)
            elif name in ("sfttrain", "sfttrain+gc"):
                meter = run_sfttrain(model, tokenizer, data_file, rows, name.endswith("+gc"), args, tmp_path / name)
            else:
                sys.exit(f"unknown run {name!r}: use trl, sfttrain, sfttrain+gc")
            results.append(summarize(name, meter, device, heldout, args.steps - args.warmup))
            print(json.dumps(results[-1]), file=sys.stderr)
            del model, meter

    base = next((r for r in results if r["run"] == "trl"), None)
    print("\n| run | tokens/s | speed-up | real tokens/step | peak GPU mem (GiB) | final train loss | held-out loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(
            f"| {r['run']} | {r['tokens_per_s']:,.0f} | {speed} | {r['tokens_per_step']:,.0f} | {mem} | "
            f"{r['final_train_loss']:.4f} | "
            f"{r['heldout_loss']:.4f} |"
        )
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "tiny": tiny,
        "params_m": round(n_params / 1e6),
        "examples": len(examples),
        "mean_tokens": round(mean_len, 1),
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup": args.warmup,
        "trl_batch": TRL_BATCH,
        "sfttrain_rows": rows,
        "lr": args.lr,
        **LORA,
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "peft")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
