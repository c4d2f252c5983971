"""sftdata.records: the data model every reader returns and every writer takes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from sftdata.records import SHAPES, Conversation, Finding, Message, Source, Tokenized, make_id, replace


def test_message_dict_has_our_extras_only_when_set():
    assert Message("user", "hi").to_dict() == {"role": "user", "content": "hi"}
    m = Message("assistant", "", tool_calls=({"function": {"name": "f"}},), reasoning="think", train=False)
    assert m.to_dict() == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f"}}],
        "reasoning_content": "think",
        "train": False,
    }


def test_source_names_the_place():
    assert str(Source("a.jsonl", 3)) == "a.jsonl:3" and str(Source("a.parquet", row=7)) == "a.parquet[7]"
    assert Source("a.parquet", row=7).to_dict() == {"file": "a.parquet", "line": None, "row": 7}
    assert str(Source("hub/ds")) == "hub/ds"


def test_make_id_is_the_file_stem_and_record_number():
    assert make_id("data/train.jsonl.gz", 12) == "train/12"
    assert make_id("C:\\data\\x.parquet", 1) == "x/1"


def test_records_are_frozen_and_meta_does_not_count_for_equality():
    a = Conversation("x/1", (Message("user", "hi"),), Source("x.jsonl", 1), meta={"columns": {"k": 1}})
    b = Conversation("x/1", (Message("user", "hi"),), Source("x.jsonl", 1))
    assert a == b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.id = "y"  # type: ignore[misc]
    assert replace(a, id="y").id == "y" and a.message_dicts() == [{"role": "user", "content": "hi"}]


def test_finding_dict_and_location():
    f = Finding("tokens.double-bos", "warning", "two BOS", "strip one", "x/1", Source("x.jsonl", 1), {"n": 2})
    assert f.to_dict() == {
        "check": "tokens.double-bos",
        "severity": "warning",
        "example_id": "x/1",
        "source": {"file": "x.jsonl", "line": 1},
        "message": "two BOS",
        "hint": "strip one",
        "data": {"n": 2},
    }
    assert f.location() == "x.jsonl:1" and Finding("a.b", "info", "m", "h", "x/1").location() == "x/1"
    t = Tokenized("x/1", (1, 2), (False, True), (-1, 0), False, 1)
    assert t.findings == () and t.n_tokens_full == 0


def test_records_is_stdlib_only():
    code = "import sys, sftdata.records, sftdata.errors, sftdata.catalogue; print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'transformers', 'torch', 'pyarrow')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shape_is_a_typed_field_that_counts_for_equality():
    chat = Conversation("x/1", (Message("assistant", "text"),), Source("x.jsonl", 1))
    text = replace(chat, shape="text")
    assert chat.shape == "chat" and text.shape in SHAPES and chat != text
