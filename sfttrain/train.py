"""Train on exactly what was audited: the gate, the model, TRL's SFTTrainer, and what it writes.

    train(cfg) -> Result
      1. gate       sftdata's audit on the same files, tokenizer, policy and max_length; error-level
                    findings refuse the run (GateRefused) unless force=True
      2. data       the audit's own RUN/audit/examples.parquet (same tokens and masks by construction;
                    without the audit, sfttrain.data tokenizes through sftdata) -> input_ids/labels
      3. model      fp32 weights on CPU; on a GPU bf16 weights for LoRA, fp32 + bf16 autocast for full
                    fine-tuning; new special tokens resized in and trained; wrapped with peft LoRA
      4. memory     sfttrain.memory: one micro-batch's peak against the memory available; too big ->
                    smaller micro-batch, more accumulation (same tokens per step), or exit 2
      5. train      TRL SFTTrainer, dataset preparation skipped; TRL's collator for padded batches,
                    data.PackedCollator for packed rows (flattened with cu_seq_lens under flash
                    kernels); the LM head only on trained positions; NEFTune hooks; Ctrl-C ->
                    checkpoint, exit 130
      6. outputs    RUN/train/{config.yaml, metrics.jsonl, example_loss.parquet, adapter/ or model/}
                    and the manifest; checkpoints/ only while the run is unfinished

Nothing here subclasses SFTTrainer: the trainer is configured, and what it does not do is added
with TrainerCallbacks and module hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from sftdata.models import quiet_peft
from sftdata.records import Finding
from sfttrain import config as config_mod
from sfttrain import data, memory, neftune
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
    return Paths(
        run,
        t,
        t / "config.yaml",
        t / "metrics.jsonl",
        t / "example_loss.parquet",
        t / "adapter",
        t / "model",
        t / "checkpoints",
    )


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


def gate(cfg: Config, tokenizer: Any, *, force: bool, run_dir: Path) -> Path:
    """Run the audit into `run_dir`/audit/ (RUN itself on the main process); refuse on errors
    unless forced. Returns the audit's examples.parquet, which training then reads."""
    from sftdata.audit import run_audit

    result = run_audit(list(cfg.data), tokenizer, max_length=cfg.max_length, policy=cfg.policy, run_dir=str(run_dir))
    errors = [f for f in result.findings if f.severity == "error"]
    if errors and not force:
        raise GateRefused(errors)
    if errors:
        log.warning(
            "training despite %d error-level audit finding(s) (--force); examples that cannot be "
            "tokenized or have no trained tokens are skipped",
            len(errors),
        )
    return run_dir / "audit" / "examples.parquet"


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
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        trainable_token_indices=trainable_tokens,
    )


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

    with quiet_peft():
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
        _, real = neftune.token_lengths(
            tuple(ids.shape),
            attention_mask=kwargs.get("attention_mask"),
            position_ids=kwargs.get("position_ids"),
            device=ids.device,
        )
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

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                file=sys.stderr,
                desc="sfttrain",
                unit="step",
                dynamic_ncols=True,
            )

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
        lr_scheduler_kwargs=config_mod.scheduler_kwargs(cfg.lr_scheduler),
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
    found = [
        (int(d.name.rsplit("-", 1)[-1]), d)
        for d in p.checkpoints.glob("checkpoint-*")
        if d.is_dir() and d.name.rsplit("-", 1)[-1].isdigit() and (d / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def finished_output(p: Paths) -> Path | None:
    """The adapter/ or model/ of a run that finished (only a finished run saves one), else None."""
    return next((d for d in (p.adapter, p.model) if d.is_dir()), None)


def check_run_dir(p: Paths, *, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a new run); UsageError when the directory says otherwise."""
    done = finished_output(p)
    if done is not None:
        steps = (
            [json.loads(x).get("step") for x in p.metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
            if p.metrics.is_file()
            else []
        )
        at = f" after {steps[-1]} steps" if steps else ""
        if resume:
            raise UsageError(
                f"{p.run} holds a finished run{at} (its weights are in {done}): there is nothing to "
                f"resume. To train further, start a new run from those weights (full fine-tuning: "
                f"--model {p.model}; LoRA: `sfttrain merge {p.run} -o DIR`, then --model DIR)"
            )
        raise UsageError(f"{p.run} already holds a finished run{at}; choose a new --output-dir")
    checkpoint = latest_checkpoint(p)
    if resume and checkpoint is None:
        raise UsageError(f"--resume: no checkpoint in {p.checkpoints}; start without --resume")
    if not resume and checkpoint is not None:
        raise UsageError(
            f"{p.checkpoints} already holds checkpoints; pass --resume to continue that run, "
            f"or choose a new --output-dir"
        )
    return checkpoint


def refuse_data_parallel() -> None:
    """Several GPUs in one process means nn.DataParallel, which TRL refuses and under which the
    NEFTune hooks' per-batch state would be shared by the replicas: ask for a launcher instead."""
    if "WORLD_SIZE" in os.environ or not torch.cuda.is_available():
        return
    n = torch.cuda.device_count()
    if n > 1:
        raise UsageError(
            f"{n} GPUs are visible to one process, which would train with nn.DataParallel (not "
            f"supported: replicas would share NEFTune's hook state and TRL refuses it). Launch one "
            f"process per GPU: `torchrun --nproc_per_node {n} -m sfttrain.cli run ...` or "
            f"`accelerate launch --num_processes {n} -m sfttrain.cli run ...`; or make one GPU "
            f"visible with CUDA_VISIBLE_DEVICES=0"
        )


def is_varlen_kernel(model: Any) -> bool:
    """Whether the model's attention is a flash/varlen kernel (flash_attention_2/3/4, a hub kernel
    registered through transformers' flash wrapper): those need packed rows flattened into one
    sequence with cu_seq_lens, since transformers derives varlen attention from position ids only
    for a batch of one row."""
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = getattr(model.config, "_attn_implementation", None) or ""
    fn = ALL_ATTENTION_FUNCTIONS.get(name, None)
    fn = getattr(fn, "func", fn)  # a functools.partial around the wrapper
    return fn is flash_attention_forward or "flash" in name


def collator(cfg: Config, model: Any, tokenizer: Any) -> Any:
    """Packed rows: [rows, longest row] with position ids (sdpa, eager, flex build the block mask
    from them), or, under a varlen kernel, TRL's padding-free layout: one row with cu_seq_lens_q/k
    and max_length_q/k. Unpacked: None, i.e. TRL's padded collator."""
    if not cfg.packing:
        return None
    if is_varlen_kernel(model):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    return data.PackedCollator(tokenizer.pad_token_id)


@contextlib.contextmanager
def lm_head_on_trained_positions() -> Iterator[None]:
    """TRL's fused LM head projects only the positions that have a label where Triton runs
    (CUDA, XPU) and every position elsewhere (so that Neuron's compiled tile shapes stay fixed).
    On CPU (and MPS) there is nothing to recompile, and the prompt positions of a chat batch are
    often most of it: project only the trained ones there too. The choice is TRL's private
    `_use_triton` test in its fused forward; without it (another TRL) nothing changes."""
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        log.info("this TRL has no _use_triton: the LM head keeps its own choice of positions")
        yield
        return
    trl_utils._use_triton = lambda device: True  # only `compact` in TRL's _fused_forward reads it
    try:
        yield
    finally:
        trl_utils._use_triton = original


def fit_memory(cfg: Config, model: Any, examples: Sequence[data.Example], autocast: str | None) -> Config:
    """Estimate one micro-batch's peak (sfttrain.memory) against the memory available; return cfg
    with a smaller batch_size and more gradient_accumulation_steps (the same rows per optimizer
    step) when it does not fit, or raise UsageError naming the flags when not even one row does."""
    device = next(model.parameters()).device
    if device.type == "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())  # the Trainer moves the model there
    n_tokens = sum(len(e.input_ids) for e in examples)
    length = cfg.max_length if cfg.packing else max(len(e.input_ids) for e in examples)
    half = autocast is not None or next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
    est = memory.estimate(
        model,
        length=length,
        lora=cfg.lora,
        gradient_checkpointing=cfg.gradient_checkpointing,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        activation_bytes=2 if half else 4,
        trained_fraction=sum(e.n_trained for e in examples) / max(1, n_tokens),
    )
    available, where = memory.available_bytes(device)
    plan = memory.plan(
        est,
        batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        available=available,
        where=where,
        limit=memory.limit_from_config(cfg.memory_gb),
    )
    gb = memory.describe_bytes
    if plan is None:
        budget = memory.limit_from_config(cfg.memory_gb) or int((available or 0) * memory.HEADROOM)
        raise UsageError(
            f"one row of {length} tokens needs about {gb(est.peak(1))} to train, more than the {gb(budget)} "
            f"available ({'--memory-gb' if cfg.memory_gb else where}). Lower --max-length, turn on "
            f"--gradient-checkpointing{'' if cfg.lora else ', train a LoRA adapter (--lora)'}"
            f"{', use --dtype bf16' if not half else ''}, or raise --memory-gb if more is free"
        )
    log.info(
        "memory: a micro-batch of %d row(s) x %d tokens is estimated at %s (%s available: %s)",
        plan.batch_size,
        length,
        gb(plan.estimate),
        gb(plan.available) if plan.available else "?",
        plan.where,
    )
    if not plan.changed:
        return cfg
    log.warning(
        "memory: %d rows x %d tokens per micro-batch would need about %s, more than the %s available "
        "(%s): training %d row(s) per micro-batch with gradient_accumulation_steps %d instead (the same "
        "%d rows per optimizer step). Set --batch-size/--gradient-accumulation-steps, "
        "--gradient-checkpointing or --memory-gb to choose otherwise",
        cfg.batch_size,
        length,
        gb(est.peak(cfg.batch_size)),
        gb(plan.available),
        plan.where,
        plan.batch_size,
        plan.gradient_accumulation_steps,
        cfg.batch_size * cfg.gradient_accumulation_steps,
    )
    return dataclasses.replace(
        cfg, batch_size=plan.batch_size, gradient_accumulation_steps=plan.gradient_accumulation_steps
    )


def load_audited_examples(
    cfg: Config, tokenizer: Any, *, force: bool, p: Paths
) -> tuple[list[data.Example], list[data.Skipped]]:
    """The audit gate, then its examples.parquet as training examples: no second read or tokenization.
    Other ranks than the main one audit into a private directory (the same tokens: it is deterministic)."""
    if is_main_process():
        return data.examples_from_parquet(gate(cfg, tokenizer, force=force, run_dir=p.run))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sfttrain-audit-") as tmp:
        return data.examples_from_parquet(gate(cfg, tokenizer, force=force, run_dir=Path(tmp)))


def train(
    cfg: Config,
    *,
    force: bool = False,
    resume: bool = False,
    model: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[TrainerCallback] = (),
    audit: bool = True,
) -> Result:
    """Train per `cfg`. `model`/`tokenizer` may be passed in-process (tests); otherwise loaded from cfg.model.
    `audit=False` skips the gate and tokenizes the data here (the same sftdata path)."""
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    from sftdata.models import load_model, load_tokenizer

    config_mod.check_required(cfg)
    p = paths(cfg.output_dir)
    checkpoint = check_run_dir(p, resume=resume)
    refuse_data_parallel()

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    new_ids = prepare_tokenizer(tokenizer, cfg)
    t0 = time.perf_counter()
    if audit:
        examples, skipped = load_audited_examples(cfg, tokenizer, force=force, p=p)
    else:
        examples, skipped = data.load_examples(
            data.read_conversations(cfg.data), tokenizer, policy=cfg.policy, max_length=cfg.max_length
        )
    for s in skipped[:5]:
        log.warning("skipped %s (%s): %s", s.example_id, s.source, s.reason)
    if not examples:
        raise UsageError(
            f"no trainable examples in {', '.join(cfg.data)} ({len(skipped)} skipped); `sftdata audit` shows why"
        )
    log.info(
        "%d training examples, %d skipped (data ready in %.2f s)", len(examples), len(skipped), time.perf_counter() - t0
    )

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
    asked = cfg
    cfg = fit_memory(cfg, model, examples, autocast)
    if is_main_process():
        with rundir.atomic_open(p.config) as f:
            if cfg != asked:
                f.write(
                    f"# batch_size {asked.batch_size} -> {cfg.batch_size} and gradient_accumulation_steps "
                    f"{asked.gradient_accumulation_steps} -> {cfg.gradient_accumulation_steps}: the memory "
                    f"estimate of one micro-batch did not fit (the same rows per optimizer step)\n"
                )
            f.write(config_mod.to_yaml(cfg))
    dataset = data.to_dataset(examples, packing=cfg.packing, max_length=cfg.max_length)

    metrics = Metrics(p.metrics)
    interrupt = Interrupt()
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, p, autocast),
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator(cfg, model, tokenizer),
        callbacks=[metrics, interrupt, ProgressBar(), *callbacks],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)  # it prints logs on stdout; results only go there
    trainer.model.register_forward_pre_hook(metrics.count, with_kwargs=True)
    if cfg.neftune_alpha:
        neftune.install(trainer.model, cfg.neftune_alpha)

    with sigint_to(interrupt), lm_head_on_trained_positions():
        trainer.train(resume_from_checkpoint=str(checkpoint) if resume else None)
        losses = tuple(r["loss"] for r in metrics.rows)
        if interrupt.requested:
            return Result(p.run, True, trainer.state.global_step, len(examples), len(skipped), losses)
        save_final(trainer, p.adapter if cfg.lora else p.model)
        losses_by_example = score_examples(trainer, examples, batch_size=cfg.batch_size)
    if trainer.is_world_process_zero():
        write_example_loss(p.example_loss, examples, losses_by_example)
        rundir.update_manifest(
            p.run,
            "train",
            command=[sys.argv[0].rsplit("/", 1)[-1], *sys.argv[1:]],
            config=config_mod.to_dict(cfg),
            inputs=cfg.data,
        )
        # A finished run cannot be resumed: the checkpoints (a full fine-tune's hold the weights
        # and two optimizer states, 3x the model) would only take space.
        shutil.rmtree(p.checkpoints, ignore_errors=True)
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
    mine = order[acc.process_index :: acc.num_processes]
    n_batches = math.ceil(len(order) / acc.num_processes / batch_size)
    pad_id = trainer.processing_class.pad_token_id
    was_training = model.training
    model.eval()
    out: list[tuple[int, float]] = []
    with torch.no_grad(), acc.autocast():
        for b in range(n_batches):
            idx = mine[b * batch_size : (b + 1) * batch_size] or mine[-1:] or order[:1]
            width = max(len(examples[i].input_ids) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            labels = torch.full((len(idx), width), data.IGNORE, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(examples[i].input_ids)
                ids[r, :n] = torch.from_numpy(examples[i].input_ids)
                labels[r, :n] = torch.from_numpy(examples[i].labels)
                mask[r, :n] = 1
            res = model(
                input_ids=ids.to(acc.device),
                attention_mask=mask.to(acc.device),
                labels=labels.to(acc.device),
                fused_lm_head=True,
            )
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

    table = pa.table(
        {
            "example_id": [e.example_id for e in examples],
            "source": [e.source for e in examples],
            "n_tokens": [len(e.input_ids) for e in examples],
            "n_trained": [e.n_trained for e in examples],
            "loss": [losses.get(i, float("nan")) for i in range(len(examples))],
        }
    )
    rundir.write_parquet(path, table)
