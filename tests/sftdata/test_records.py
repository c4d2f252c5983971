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


def test_quick_init_builds_what_the_dataclass_init_builds():
    """Records get a faster `__init__` (`records.quick_init`): for every record class, positional
    and keyword arguments, defaults and default factories give exactly the instance dataclasses'
    own `__init__` gives (same fields, fresh default dicts), and the instance stays frozen."""
    import dataclasses

    from sftdata import records
    from sftdata.readers import RawRecord

    src = records.Source("a.jsonl", 3)
    msg = records.Message("user", "hi")
    cases = {
        records.Message: [("user", "hi"), ("assistant", "x", ({"id": 1},), "n", "c1", "r", True)],
        records.Source: [("f",), ("f", 2), ("f", None, 7)],
        records.Conversation: [("id", (msg,), src), ("id", (msg,), src, ({"t": 1},), {"k": 1}, "text")],
        records.Finding: [("c", "error", "m", "h"), ("c", "warning", "m", "h", "id", src, {"d": 1})],
        RawRecord: [(1, src), (2, src, {"x": 1}, None), (3, src, None, "bad")],
    }
    for cls, arg_sets in cases.items():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        names = [f.name for f in dataclasses.fields(cls)]
        for args in arg_sets:
            for call in (args, dict(zip(names, args))):
                quick = cls(*call) if isinstance(call, tuple) else cls(**call)
                slow = object.__new__(cls)
                if isinstance(call, tuple):
                    cls._dataclass_init(slow, *call)
                else:
                    cls._dataclass_init(slow, **call)
                assert vars(quick) == vars(slow) and list(vars(quick)) == list(vars(slow)), (cls, call)
                with pytest.raises(dataclasses.FrozenInstanceError):
                    quick.__setattr__(names[0], None)
    first, second = records.Conversation("a", (msg,), src), records.Conversation("b", (msg,), src)
    assert first.meta == {} and first.meta is not second.meta  # a fresh dict each time
    with pytest.raises(TypeError):
        records.Message("user")  # a required field is still required
