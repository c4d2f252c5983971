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


def _same(a, b):
    try:
        hashes = hash(a) == hash(b)
    except TypeError:  # a dict inside (tool calls, a Finding's data): unhashable either way
        with pytest.raises(TypeError):
            hash(b)
        hashes = True
    return type(a) is type(b) and a == b and vars(a) == vars(b) and hashes


@pytest.mark.parametrize(
    ("cls", "args", "kwargs"),
    [
        (Message, ("user", "hi"), {}),
        (Message, ("assistant", ""), {"tool_calls": ({"function": {"name": "f"}},), "reasoning": "r", "train": False}),
        (Message, (), {"role": "tool", "content": "x", "name": "n", "tool_call_id": "c1"}),
        (Source, ("f.jsonl", 3), {}),
        (Source, ("f.parquet",), {"row": 7}),
        (Conversation, ("f/1", (Message("user", "a"),), Source("f", 1)), {}),
        (Conversation, ("f/2", (), Source("f", 2), None, {"k": 1}, "text"), {}),
        (Conversation, (), {"id": "f/3", "messages": (), "source": Source("f"), "shape": "knowledge"}),
        (Finding, ("format.parse-error", "error", "m", "h"), {"data": {"x": 1}}),
    ],
)
def test_fast_constructor_builds_what_the_dataclass_init_builds(cls, args, kwargs):
    """records.fast_constructor (the readers' hot paths) gives exactly cls(...): same fields incl.
    the compare=False ones, defaults, a fresh default-factory dict per instance, the same errors
    for an unknown or a missing argument."""
    from sftdata.records import fast_constructor

    fast = fast_constructor(cls)
    a, b = fast(*args, **kwargs), cls(*args, **kwargs)
    assert _same(a, b)
    assert [f.name for f in dataclasses.fields(cls)] == list(vars(a))  # every field, in order
    if cls is Conversation and "meta" not in kwargs and len(args) < 5:
        assert fast(*args, **kwargs).meta is not a.meta  # default_factory: one dict each
    with pytest.raises(TypeError):
        fast(*args, **kwargs, unknown=1)
    with pytest.raises(TypeError):
        cls()
    with pytest.raises(TypeError):
        fast()


def test_fast_constructors_in_records_cover_their_classes():
    from sftdata import readers
    from sftdata.records import fast_constructor, new_conversation, new_message, new_source

    assert _same(new_message("user", "x"), Message("user", "x"))
    assert _same(new_source("f", 2, 1), Source("f", 2, 1))
    c = new_conversation("i", (), Source("f"))
    assert c == Conversation("i", (), Source("f")) and c.meta == {} and c.shape == "chat"
    assert readers._new_raw(1, Source("f", 1), {"a": 1}) == readers.RawRecord(1, Source("f", 1), {"a": 1})

    @dataclasses.dataclass(frozen=True)
    class Post:
        x: int

        def __post_init__(self):
            pass

    @dataclasses.dataclass(frozen=True)
    class Hidden:
        x: int
        y: list = dataclasses.field(init=False, default_factory=list)

    @dataclasses.dataclass(frozen=True)
    class KwOnly:
        x: int = dataclasses.field(default=1, kw_only=True)
        y: int = 2

    for cls in (Post, Hidden, KwOnly, dict):
        with pytest.raises(TypeError):
            fast_constructor(cls)
