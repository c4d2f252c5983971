"""The fixtures of the pytest plugin (sftdata.pytest_plugin registers them): for testing your own SFT data pipelines.

    def test_my_answers_are_trained(sft_tokenizer, make_conversation):
        conv = make_conversation([("user", "Hi"), ("assistant", "Hello!")])
        tok = sftdata.masks.tokenize(conv, sft_tokenizer)
        assert tok.n_trained > 0

Fixtures:
- `sft_tokenizer` (session): the demo tokenizer (SmolLM2-135M-Instruct, ChatML), offline.
- `tiny_causal_lm` (session): a random-init 2-layer Llama on the demo tokenizer, built in-process
  (fast; for testing collators, training loops and scoring code). Needs torch.
- `make_conversation`: factory `make_conversation(turns, *, id=None, tools=None, file="test.jsonl", line=1, shape="chat")`
  where turns are `(role, content)` pairs, dicts in OpenAI message shape, or Message objects.
- `sftdata_audit`: run the audit on your files and assert on it (see sftdata.testing.audit_fixture).
"""

from __future__ import annotations

from typing import Any

import pytest

from sftdata.records import Conversation, Message, Source, make_id


@pytest.fixture(scope="session")
def sft_tokenizer() -> Any:
    from sftdata.models import DEMO_MODEL, load_tokenizer

    return load_tokenizer(DEMO_MODEL)


def build_tiny_causal_lm(tokenizer: Any, *, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Any:
    """A random-init LlamaForCausalLM sized to `tokenizer` (fp32, eval mode off)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_causal_lm(sft_tokenizer: Any) -> Any:
    return build_tiny_causal_lm(sft_tokenizer)


def _message(turn: Any) -> Message:
    if isinstance(turn, Message):
        return turn
    if isinstance(turn, tuple):
        role, content = turn
        return Message(role, content)
    if isinstance(turn, dict):
        calls = turn.get("tool_calls")
        return Message(
            turn["role"],
            turn.get("content") or "",
            tuple(calls) if calls else None,
            turn.get("name"),
            turn.get("tool_call_id"),
            turn.get("reasoning_content"),
            turn.get("train"),
        )
    raise TypeError(f"a turn is a (role, content) pair, a dict or a Message, not {type(turn).__name__}")


def new_conversation(
    turns: list[Any],
    *,
    id: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    file: str = "test.jsonl",
    line: int = 1,
    meta: dict[str, Any] | None = None,
    shape: str = "chat",
) -> Conversation:
    return Conversation(
        id or make_id(file, line),
        tuple(_message(t) for t in turns),
        Source(file, line),
        tuple(tools) if tools else None,
        dict(meta or {}),
        shape,
    )


@pytest.fixture
def make_conversation() -> Any:
    return new_conversation
