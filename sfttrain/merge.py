"""`sfttrain merge RUN -o DIR`: fold a run's LoRA adapter into its base model and save a full
Hugging Face model directory (weights + tokenizer), atomically."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sftdata.errors import UsageError
from sfttrain import config as config_mod
from sfttrain.train import paths

log = logging.getLogger(__name__)


def merge(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, dtype: str = "fp32") -> Path:
    import torch
    from transformers import AutoTokenizer

    from sftdata.models import load_model, quiet_peft

    p = paths(run_dir)
    if not p.config.is_file():
        raise UsageError(f"{p.config} not found: {run_dir} is not a finished `sfttrain run` directory")
    cfg = config_mod.load_yaml(p.config)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"-o {out}: the directory exists and is not empty; choose a new one")
    weights = p.adapter if cfg.lora else p.model
    if not weights.is_dir():
        raise UsageError(
            f"{weights} not found: the run did not finish (resume it with `sfttrain run --resume "
            f"--output-dir {run_dir}`)"
        )
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    tokenizer = AutoTokenizer.from_pretrained(str(weights))
    if cfg.lora:
        from peft import PeftModel

        base = load_model(cfg.model, dtype=torch_dtype)
        if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(len(tokenizer))
        with quiet_peft():
            model: Any = PeftModel.from_pretrained(base, str(weights)).merge_and_unload()
    else:
        model = load_model(str(weights), dtype=torch_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("merged %s into %s", weights, out)
    return out
