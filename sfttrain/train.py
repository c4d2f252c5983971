"""Train on exactly what was audited: the gate, the model, TRL's SFTTrainer, and what it writes.

    train(cfg) -> Result
      1. gate       sftdata's audit on the same files, tokenizer, policy and max_length; error-level
                    findings refuse the run (GateRefused) unless force=True
      2. data       sfttrain.data: sftdata's tokens and masks -> input_ids/labels (+ packing)
      3. model      fp32 weights on CPU; on a GPU bf16 weights for LoRA, fp32 + bf16 autocast for full
                    fine-tuning; new special tokens resized in and trained; wrapped with peft LoRA
      4. train      TRL SFTTrainer, dataset preparation skipped; TRL's collator for padded batches,
                    data.PackedCollator for packed rows; NEFTune hooks; Ctrl-C -> checkpoint, exit 130
      5. outputs    RUN/train/{config.yaml, metrics.jsonl, example_loss.parquet, adapter/ or model/,
                    checkpoints/} and the manifest

Nothing here subclasses SFTTrainer: the trainer is configured, and what it does not do is added
with TrainerCallbacks and module hooks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from sftdata import rundir
from sftdata.errors import UsageError
from sftdata.records import Finding
from sfttrain import config as config_mod
from sfttrain import data, neftune
from sfttrain.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    run: Path
    train: Path
    config: Path
    metrics: Path
    example_loss: Path
    adapter: Path
    model: Path
    checkpoints: Path


def paths(run_dir: str | os.PathLike[str]) -> Paths:
    run = Path(run_dir)
    t = run / "train"
    return Paths(run, t, t / "config.yaml", t / "metrics.jsonl", t / "example_loss.parquet", t / "adapter",
                 t / "model", t / "checkpoints")


@dataclass(frozen=True)
class Result:
    run_dir: Path
    interrupted: bool
    global_step: int
    n_examples: int
    n_skipped: int
    losses: tuple[float, ...]  # the logged training losses, in order


class GateRefused(Exception):
    """The audit found error-level problems; `findings` are those errors."""

    def __init__(self, findings: Sequence[Finding]):
        super().__init__(f"the audit found {len(findings)} error-level problem(s)")
        self.findings = list(findings)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------------------------
# 1. gate


def gate(cfg: Config, tokenizer: Any, *, force: bool) -> None:
    """Run the audit (written to RUN/audit/ by the main process); refuse on errors unless forced."""
    from sftdata.audit import run_audit

    result = run_audit(list(cfg.data), tokenizer, max_length=cfg.max_length, policy=cfg.policy,
                       run_dir=str(cfg.output_dir) if is_main_process() else None)
    errors = [f for f in result.findings if f.severity == "error"]
    if not errors:
        return
    if not force:
        raise GateRefused(errors)
    log.warning("training despite %d error-level audit finding(s) (--force); examples that cannot be "
                "tokenized or have no trained tokens are skipped", len(errors))


# --------------------------------------------------------------------------------------------
# 3. model


def precision(cfg: Config) -> tuple[torch.dtype, str | None]:
    """(dtype the weights are loaded in, autocast mode 'bf16'/'fp16' or None)."""
    name = cfg.dtype
    if name == "auto":
        name = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp32":
        return torch.float32, None
    half = torch.bfloat16 if name == "bf16" else torch.float16
    # LoRA: frozen base weights in half precision (peft keeps the adapter in fp32). Full fine-tuning:
    # fp32 master weights, half-precision autocast.
    return (half if cfg.lora else torch.float32), name


def prepare_tokenizer(tokenizer: Any, cfg: Config) -> list[int]:
    """Apply `chat_template` and `new_special_tokens`; return the ids of tokens that were added."""
    if cfg.chat_template:
        p = Path(cfg.chat_template)
        if not p.is_file():
            raise UsageError(f"chat_template: no such file {str(p)!r} (expected a .jinja chat template)")
        tokenizer.chat_template = p.read_text(encoding="utf-8")
    new = [t for t in cfg.new_special_tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    return [tokenizer.convert_tokens_to_ids(t) for t in new]


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def lora_config(cfg: Config, model: torch.nn.Module, new_ids: list[int]) -> Any:
    from peft import LoraConfig

    targets: Any = list(cfg.lora_target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    trainable_tokens = None
    if new_ids:
        # Train only the new rows. TRL's fused LM head reads `lm_head.weight`, which peft's
        # trainable-tokens wrapper returns with the trained rows merged in, so the output side
        # learns them too (a tied head is tied by peft; an untied one is listed here).
        embed = model.get_input_embeddings()
        trainable_tokens = {module_name(model, embed): new_ids}
        head = model.get_output_embeddings()
        if head is not None and head.weight is not embed.weight:
            trainable_tokens[module_name(model, head)] = new_ids
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM", trainable_token_indices=trainable_tokens)


def prepare_model(model: torch.nn.Module, tokenizer: Any, cfg: Config, new_ids: list[int]) -> torch.nn.Module:
    """Resize the embeddings for new tokens (new rows start near the mean embedding) and, for
    LoRA, wrap the model with peft."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # (padded vocabularies, e.g. Qwen's, are larger)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not cfg.lora:
        return model
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(cfg, model, new_ids))
    head = model.get_base_model().get_output_embeddings()
    if new_ids and head is not None and not hasattr(head, "bias"):
        # peft's trainable-tokens wrapper exposes `.weight` (with the new rows merged in) but not
        # `.bias`, which TRL's fused LM head reads; the wrapped head has no bias.
        head.bias = None
    return model


# --------------------------------------------------------------------------------------------
# 4. train: callbacks


class Metrics(TrainerCallback):
    """Counts the tokens of every training micro-batch (a forward pre-hook on the model) and
    writes one metrics.jsonl row per log: loss, lr, grad norm, tokens/s, trained tokens per step."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.tokens = 0
        self.trained = 0
        self.t0 = time.perf_counter()
        self.step0 = 0
        self.start = time.perf_counter()

    def count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not module.training or kwargs.get("input_ids") is None:
            return
        ids, labels = kwargs["input_ids"], kwargs.get("labels")
        _, real = neftune.token_lengths(tuple(ids.shape), attention_mask=kwargs.get("attention_mask"),
                                        position_ids=kwargs.get("position_ids"), device=ids.device)
        self.tokens += real.sum()
        if labels is not None:
            self.trained += (labels[..., 1:] != data.IGNORE).sum()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.path.is_file():  # resuming: keep the rows up to the checkpoint
            for line in self.path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if row.get("step", 0) <= state.global_step:
                    self.rows.append(row)
        self.t0 = self.start = time.perf_counter()
        self.step0 = state.global_step
        self.tokens = self.trained = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not logs or "loss" not in logs:
            return
        counts = torch.tensor([float(self.tokens), float(self.trained)], device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        tokens, trained = (int(x) for x in counts.tolist())
        now = time.perf_counter()
        steps = max(1, state.global_step - self.step0)
        row = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": tokens,
            "trained_tokens": trained,
            "trained_tokens_per_step": trained / steps,
            "tokens_per_s": tokens / max(now - self.t0, 1e-9),
            "elapsed_s": round(now - self.start, 3),
        }
        for key in ("entropy", "mean_token_accuracy"):
            if key in logs:
                row[key] = logs[key]
        self.rows.append(row)
        self.tokens = self.trained = 0
        self.t0, self.step0 = now, state.global_step
        if state.is_world_process_zero:
            rundir.write_jsonl(self.path, self.rows)


class Interrupt(TrainerCallback):
    """Ctrl-C: finish the current step, save a checkpoint, stop. (A second Ctrl-C aborts at once.)"""

    def __init__(self) -> None:
        self.requested = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        flag = self.requested
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([1.0 if flag else 0.0], device=args.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        if flag:
            self.requested = True
            log.warning("interrupted: saving a checkpoint at step %d", state.global_step)
            control.should_save = True
            control.should_training_stop = True


class ProgressBar(TrainerCallback):
    """A tqdm bar on stderr with the loss and ETA, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, file=sys.stderr,
                            desc="sfttrain", unit="step", dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def sigint_to(interrupt: Interrupt) -> Iterator[None]:
    """While training, the first Ctrl-C asks for a checkpoint-and-stop; the second aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if interrupt.requested:
            raise KeyboardInterrupt
        interrupt.requested = True
        log.warning("Ctrl-C: finishing this step and saving a checkpoint (press Ctrl-C again to abort now)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------------
# 4. train: the trainer


def sft_config(cfg: Config, p: Paths, autocast: str | None) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(p.checkpoints),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=autocast == "bf16",
        fp16=autocast == "fp16",
        # No accelerator: say so, so that torchrun on CPU runs DDP over gloo instead of N independent runs.
        use_cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=cfg.save_total_limit,
        report_to=[],
        # The dataset is ready: sftdata's input_ids and labels (and seq_lengths when packed).
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,  # already truncated by sftdata (and reported by the audit)
        packing=False,  # rows are already packed (data.pack_bfd) and collated by data.PackedCollator
    )


def latest_checkpoint(p: Paths) -> Path | None:
    found = [(int(d.name.rsplit("-", 1)[-1]), d) for d in p.checkpoints.glob("checkpoint-*")
             if d.is_dir() and d.name.rsplit("-", 1)[-1].isdigit() and (d / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def train(cfg: Config, *, force: bool = False, resume: bool = False, model: Any = None, tokenizer: Any = None,
          callbacks: Sequence[TrainerCallback] = (), audit: bool = True) -> Result:
    """Train per `cfg`. `model`/`tokenizer` may be passed in-process (tests); otherwise loaded from cfg.model."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    from sftdata.models import load_model, load_tokenizer

    config_mod.check_required(cfg)
    p = paths(cfg.output_dir)
    checkpoint = latest_checkpoint(p)
    if resume and checkpoint is None:
        raise UsageError(f"--resume: no checkpoint in {p.checkpoints}; start without --resume")
    if not resume and checkpoint is not None:
        raise UsageError(f"{p.checkpoints} already holds checkpoints; pass --resume to continue that run, "
                         f"or choose a new --output-dir")

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    new_ids = prepare_tokenizer(tokenizer, cfg)
    if audit:
        gate(cfg, tokenizer, force=force)
    examples, skipped = data.load_examples(data.read_conversations(cfg.data), tokenizer,
                                           policy=cfg.policy, max_length=cfg.max_length)
    for s in skipped[:5]:
        log.warning("skipped %s (%s): %s", s.example_id, s.source, s.reason)
    if not examples:
        raise UsageError(f"no trainable examples in {', '.join(cfg.data)} ({len(skipped)} skipped); "
                         f"`sftdata audit` shows why")
    log.info("%d training examples, %d skipped", len(examples), len(skipped))
    if is_main_process():
        with rundir.atomic_open(p.config) as f:
            f.write(config_mod.to_yaml(cfg))

    weights_dtype, autocast = precision(cfg)
    set_seed(cfg.seed)
    if model is None:
        model = load_model(cfg.model, dtype=weights_dtype)
        if cfg.attn_implementation:
            try:
                model.set_attn_implementation(cfg.attn_implementation)
            except (ValueError, ImportError) as e:
                raise UsageError(f"attn_implementation {cfg.attn_implementation!r}: {str(e).splitlines()[0]}") from e
    model = prepare_model(model, tokenizer, cfg, new_ids)
    dataset = data.to_dataset(examples, packing=cfg.packing, max_length=cfg.max_length)

    metrics = Metrics(p.metrics)
    interrupt = Interrupt()
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, p, autocast),
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=data.PackedCollator(tokenizer.pad_token_id) if cfg.packing else None,  # None: TRL's, padded
        callbacks=[metrics, interrupt, ProgressBar(), *callbacks],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # it prints logs on stdout; results only go there
    trainer.model.register_forward_pre_hook(metrics.count, with_kwargs=True)
    if cfg.neftune_alpha:
        neftune.install(trainer.model, cfg.neftune_alpha)

    with sigint_to(interrupt):
        trainer.train(resume_from_checkpoint=str(checkpoint) if resume else None)
    losses = tuple(r["loss"] for r in metrics.rows)
    if interrupt.requested:
        return Result(p.run, True, trainer.state.global_step, len(examples), len(skipped), losses)

    save_final(trainer, p.adapter if cfg.lora else p.model)
    losses_by_example = score_examples(trainer, examples, batch_size=cfg.batch_size)
    if trainer.is_world_process_zero():
        write_example_loss(p.example_loss, examples, losses_by_example)
        rundir.update_manifest(p.run, "train", command=[sys.argv[0].rsplit("/", 1)[-1], *sys.argv[1:]],
                               config=config_mod.to_dict(cfg), inputs=cfg.data)
    trainer.accelerator.wait_for_everyone()
    return Result(p.run, False, trainer.state.global_step, len(examples), len(skipped), losses)


# --------------------------------------------------------------------------------------------
# 5. outputs


def save_final(trainer: Any, dst: Path) -> None:
    """Save the adapter (or full model) with its tokenizer, atomically: into a temporary
    directory, then renamed over `dst`."""
    tmp = dst.parent / f".{dst.name}.tmp"
    if trainer.is_world_process_zero() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # every rank takes part (FSDP gathers the weights)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        old = dst.parent / f".{dst.name}.old"
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)


def score_examples(trainer: Any, examples: Sequence[data.Example], *, batch_size: int) -> dict[int, float]:
    """Mean loss over each example's trained tokens with the final weights (no dropout, no noise).
    Work is split across processes; every process runs the same number of batches (FSDP needs it)."""
    acc = trainer.accelerator
    model = trainer.model
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    mine = order[acc.process_index::acc.num_processes]
    n_batches = math.ceil(len(order) / acc.num_processes / batch_size)
    pad_id = trainer.processing_class.pad_token_id
    was_training = model.training
    model.eval()
    out: list[tuple[int, float]] = []
    with torch.no_grad(), acc.autocast():
        for b in range(n_batches):
            idx = mine[b * batch_size:(b + 1) * batch_size] or mine[-1:] or order[:1]
            width = max(len(examples[i].input_ids) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            labels = torch.full((len(idx), width), data.IGNORE, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(examples[i].input_ids)
                ids[r, :n] = torch.from_numpy(examples[i].input_ids)
                labels[r, :n] = torch.from_numpy(examples[i].labels)
                mask[r, :n] = 1
            res = model(input_ids=ids.to(acc.device), attention_mask=mask.to(acc.device),
                        labels=labels.to(acc.device), fused_lm_head=True)
            nll = -(res.log_probs.float() * res.label_mask).sum(1)
            count = res.label_mask.sum(1)
            for r, i in enumerate(idx):
                c = int(count[r])
                out.append((i, float(nll[r]) / c if c else float("nan")))
    model.train(was_training)
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        out = gather_object(out)
    return dict(out)


def write_example_loss(path: Path, examples: Sequence[data.Example], losses: dict[int, float]) -> None:
    import pyarrow as pa

    table = pa.table({
        "example_id": [e.example_id for e in examples],
        "source": [e.source for e in examples],
        "n_tokens": [len(e.input_ids) for e in examples],
        "n_trained": [e.n_trained for e in examples],
        "loss": [losses.get(i, float("nan")) for i in range(len(examples))],
    })
    rundir.write_parquet(path, table)
