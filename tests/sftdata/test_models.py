"""sftdata.models: model specs to tokenizers, weights and config directories (offline)."""

from __future__ import annotations

import json

import pytest

from sftdata import models
from sftdata.errors import UsageError


def test_tokenizer_of_takes_a_tokenizer_or_a_spec(sft_tokenizer):
    assert models.tokenizer_of(sft_tokenizer) == (sft_tokenizer, None)
    tok, spec = models.tokenizer_of(models.DEMO_MODEL)
    assert spec == models.DEMO_MODEL and tok.vocab_size == sft_tokenizer.vocab_size
    with pytest.raises(UsageError, match="fast tokenizer") as e:
        models.tokenizer_of(42)
    assert e.value.param == "model"


def test_errors_name_the_parameter_the_value_and_the_next_step(tmp_path):
    with pytest.raises(UsageError) as e:
        models.load_tokenizer(str(tmp_path / "no" / "such"))
    assert (e.value.param, e.value.value) == ("model", str(tmp_path / "no" / "such"))
    assert "no such directory" in str(e.value) and "sftdata models" in str(e.value)
    assert e.value.describe("--model").startswith("--model '")


def test_directories_and_context_length(tmp_path, sft_tokenizer):
    assert models.context_length(None) is None and models.context_length(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert models.context_length(str(tmp_path)) == 8192
    assert models.config_dir(str(tmp_path), sft_tokenizer) == str(tmp_path)
    assert models.weights_dir(str(tmp_path), sft_tokenizer) is None and not models.has_weights(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert models.has_weights(str(tmp_path)) and models.weights_dir(str(tmp_path), sft_tokenizer) == str(tmp_path)


def test_alias_state_of_the_demo_model(sft_tokenizer):
    """The demo tokenizer is loaded (sft_tokenizer), so the alias's package and cache are there."""
    state = models.alias_state(models.ALIASES[models.DEMO_MODEL])
    assert state["alias"] == models.DEMO_MODEL and state["gguf"].endswith(".gguf") and state["tokenizer_cached"]
    assert state["cache_dir"].startswith(str(models.cache_root()))
