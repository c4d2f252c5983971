"""NEFTune (Jain et al., 2023) as the paper's own training code does it.

Each token embedding of example i gets noise Uniform(-1, 1) * alpha / sqrt(L_i * d), where L_i is
the true length of example i (its non-padding tokens) and d the embedding width; padding gets no
noise. The HF implementations scale by the padded or packed *row* length instead (transformers
issue #34659), which shrinks the noise of a short example in a long row by sqrt(L_i / row length).

Here L_i comes from the batch itself: a forward pre-hook on the model reads `attention_mask`
(padded batches) and `position_ids` (padding-free packed rows, where each example's positions
restart at 0) and stashes, for every token, the length of the example it belongs to; a forward
hook on the input embeddings then adds the noise, in training mode only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def token_lengths(
    shape: tuple[int, int],
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    device: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a [B, T] batch: (length of the example each token belongs to, whether the token is real).

    Examples are rows, or, when `position_ids` are given, the runs that start where the position
    is 0 (padding-free packing). Padding is where `attention_mask` is 0 or, with position ids, a
    one-token run: TRL's convention pads position ids with 0, and a one-token example has nothing
    to train on (sfttrain.data never keeps one)."""
    b, t = shape
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"NEFTune needs a 2-D attention mask (batch, tokens), got shape {tuple(attention_mask.shape)}")
    valid = (
        attention_mask.to(device).bool()
        if attention_mask is not None
        else torch.ones(b, t, dtype=torch.bool, device=device)
    )
    if position_ids is None:
        segment = torch.zeros(b, t, dtype=torch.long, device=device)
    else:
        pos = position_ids.to(device).expand(b, t)
        segment = ((pos == 0).long().cumsum(1) - 1).clamp(min=0)
    segment = segment + torch.arange(b, device=device).unsqueeze(1) * t  # unique across rows
    if position_ids is not None:
        valid = valid & (torch.bincount(segment.flatten(), minlength=b * t)[segment] > 1)
    counts = torch.bincount(segment[valid], minlength=b * t)
    return counts[segment], valid


def noise_like(embeds: torch.Tensor, lengths: torch.Tensor, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """Uniform(-1, 1) * alpha / sqrt(L * d) per token, zero where not valid (drawn in fp32)."""
    d = embeds.size(-1)
    scale = alpha / torch.sqrt(lengths.clamp(min=1).float() * d) * valid.float()
    noise = torch.empty(embeds.shape, dtype=torch.float32, device=embeds.device).uniform_(-1, 1)
    return (noise * scale.unsqueeze(-1)).to(embeds.dtype)


@dataclass(frozen=True)
class Handles:
    """The two hook handles; `remove()` uninstalls NEFTune."""

    pre: Any
    post: Any

    def remove(self) -> None:
        self.pre.remove()
        self.post.remove()


def install(model: torch.nn.Module, alpha: float) -> Handles:
    """Add NEFTune to `model` (a transformers or peft causal LM). Noise only while training."""
    stash: dict[str, Any] = {}

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        stash["attention_mask"] = kwargs.get("attention_mask")
        stash["position_ids"] = kwargs.get("position_ids")

    def post_hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or alpha == 0:
            return None
        b, t = output.shape[:2]
        mask, pos = stash.pop("attention_mask", None), stash.pop("position_ids", None)
        for name, x in (("attention_mask", mask), ("position_ids", pos)):
            if x is not None and x.shape[-1] != t:
                raise ValueError(f"NEFTune: {name} has {x.shape[-1]} positions but the embeddings {t}")
        lengths, valid = token_lengths((b, t), attention_mask=mask, position_ids=pos, device=output.device)
        return output + noise_like(output, lengths, valid, alpha)

    pre = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    post = model.get_input_embeddings().register_forward_hook(post_hook)
    return Handles(pre, post)
