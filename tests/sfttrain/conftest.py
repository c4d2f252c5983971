"""Fixtures for the sfttrain tests: a small messages file and a tiny random model saved to disk.

The demo tokenizer (`sft_tokenizer`) and the tiny in-process model come from sftdata's pytest plugin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftdata.testing.fixtures import build_tiny_causal_lm

QA = [
    ("What is 2+2?", "4."),
    ("Name a color.", "Blue."),
    ("Say hi.", "Hi!"),
    ("What is the capital of France?", "Paris."),
    ("Give me a synonym for happy.", "Joyful."),
    ("Count to three.", "One, two, three."),
    ("What is water made of?", "Hydrogen and oxygen."),
    ("Translate 'cat' to French.", "Chat."),
]


def conversations(n: int = 24) -> list[dict]:
    """Conversations of varied lengths (1-2 assistant turns, some with a system prompt)."""
    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a + " More detail." * (i % 5)}]
        if i % 3 == 0:
            msgs = [
                {"role": "system", "content": "Be brief."},
                *msgs,
                {"role": "user", "content": "And again?"},
                {"role": "assistant", "content": a},
            ]
        rows.append({"messages": msgs})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", conversations())


@pytest.fixture(scope="session")
def small_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 conversations: enough for several steps, cheap to train an epoch on."""
    return write_jsonl(tmp_path_factory.mktemp("data") / "small.jsonl", conversations(12))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, sft_tokenizer) -> Path:
    """The tiny random Llama on the demo tokenizer, saved as a HF directory (usable as --model)."""
    d = tmp_path_factory.mktemp("tiny-model")
    build_tiny_causal_lm(sft_tokenizer).save_pretrained(d)
    sft_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def tiny_model(sft_tokenizer):
    """A fresh tiny model per test (training wraps and changes it)."""
    return build_tiny_causal_lm(sft_tokenizer)


@pytest.fixture
def chat_rows():
    """`chat_rows(n)`: n varied conversations as messages-format rows."""
    return conversations


@pytest.fixture
def jsonl():
    """`jsonl(path, rows)`: write rows (dicts, or raw strings for broken lines) as JSONL."""
    return write_jsonl
