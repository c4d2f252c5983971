"""The one training config: a frozen dataclass whose fields carry their help text.

Precedence (DESIGN.md §5): defaults < the saved run config (with --resume) < CONFIG.yaml < flags.
Every field is also a flag (`max_length` -> `--max-length`, booleans get `--no-...`). Unknown keys
and wrong types are UsageErrors (exit 2) that name the key and suggest the nearest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftdata.errors import UsageError
from sftdata.records import POLICIES

DTYPES = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr")
MIN_LR_RATE = 0.1  # cosine_with_min_lr decays to this share of the peak learning rate


def scheduler_kwargs(name: str) -> dict[str, Any]:
    """The extra arguments a schedule needs (transformers' cosine_with_min_lr requires a floor)."""
    return {"min_lr_rate": MIN_LR_RATE} if name == "cosine_with_min_lr" else {}


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Config:
    # what to train on
    model: str = _f("", "base model: a local HF directory, a hub id, or a built-in alias (`sftdata models`)")
    data: tuple[str, ...] = _f((), "training data files (any format `sftdata convert` reads; detected per file)")
    output_dir: str = _f("", "run directory; training writes RUN/train/ (and the audit RUN/audit/)")
    policy: str = _f(
        "assistant",
        "which tokens are trained: assistant (all assistant turns), last (last assistant "
        "turn), all; a message's own `train` flag overrides",
        choices=POLICIES,
    )
    max_length: int = _f(1024, "tokens per example; longer examples are truncated (the audit reports them)")
    chat_template: str | None = _f(None, "path to a .jinja chat template replacing the tokenizer's own (base models)")
    new_special_tokens: tuple[str, ...] = _f(
        (),
        "special tokens to add to the tokenizer; the embedding is resized "
        "and the new rows are trained (also under LoRA)",
    )
    # how to train
    lora: bool = _f(True, "train a LoRA adapter (peft); --no-lora = full fine-tuning")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: float = _f(32, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA input")
    lora_target_modules: tuple[str, ...] = _f(
        ("all-linear",), "module names LoRA wraps; `all-linear` = every linear layer except the output head"
    )
    packing: bool = _f(
        True,
        "padding-free packing: examples are packed best-fit-decreasing into rows of "
        "max_length tokens without padding or cross-example attention",
    )
    neftune_alpha: float = _f(
        0.0,
        "NEFTune noise alpha (0 = off; the paper uses 5-15): uniform noise scaled "
        "by alpha/sqrt(L*d) with L each example's true length",
    )
    epochs: float = _f(1.0, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "optimizer steps to run; -1 = derive from epochs")
    batch_size: int = _f(8, "rows per device per step (with packing: packed rows of up to max_length tokens)")
    gradient_accumulation_steps: int = _f(1, "micro-batches accumulated into one optimizer step")
    learning_rate: float = _f(2e-4, "peak learning rate (2e-4 suits LoRA; use ~2e-5 for full fine-tuning)")
    lr_scheduler: str = _f(
        "linear",
        f"learning-rate schedule after warmup (cosine_with_min_lr: cosine down to {MIN_LR_RATE:g} x the peak)",
        choices=SCHEDULERS,
    )
    warmup_steps: float = _f(0.0, "warmup steps; a value below 1 is a fraction of all steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~20-30% slower")
    dtype: str = _f("auto", "auto = bf16 on a GPU that supports it, else fp32; or bf16, fp16, fp32", choices=DTYPES)
    memory_gb: float = _f(
        0.0,
        "memory one training step may use, in GiB; 0 = 85% of what is available (RAM "
        "on CPU, free memory on the GPU). A micro-batch estimated above it is split into "
        "smaller ones with more gradient accumulation (same tokens per step)",
    )
    attn_implementation: str | None = _f(
        None, "attention kernel (sdpa, eager, flash_attention_2, ...); None = transformers' default"
    )
    seed: int = _f(42, "seed for LoRA init, data order, dropout and NEFTune noise")
    # what to write
    logging_steps: int = _f(1, "write a metrics.jsonl row every N steps")
    save_steps: int = _f(100, "save a checkpoint every N steps (0 = only on Ctrl-C); --resume continues from the last")
    save_total_limit: int = _f(2, "checkpoints kept (oldest deleted first)")


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)
REQUIRED = ("model", "data", "output_dir")


def _did_you_mean(key: str, options: Any) -> str:
    near = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else ""


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check and convert one value to the field's type; UsageError naming `where` otherwise."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise UsageError(f"{where}: {name} cannot be null")
    if typing.get_origin(base) is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise UsageError(f"{where}: {name} must be a list of strings, got {value!r}")
        out: Any = tuple(items)
    elif base is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {name} must be true or false, got {value!r}")
        out = value
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where}: {name} must be an integer, got {value!r}")
        out = value
    elif base is float:
        if isinstance(value, str):  # YAML reads 2e-4 as a string (YAML 1.1 wants 2.0e-4)
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: {name} must be a number, got {value!r}")
        out = float(value)
    else:
        if not isinstance(value, str):
            raise UsageError(f"{where}: {name} must be a string, got {value!r}")
        out = value
    choices = FIELDS[name].metadata.get("choices")
    if choices and out not in choices:
        raise UsageError(
            f"{where}: {name} must be one of {', '.join(choices)}, got {out!r}{_did_you_mean(str(out), choices)}"
        )
    return out


def from_dict(d: dict[str, Any], *, where: str = "config", base: Config | None = None) -> Config:
    """Overlay `d` on `base` (default: the defaults), rejecting unknown keys and wrong types."""
    if not isinstance(d, dict):
        raise UsageError(f"{where}: expected a mapping of config keys, got {type(d).__name__}")
    changes = {}
    for key, value in d.items():
        if key not in FIELDS:
            raise UsageError(
                f"{where}: unknown key {key!r}{_did_you_mean(str(key), FIELDS)} (`sfttrain run --help` lists every key)"
            )
        changes[key] = _coerce(key, value, where)
    return dataclasses.replace(base or Config(), **changes)


def load_yaml(path: str | Path, base: Config | None = None) -> Config:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} does not exist")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML: {e}") from e
    return from_dict(d, where=str(p), base=base)


def to_dict(cfg: Config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def to_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def check_required(cfg: Config) -> None:
    """The keys without a usable default are set, and numbers are in range (UsageError naming the key)."""
    for name in REQUIRED:
        if not getattr(cfg, name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{name} is required: set `{name}:` in the config file or pass {flag}")
    ranges = [
        ("max_length", cfg.max_length >= 2, "at least 2"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"),
        ("gradient_accumulation_steps", cfg.gradient_accumulation_steps >= 1, "at least 1"),
        ("lora_r", cfg.lora_r >= 1, "at least 1"),
        ("lora_dropout", 0 <= cfg.lora_dropout < 1, "in [0, 1)"),
        ("learning_rate", cfg.learning_rate > 0, "positive"),
        ("epochs", cfg.max_steps > 0 or cfg.epochs > 0, "positive (or set max_steps)"),
        ("warmup_steps", cfg.warmup_steps >= 0, "0 or more"),
        ("neftune_alpha", cfg.neftune_alpha >= 0, "0 (off) or more"),
        ("memory_gb", cfg.memory_gb >= 0, "0 (auto) or more"),
        ("logging_steps", cfg.logging_steps >= 1, "at least 1"),
        ("save_steps", cfg.save_steps >= 0, "0 (only on Ctrl-C) or more"),
        ("save_total_limit", cfg.save_total_limit >= 1, "at least 1"),
    ]
    for name, ok, expected in ranges:
        if not ok:
            raise UsageError(f"{name} must be {expected}, got {getattr(cfg, name)!r}")


def add_flags(p: argparse.ArgumentParser) -> None:
    """One flag per field; defaults are SUPPRESSed so only flags the user gave override."""
    g = p.add_argument_group("config keys (each also settable in CONFIG.yaml)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        hint = _HINTS[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f"{f.metadata['help']} (default: {default!r})".replace("%", "%%")
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_}
        if hint is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(hint) is tuple:
            g.add_argument(flag, nargs="+", metavar=name.upper(), **kw)
        else:
            g.add_argument(
                flag,
                type=hint if hint in (int, float) else str,
                metavar=name.upper(),
                choices=f.metadata.get("choices"),
                **kw,
            )


def resolve(args: argparse.Namespace, base: Config | None = None) -> Config:
    """base (defaults or the saved run config) < args.config (YAML) < flags."""
    cfg = base or Config()
    if getattr(args, "config", None):
        cfg = load_yaml(args.config, base=cfg)
    flags = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    return from_dict(flags, where="flags", base=cfg)
