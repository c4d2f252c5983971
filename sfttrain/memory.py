"""Will one micro-batch fit? The peak memory of a training step, estimated before the first one.

    estimate(model, cfg, ...) -> Estimate     bytes: fixed (weights, gradients, optimizer states,
                                              framework) + per row of `max_length` tokens
                                              (activations saved for backward, attention, LM head)
    available_bytes(device)  -> (bytes, where)  RAM: MemAvailable or the cgroup limit; GPU: free memory
    plan(estimate, cfg, available) -> Plan    the largest micro-batch that fits, with the gradient
                                              accumulation that keeps the tokens per optimizer step

The per-token constants are measured (tests/sfttrain/memprobe.py, BENCHMARKS.md): on CPU, a Llama layer
saves about 12 x (hidden + intermediate) values per token for backward under LoRA (inputs of each
norm, projection, activation, the fp32 upcasts, LoRA's dropout copies); full fine-tuning saves a
little less per token but adds the weight gradients and AdamW's two states. Attention adds
about 1.5 x heads x T values per token and layer under sdpa with the block mask of packed rows
(2 x under eager, which keeps scores and softmax); flash and flex keep only per-row statistics.
The LM head runs in tiles (TRL's fused head) over the trained positions only, so it costs a
bounded buffer, not batch x length x vocabulary logits.

The estimate is checked against measured peaks (tests/sfttrain/test_memory.py): never below the
measured step peak (an estimate that is low is an out-of-memory kill) and at most 2x it on small
models (1.4-1.9x measured; the fixed overheads dominate there), about 20% high on SmolLM2-135M at
512-1024 tokens (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GiB = 1024**3
ACT_PER_TOKEN_LAYER = 12.0  # values saved per token and layer, in units of (hidden + intermediate); measured
ACT_PER_TOKEN_LAYER_FULL = 10.0  # the same without LoRA's dropout copies and fp32 adapter inputs
ATTN_PER_TOKEN_HEAD = 1.5  # sdpa with a block mask (packed rows) on CPU: values per token, head and key
GC_PER_TOKEN_LAYER = 2.0  # with gradient checkpointing: the layer input (+ its norm), per layer, in units of hidden
HEAD_TILE_COPIES = 6  # the fused head's fp32 tile and its torch temporaries (exp, masked copies)
HEAD_TOKENS, HEAD_VOCAB = 4096, 32768  # TRL's tile: at most 4096 tokens x 32768 vocabulary entries
OVERHEAD = 64 * 2**20  # autograd, allocator and thread buffers
HEADROOM = 0.85  # the share of the available memory a step may plan to use
CPU_SHARE = 0.25  # on CPU a step also stays within this share of the RAM: more rows per micro-batch
#                   do not train faster there (one row of a few hundred tokens keeps the cores busy)


@dataclass(frozen=True)
class Estimate:
    fixed: int  # bytes the step adds whatever the micro-batch (gradients, optimizer states, overhead)
    per_row: int  # bytes per row of `length` tokens (activations, attention, backward)
    head_per_token: int  # bytes of the LM head's tiles per trained position ...
    head_tokens_per_row: float  # ... of which a row has this many, up to HEAD_TOKENS in all
    length: int

    def peak(self, rows: int) -> int:
        head = self.head_per_token * min(HEAD_TOKENS, math.ceil(rows * self.head_tokens_per_row))
        return self.fixed + rows * self.per_row + head


@dataclass(frozen=True)
class Plan:
    batch_size: int
    gradient_accumulation_steps: int
    estimate: int  # bytes at that micro-batch
    available: int
    where: str
    changed: bool


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), or None without one."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - usage)
    return None


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _meminfo_available() -> int | None:
    return _meminfo("MemAvailable")


def _meminfo_total() -> int | None:
    return _meminfo("MemTotal")


def available_bytes(device: Any) -> tuple[int | None, str]:
    """(bytes this process can still allocate, where that number comes from); None when unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {device}"
    if device.type != "cpu":
        return None, f"{device.type} (memory not queried)"
    ram, room, total = _meminfo_available(), _cgroup_room(), _meminfo_total()
    if room is not None and (ram is None or room < ram):
        ram, where = room, "the cgroup memory limit"
    else:
        where = "MemAvailable in /proc/meminfo"
    if ram is not None and total is not None and total * CPU_SHARE < ram * HEADROOM:
        return int(
            total * CPU_SHARE / HEADROOM
        ), f"{CPU_SHARE:.0%} of the RAM (on CPU larger micro-batches are not faster)"
    return ram, where


def _n_params(model: Any) -> tuple[int, int, int]:
    """(all parameter values, trainable values, bytes of the trainable ones)."""
    total = trainable = trainable_bytes = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            trainable_bytes += p.numel() * p.element_size()
    return total, trainable, trainable_bytes


def estimate(
    model: Any,
    *,
    length: int,
    lora: bool,
    gradient_checkpointing: bool,
    attn_implementation: str | None,
    activation_bytes: int,
    trained_fraction: float = 1.0,
) -> Estimate:
    """Peak bytes one training step adds to the loaded model, per row of `length` tokens.

    `activation_bytes`: 2 under bf16/fp16 autocast or half weights, 4 in fp32. `trained_fraction`:
    the share of positions with a label (the fused LM head scores only those)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    h = int(cfg.hidden_size)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * h)
    layers = int(cfg.num_hidden_layers)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    vocab = int(cfg.vocab_size)
    s = activation_bytes
    _, trainable, trainable_bytes = _n_params(model)

    # Activations saved for backward, per token.
    act = (ACT_PER_TOKEN_LAYER if lora else ACT_PER_TOKEN_LAYER_FULL) * (h + inter) * s
    per_token = layers * GC_PER_TOKEN_LAYER * h * s + act if gradient_checkpointing else layers * act
    kernel = attn_implementation or "sdpa"
    attn_layers = 1 if gradient_checkpointing else layers
    # Eager keeps the scores and their softmax, [heads, T, T] each, per layer; sdpa over a masked
    # (packed) row keeps part of that on CPU; flash and flex keep only per-row statistics.
    per_key = 2.0 if kernel == "eager" else 0.0 if ("flash" in kernel or "flex" in kernel) else ATTN_PER_TOKEN_HEAD
    attention = per_key * attn_layers * heads * length * length * s
    # Backward: the gradient of the widest activation (the MLP's) and of the hidden states, per token.
    backward = 4 * (h + inter) * s * length
    per_row = int(per_token * length + attention + backward)

    # The fused LM head: fp32 tiles of at most HEAD_TOKENS x HEAD_VOCAB, over the trained positions.
    head_per_token = HEAD_TILE_COPIES * min(vocab, HEAD_VOCAB) * 4
    # Gradients (fp32) and AdamW's two fp32 states of what is trained; a full fine-tune's fp32
    # gradient accumulation buffer is the gradient itself.
    optimizer = trainable * 4 * 2 + trainable_bytes
    return Estimate(
        fixed=int(OVERHEAD + optimizer),
        per_row=per_row,
        head_per_token=head_per_token,
        head_tokens_per_row=max(1.0, length * trained_fraction),
        length=length,
    )


def plan(
    est: Estimate,
    *,
    batch_size: int,
    gradient_accumulation_steps: int,
    available: int | None,
    where: str,
    limit: int | None = None,
) -> Plan | None:
    """The largest micro-batch that divides batch_size and fits in HEADROOM of the available memory
    (or in `limit` bytes), with the accumulation that keeps batch_size x accumulation rows per
    optimizer step. None when not even one row fits."""
    budget = limit if limit else (int(available * HEADROOM) if available is not None else None)
    if budget is None:
        return Plan(batch_size, gradient_accumulation_steps, est.peak(batch_size), 0, where, False)
    for rows in sorted((d for d in range(1, batch_size + 1) if batch_size % d == 0), reverse=True):
        if est.peak(rows) <= budget:
            return Plan(
                rows,
                gradient_accumulation_steps * (batch_size // rows),
                est.peak(rows),
                budget,
                where if not limit else "--memory-gb",
                rows != batch_size,
            )
    return None


def describe_bytes(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def limit_from_config(memory_gb: float) -> int | None:
    return int(memory_gb * GiB) if memory_gb > 0 else None


def process_rss() -> int:
    """Resident bytes of this process now (0 where /proc is missing)."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0
