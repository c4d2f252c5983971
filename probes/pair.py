"""The two models a probe compares: the base (before this SFT) and the SFT model.

`--sft` takes a model spec (local HF dir, hub id, built-in alias), a merged model directory, or an
`sfttrain` run directory. For a run directory with a LoRA adapter (RUN/train/adapter/, its base in
RUN/train/config.yaml) one copy of the weights serves both sides: the base side runs inside peft's
`disable_adapter()`. The run directory is read as files; sfttrain is never imported (DESIGN.md §1).
torch is imported only inside the loaders.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftdata.errors import SftlabError, UsageError
from sftdata.models import quiet_peft

log = logging.getLogger(__name__)


class PairError(UsageError):
    """A model argument that cannot be used (exit 2); the message names the flag and what to try."""


@dataclass
class Pair:
    sft_model: Any  # a PeftModel when `adapter`, else a plain causal LM
    sft_tokenizer: Any
    base_model: Any  # the same object as sft_model when `adapter`
    base_tokenizer: Any
    adapter: bool  # base side = sft_model with its adapter disabled
    base_name: str
    sft_name: str

    @contextlib.contextmanager
    def base(self) -> Iterator[Any]:
        """The base model, ready to score (the adapter switched off for the block when shared)."""
        if self.adapter:
            with self.sft_model.disable_adapter():
                yield self.sft_model
        else:
            yield self.base_model


def require_chat_template(tokenizer: Any, flag: str = "--sft") -> None:
    """The SFT side is asked in its chat template: without one there is no prompt to ask it in."""
    if not getattr(tokenizer, "chat_template", None):
        raise PairError(
            f"{flag}: its tokenizer has no chat template, so there is no chat prompt to ask it in; point "
            f"{flag} at the SFT model's own directory or run directory (tokenizer_config.json or "
            "chat_template.jinja holds the template)"
        )


def with_sft_template(pair: Pair) -> Pair:
    """`pair`, its base tokenizer carrying the SFT tokenizer's chat template when it has none of its
    own (a pretrained base): where both models are asked the same conversation, the base is asked
    in the SFT model's format."""
    require_chat_template(pair.sft_tokenizer)
    if getattr(pair.base_tokenizer, "chat_template", None):
        return pair
    import copy
    import dataclasses

    base_tokenizer = copy.copy(pair.base_tokenizer)  # shallow: the vocabulary is shared, not changed
    base_tokenizer.chat_template = pair.sft_tokenizer.chat_template
    log.info("the base tokenizer has no chat template: the base model is asked in the SFT model's")
    return dataclasses.replace(pair, base_tokenizer=base_tokenizer)


@dataclass(frozen=True)
class RunDir:
    path: Path
    base: str  # the run's base model spec
    weights: Path  # train/adapter (LoRA) or train/model (full fine-tuning)
    lora: bool


def read_run_dir(path: str | os.PathLike[str]) -> RunDir | None:
    """An `sfttrain run` directory's model files, or None when `path` is not a run directory."""
    p = Path(os.path.expanduser(str(path)))
    cfg_path = p / "train" / "config.yaml"
    if not cfg_path.is_file():
        return None
    import yaml

    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PairError(f"--sft {path}: {cfg_path} is not valid YAML ({e}); is the run directory intact?") from e
    if not isinstance(cfg, dict) or not cfg.get("model"):
        raise PairError(f"--sft {path}: {cfg_path} names no base model (key 'model')")
    lora = bool(cfg.get("lora", True))
    weights = p / "train" / ("adapter" if lora else "model")
    if not weights.is_dir():
        raise PairError(
            f"--sft {path}: {weights} not found: the run did not finish; resume it with "
            f"`sfttrain run --resume --output-dir {path}` or pass a model directory"
        )
    return RunDir(p, str(cfg["model"]), weights, lora)


def _models() -> Any:
    from sftdata import models

    return models


def _load(spec: str, flag: str, dtype: Any, device: str) -> tuple[Any, Any]:
    models = _models()
    try:
        tok = models.load_tokenizer(spec)
        model = models.load_model(spec, dtype=dtype, device=device)
    except SftlabError as e:  # a bad model spec: named by this command's flag
        raise PairError(e.describe(flag) if e.param == "model" else str(e).replace("--model", flag, 1)) from e
    return model.eval(), tok


def same_model(a: str, b: str) -> bool:
    models = _models()
    ra, rb = models.resolve_model_path(os.path.expanduser(a)), models.resolve_model_path(os.path.expanduser(b))
    return os.path.realpath(ra) == os.path.realpath(rb) if os.path.exists(ra) and os.path.exists(rb) else ra == rb


def load_pair(base: str | None, sft: str) -> Pair:
    """Load both sides for `--base` / `--sft` (see the module docstring)."""
    from probes.scoring import pick_device

    device, dtype = pick_device()
    run = read_run_dir(sft)
    if run is None:
        if base is None:
            raise PairError(
                f"--base is required when --sft {sft!r} is not an sfttrain run directory "
                "(a run directory names its base model in train/config.yaml)"
            )
        sft_model, sft_tok = _load(sft, "--sft", dtype, device)
        base_model, base_tok = _load(base, "--base", dtype, device)
        return Pair(sft_model, sft_tok, base_model, base_tok, False, base, sft)
    from transformers import AutoTokenizer

    sft_tok = AutoTokenizer.from_pretrained(str(run.weights))
    base = base or run.base
    if not run.lora:
        sft_model, _ = _load(str(run.weights), "--sft", dtype, device)
        base_model, base_tok = _load(base, "--base", dtype, device)
        return Pair(sft_model, sft_tok, base_model, base_tok, False, base, str(run.path))
    from peft import PeftModel

    base_model, base_tok = _load(run.base, "--sft (the run's base model)", dtype, device)
    if len(sft_tok) > base_model.get_input_embeddings().weight.shape[0]:
        base_model.resize_token_embeddings(len(sft_tok))
    with quiet_peft():
        sft_model = PeftModel.from_pretrained(base_model, str(run.weights)).eval()
    if same_model(base, run.base):
        return Pair(sft_model, sft_tok, sft_model, base_tok, True, base, str(run.path))
    log.warning("--base %s is not the run's base model %s: loading it as a second model", base, run.base)
    other, other_tok = _load(base, "--base", dtype, device)
    return Pair(sft_model, sft_tok, other, other_tok, False, base, str(run.path))


def pair_from_models(base_model: Any, sft_model: Any, tokenizer: Any, sft_tokenizer: Any = None) -> Pair:
    """A Pair of in-process models (Python API and tests). Pass the same PeftModel twice to toggle
    its adapter for the base side."""
    adapter = base_model is sft_model and hasattr(sft_model, "disable_adapter")
    return Pair(sft_model, sft_tokenizer or tokenizer, base_model, tokenizer, adapter, "base", "sft")
