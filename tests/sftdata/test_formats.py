"""Readers, writers, detection and round trips (sftdata.formats, sftdata.readers)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from sftdata import formats
from sftdata.errors import DataError, UsageError
from sftdata.records import Conversation, Finding, Message, Source

REPO = Path(__file__).resolve().parents[2]
SHARED = (REPO / ".." / "shared" / "data").resolve()
EXAMPLES = REPO / "examples"

# Every data file in ../shared/data/llamafactory, plus the self-instruct seed tasks.
SHARED_FILES = [
    "llamafactory/alpaca_en_demo.json",
    "llamafactory/alpaca_zh_demo.json",
    "llamafactory/c4_demo.jsonl",
    "llamafactory/glaive_toolcall_en_demo.json",
    "llamafactory/identity.json",
    "llamafactory/kto_en_demo.json",
    "llamafactory/reason_tool_use_demo_50.jsonl",
    "llamafactory/v1_sft_demo.jsonl",
    "self_instruct/seed_tasks.jsonl",
]
DETECTED = {  # what detection says for each shared file
    "alpaca_en_demo.json": "alpaca",
    "alpaca_zh_demo.json": "alpaca",
    "c4_demo.jsonl": "text",
    "glaive_toolcall_en_demo.json": "sharegpt",
    "identity.json": "alpaca",
    "kto_en_demo.json": "messages",
    "reason_tool_use_demo_50.jsonl": "typed-blocks",
    "v1_sft_demo.jsonl": "typed-blocks",
    "seed_tasks.jsonl": "self-instruct-seed",
}


# --- helpers ---------------------------------------------------------------------------------


def shared(rel: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present (only on the project's machines)")
    return SHARED / rel


def split_items(items):
    convs = [i for i in items if isinstance(i, Conversation)]
    findings = [i for i in items if isinstance(i, Finding)]
    assert len(convs) + len(findings) == len(items)
    return convs, findings


def read_all(path, fmt=None, **kw):
    return split_items(list(formats.read(str(path), fmt, **kw)))


def content_of(conv: Conversation):
    """What a round trip must keep: messages, tools and meta (id and source name the file)."""
    return conv.messages, conv.tools, conv.meta


def rows_of(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if ".jsonl" in path.name:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def dataset_entry(filename: str):
    """(fmt, columns) from ../shared/data/llamafactory/dataset_info.json for a file, if listed."""
    info = json.loads(shared("llamafactory/dataset_info.json").read_text())
    for name, entry in info.items():
        if entry.get("file_name") == filename:
            _, fmt, columns = formats.read_dataset_info(str(shared("llamafactory/dataset_info.json")), name)
            return fmt, columns
    return None


def file_specs():
    """(relative path, how) for every shared file: by detection, and by dataset_info.json entry
    where it has one."""
    specs = [(rel, "detect") for rel in SHARED_FILES]
    specs += [
        (rel, "dataset_info")
        for rel in SHARED_FILES
        if rel.startswith("llamafactory/")
        and Path(rel).name not in ("v1_sft_demo.jsonl", "reason_tool_use_demo_50.jsonl")
    ]
    return specs


def spec_read_args(rel: str, how: str):
    path = shared(rel)
    if how == "detect":
        return path, None, None
    fmt, columns = dataset_entry(path.name)
    return path, fmt, columns


# --- the shared data: every file, every round trip -----------------------------------------------


def test_shared_file_list_is_complete():
    listed = {Path(rel).name for rel in SHARED_FILES}
    on_disk = {p.name for p in shared("llamafactory").iterdir()} - {"dataset_info.json"}
    assert on_disk <= listed, f"new shared files need round-trip coverage: {sorted(on_disk - listed)}"


@pytest.mark.parametrize("rel", SHARED_FILES)
def test_shared_files_read_cleanly(rel):
    path = shared(rel)
    convs, findings = read_all(path)
    assert formats.detect_file_format(str(path)) == DETECTED[path.name]
    assert findings == []
    assert len(convs) == len(rows_of(path))
    assert convs[0].id == f"{path.name.split('.')[0]}/1"
    assert [c.id.rsplit("/", 1)[1] for c in convs[:3]] == ["1", "2", "3"]


@pytest.mark.parametrize("rel,how", file_specs())
def test_native_round_trip_reproduces_rows(rel, how, tmp_path):
    """read -> write in the same format reproduces the original rows (parsed JSON), and reading
    the output again gives equal conversations."""
    path, fmt, columns = spec_read_args(rel, how)
    convs, findings = read_all(path, fmt, columns=columns)
    assert findings == []
    fmt = fmt or DETECTED[path.name]
    out = tmp_path / path.name
    result = formats.write(convs, str(out), fmt)
    assert result.skipped == [] and result.written == len(convs)
    original, rewritten = rows_of(path), rows_of(out)
    assert len(rewritten) == len(original)
    for i, (a, b) in enumerate(zip(original, rewritten)):
        assert a == b, f"row {i} changed"
    again, findings = read_all(out, fmt, columns=columns)
    assert findings == []
    assert [content_of(c) for c in again] == [content_of(c) for c in convs]


@pytest.mark.parametrize("rel,how", file_specs())
@pytest.mark.parametrize("ext", [".jsonl", ".json.gz", ".parquet"])
def test_round_trip_through_messages(rel, how, ext, tmp_path):
    """read -> messages (JSONL, gzipped JSON array, parquet) -> read gives equal conversations,
    meta included."""
    path, fmt, columns = spec_read_args(rel, how)
    convs, _ = read_all(path, fmt, columns=columns)
    out = tmp_path / f"out{ext}"
    assert formats.write(convs, str(out)).written == len(convs)
    again, findings = read_all(out)
    assert findings == []
    assert formats.detect_file_format(str(out)) == "messages"
    assert [content_of(c) for c in again] == [content_of(c) for c in convs]


def test_parquet_keeps_tool_call_arguments_exactly(tmp_path):
    """Tool-call arguments with different keys per row: Arrow struct unification (what `datasets`
    does to nested columns) would add None-valued keys; our parquet stores JSON text instead."""
    convs = [
        Conversation(
            f"x/{i}",
            (
                Message("user", "q"),
                Message(
                    "assistant", "", tool_calls=({"type": "function", "function": {"name": "f", "arguments": args}},)
                ),
                Message("tool", "{}", tool_call_id="c1"),
                Message("assistant", "done"),
            ),
            Source("x.jsonl", i),
        )
        for i, args in enumerate(
            [{"city": "Paris"}, {"unit": "C", "days": [1, 2], "deep": {"b": 1, "a": None}}, {"z": 1.0, "a": "é"}]
        )
    ]
    out = tmp_path / "tools.parquet"
    formats.write(convs, str(out))
    again, findings = read_all(out)
    assert findings == []
    for a, b in zip(convs, again):
        assert json.dumps(b.messages[1].tool_calls) == json.dumps(a.messages[1].tool_calls)  # key order too
        assert b.messages == a.messages

    # ...and `datasets` itself sees a string column it cannot unify.
    import datasets

    ds = datasets.Dataset.from_parquet(str(out), cache_dir=str(tmp_path / "cache"))
    assert ds.features["messages"].dtype == "string"
    assert json.loads(ds[0]["messages"])[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


def test_parquet_from_datasets_struct_columns_drops_unified_none_keys(tmp_path):
    """A parquet written by `datasets` with struct columns gets None for every key missing in a
    row (name, tool_calls, ...); reading treats those as absent, not as data."""
    import datasets

    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {
            "messages": [
                {"role": "user", "content": "w?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": '{"c": 1}'}}],
                },
                {"role": "tool", "content": "3", "name": "w"},
                {"role": "assistant", "content": "3"},
            ]
        },
    ]
    out = tmp_path / "hf.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(out))
    convs, findings = read_all(out)
    assert findings == []
    assert convs[0].messages == (Message("user", "hi"), Message("assistant", "hello"))
    assert convs[1].messages[1].tool_calls[0]["function"] == {"name": "w", "arguments": '{"c": 1}'}
    assert convs[1].messages[2] == Message("tool", "3", name="w")
    assert convs[0].meta == {} and convs[0].source == Source(str(out), None, 0)


def test_hf_save_to_disk_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"instruction": "a", "input": "", "output": "b"}]).save_to_disk(str(tmp_path / "ds"))
    convs, findings = read_all(tmp_path / "ds")
    assert findings == [] and convs[0].messages == (Message("user", "a"), Message("assistant", "b"))
    assert convs[0].source.row == 0


# --- how each format maps ----------------------------------------------------------------------


def test_detect_format():
    cases = {
        "messages": {"messages": [{"role": "user", "content": "x"}]},
        "typed-blocks": {"messages": [{"role": "user", "content": [{"type": "text", "value": "x"}]}]},
        "sharegpt": {"conversations": [{"from": "human", "value": "x"}]},
        "sharegpt-ranking": {"conversations": [], "chosen": {}, "rejected": {}},
        "alpaca": {"instruction": "x", "input": "", "output": "y"},
        "prompt-completion": {"prompt": "x", "completion": "y"},
        "qa": {"question": "x", "answer": "y"},
        "text": {"text": "x"},
        "text-label": {"text": "x", "label": 1},
        "knowledge": {"entity": "x", "facts": []},
        "preference": {"prompt": "x", "chosen": "y", "rejected": "z"},
        "self-instruct-seed": {"instruction": "x", "instances": []},
    }
    assert sorted(cases) == sorted(formats.FORMATS)
    for fmt, row in cases.items():
        assert formats.detect_format(row) == fmt, fmt
    assert formats.detect_format({"messages": [{"from": "human", "value": "x"}]}) == "sharegpt"
    assert formats.detect_format({"messages": [{"role": "user", "content": "x"}], "label": True}) == "messages"
    assert formats.detect_format({"foo": 1}) is None
    assert formats.detect_format([1]) is None


def native_round_trip(tmp_path, name: str, rows: list[dict], fmt: str | None = None):
    """Write rows, read them, write them back in their own format: returns the conversations
    and asserts the rows come back unchanged."""
    src = tmp_path / name
    write_lines(src, [json.dumps(r) for r in rows])
    convs, findings = read_all(src, fmt)
    assert [f for f in findings if f.severity == "error"] == []
    fmt = fmt or formats.detect_file_format(str(src))
    out = tmp_path / f"out-{name}"
    result = formats.write(convs, str(out), fmt)
    assert result.skipped == []
    assert rows_of(out) == rows
    via = tmp_path / f"via-{name}"
    formats.write(convs, str(via), "messages")
    assert [content_of(c) for c in read_all(via)[0]] == [content_of(c) for c in convs]
    return convs


def test_alpaca_mapping(tmp_path):
    rows = [
        {"instruction": "Translate", "input": "hola", "output": "hello"},
        {"instruction": "Q2", "input": "", "output": "A2", "system": "Be brief.", "history": [["Q1", "A1"]]},
        {"instruction": "line1\nline2", "input": "in", "output": ["best", "worse"]},
        {"instruction": "x", "input": "", "output": ["only"], "system": "", "history": []},
    ]
    convs = native_round_trip(tmp_path, "a.jsonl", rows)
    assert convs[0].messages == (Message("user", "Translate\nhola"), Message("assistant", "hello"))
    assert [m.role for m in convs[1].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert convs[1].messages[0].content == "Be brief."
    assert convs[2].messages[-1].content == "best" and convs[2].meta["output_rest"] == ["worse"]
    assert convs[3].meta["columns"] == {"system": "", "history": []}  # empty columns pass through


def test_sharegpt_mapping(tmp_path):
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "weather?"},
                {"from": "function_call", "value": call},
                {"from": "observation", "value": '{"t": 3}'},
                {"from": "gpt", "value": "3 C"},
            ],
            "system": "sys",
            "tools": '[{"name": "get_weather"}]',
        },
        {
            "conversations": [
                {"from": "system", "value": "inline sys"},
                {"from": "human", "value": "a"},
                {"from": "gpt", "value": "b", "weight": 0},
            ]
        },
    ]
    convs = native_round_trip(tmp_path, "s.jsonl", rows)
    m = convs[0].messages
    assert [x.role for x in m] == ["system", "user", "assistant", "tool", "assistant"]
    assert m[2].content == "" and m[2].tool_calls == (
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
    )
    assert convs[0].tools == ({"name": "get_weather"},)
    assert convs[1].meta["sharegpt"] == {"system_at": "inline"}
    assert convs[1].meta["message_keys"] == {"2": {"weight": 0}}


def test_sharegpt_role_content_tags_round_trip(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "label": False}]
    src = write_lines(tmp_path / "k.jsonl", [json.dumps(r) for r in rows])
    tags = {
        "messages": "messages",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
    }
    convs, _ = read_all(src, "sharegpt", columns=tags)
    assert convs[0].messages == (Message("user", "a"), Message("assistant", "b"))
    formats.write(convs, str(tmp_path / "o.jsonl"), "sharegpt")
    assert rows_of(tmp_path / "o.jsonl") == rows


def test_sharegpt_unknown_role_is_a_finding(tmp_path):
    src = write_lines(
        tmp_path / "s.jsonl",
        [
            json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}),
            json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "narrator", "value": "b"}]}),
            json.dumps(
                {"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "not json"}]}
            ),
        ],
    )
    convs, findings = read_all(src)
    assert len(convs) == 1
    assert [(f.check, f.severity, f.source.line) for f in findings] == [
        ("format.bad-role", "error", 2),
        ("format.parse-error", "error", 3),
    ]
    assert "'narrator'" in findings[0].message and findings[0].example_id == "s/2"


def test_messages_mapping(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "part1 "}, {"type": "text", "text": "part2"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"},
                {"role": "assistant", "content": "42!", "reasoning_content": "think", "train": False, "custom": "kept"},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "id": 7,
        },
    ]
    src = write_lines(tmp_path / "m.jsonl", [json.dumps(r) for r in rows])
    (conv,), findings = read_all(src)
    assert findings == []
    m = conv.messages
    assert m[1].content == "part1 part2"
    assert m[2] == Message("assistant", "", tool_calls=tuple(rows[0]["messages"][2]["tool_calls"]))
    assert m[3] == Message("tool", "42", name="f", tool_call_id="c1")
    assert m[4] == Message("assistant", "42!", reasoning="think", train=False)
    assert conv.meta == {"message_keys": {"4": {"custom": "kept"}}, "columns": {"id": 7}}
    out = tmp_path / "o.jsonl"
    formats.write([conv], str(out))
    row = rows_of(out)[0]
    assert row["id"] == 7 and row["messages"][4]["custom"] == "kept" and "_meta" not in row
    assert [content_of(c) for c in read_all(out)[0]] == [content_of(conv)]


def test_typed_blocks_mapping(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "value": "s"}], "loss_weight": 0.0},
                {"role": "user", "content": [{"type": "text", "value": "u"}], "loss_weight": 0.0},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "reasoning", "value": "r"},
                        {"type": "tool_call", "value": '{"name": "f", "arguments": {"x": 1}}'},
                        {"type": "tool_call", "value": '{"name": "g", "arguments": {}}'},
                    ],
                    "loss_weight": 0.5,
                },
                {"role": "tool", "content": [{"type": "text", "value": "out"}]},
                {"role": "assistant", "content": [{"type": "text", "value": "done"}], "loss_weight": 1.0},
            ],
            "tools": '[{"type": "function", "function": {"name": "f"}}]',
        }
    ]
    (conv,) = native_round_trip(tmp_path, "v1.jsonl", rows)
    m = conv.messages
    assert (m[0].train, m[1].train, m[2].train, m[3].train, m[4].train) == (False, False, True, None, True)
    assert m[2].reasoning == "r" and m[2].content == ""
    assert [c["function"]["name"] for c in m[2].tool_calls] == ["f", "g"]
    assert conv.meta["loss_weights"] == {"2": 0.5}
    assert conv.tools == ({"type": "function", "function": {"name": "f"}},)


def test_prompt_completion_qa_text_label(tmp_path):
    pc = native_round_trip(
        tmp_path,
        "pc.jsonl",
        [
            {"prompt": "2+2=", "completion": "4"},
            {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]},
            {
                "prompt": [{"role": "user", "content": "w?"}],
                "completion": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": {}}}],
                    },
                    {"role": "tool", "content": "3"},
                    {"role": "assistant", "content": "3"},
                ],
            },
        ],
    )
    assert (pc[0].shape, pc[0].meta, pc[1].shape, pc[1].meta) == ("prompt-completion", {}, "chat", {})
    assert pc[2].meta == {"n_prompt": 1}
    qa = native_round_trip(tmp_path, "qa.jsonl", [{"question": "q", "answer": "a"}])
    assert qa[0].messages == (Message("user", "q"), Message("assistant", "a"))
    text = native_round_trip(tmp_path, "t.jsonl", [{"text": "raw text", "source": "web"}])
    assert text[0].messages == (Message("assistant", "raw text"),)
    assert text[0].shape == "text" and text[0].meta == {"columns": {"source": "web"}}
    labels = native_round_trip(tmp_path, "tl.jsonl", [{"text": "great!", "label": 1}, {"text": "meh", "label": "neg"}])
    assert labels[0].messages[1].content == "1" and labels[0].meta["label"] == 1
    assert labels[0].shape == "text-label" and "kind" not in labels[0].meta


def test_knowledge_mapping(tmp_path):
    rows = [{"entity": "France", "facts": [{"fact": "capital", "value": "Paris"}, {"fact": "population", "value": 68}]}]
    (conv,) = native_round_trip(tmp_path, "k.jsonl", rows)
    assert conv.messages == (
        Message("user", "What is the capital of France?"),
        Message("assistant", "Paris"),
        Message("user", "What is the population of France?"),
        Message("assistant", "68"),
    )
    assert conv.meta["entity"] == "France" and conv.meta["facts"] == rows[0]["facts"]


def test_preference_mapping(tmp_path):
    convs = native_round_trip(
        tmp_path,
        "p.jsonl",
        [
            {"prompt": "Capital of Italy?", "chosen": "Rome.", "rejected": "Milan."},
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            },
            {
                "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Go away."}],
            },
        ],
    )
    for conv in convs:
        assert [m.role for m in conv.messages] == ["user", "assistant"]
        assert conv.meta["rejected"][-1]["role"] == "assistant"
    assert [c.meta["preference_form"] for c in convs] == ["string", "conversational", "implicit"]
    assert convs[0].meta["rejected"] == [{"role": "assistant", "content": "Milan."}]
    # LLaMA-Factory alpaca ranking: instruction/input/chosen/rejected (+ system)
    lf = native_round_trip(
        tmp_path,
        "lf.jsonl",
        [{"instruction": "Fix", "input": "teh", "chosen": "the", "rejected": "tea", "system": "s"}],
    )
    assert lf[0].messages == (Message("system", "s"), Message("user", "Fix\nteh"), Message("assistant", "the"))
    # preference -> messages -> preference keeps the rejected answer
    out = tmp_path / "p.messages.jsonl"
    formats.write(convs, str(out))
    formats.write(read_all(out)[0], str(tmp_path / "back.jsonl"), "preference")
    assert rows_of(tmp_path / "back.jsonl") == rows_of(tmp_path / "p.jsonl")


def test_sharegpt_ranking_mapping(tmp_path):
    rows = [
        {
            "conversations": [{"from": "human", "value": "Best fruit?"}],
            "chosen": {"from": "gpt", "value": "Mango."},
            "rejected": {"from": "gpt", "value": "Rocks."},
        }
    ]
    (conv,) = native_round_trip(tmp_path, "r.jsonl", rows)
    assert conv.messages == (Message("user", "Best fruit?"), Message("assistant", "Mango."))
    assert conv.meta["rejected"] == [{"role": "assistant", "content": "Rocks."}]
    formats.write([conv], str(tmp_path / "p.jsonl"), "preference")
    assert rows_of(tmp_path / "p.jsonl") == [
        {
            "prompt": [{"role": "user", "content": "Best fruit?"}],
            "chosen": [{"role": "assistant", "content": "Mango."}],
            "rejected": [{"role": "assistant", "content": "Rocks."}],
        }
    ]


def test_self_instruct_seed_mapping(tmp_path):
    rows = [
        {
            "id": "t1",
            "name": "n",
            "instruction": "Add",
            "instances": [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}],
            "is_classification": False,
        }
    ]
    (conv,) = native_round_trip(tmp_path, "seed.jsonl", rows)
    assert conv.messages == (Message("user", "Add\n1 2"), Message("assistant", "3"))
    assert conv.meta["instances_rest"] == [{"input": "2 2", "output": "4"}]
    assert conv.meta["columns"] == {"id": "t1", "name": "n", "is_classification": False}


# --- bad data: findings with the right place, never a traceback ----------------------------------


def test_bad_jsonl_lines_become_findings_with_line_numbers(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    src = write_lines(
        tmp_path / "bad.jsonl",
        [
            good,  # line 1, record 1
            '{"messages": [{"role": "user", "content": "hi"}',  # 2: broken JSON
            "",  # 3: blank, not a record
            b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',  # 4: invalid UTF-8
            "[1, 2]",  # 5: not an object
            json.dumps({"messages": [{"content": "no role"}]}),  # 6: missing role
            json.dumps({"messages": [{"role": "narrator", "content": "x"}]}),  # 7: bad role
            json.dumps({"messages": [{"role": "user", "content": 5}]}),  # 8: wrong type
            json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),  # 9
            json.dumps({"messages": "not json ["}),  # 10: unparsable messages
            json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}),  # 11
            good,  # 12
        ],
    )
    convs, findings = read_all(src)
    assert [(c.source.line, c.id) for c in convs] == [(1, "bad/1"), (9, "bad/8"), (12, "bad/11")]
    got = [(f.check, f.severity, f.source.line, f.example_id) for f in findings]
    assert got == [
        ("format.parse-error", "error", 2, "bad/2"),
        ("format.parse-error", "error", 4, "bad/3"),
        ("format.parse-error", "error", 5, "bad/4"),
        ("format.missing-field", "error", 6, "bad/5"),
        ("format.bad-role", "error", 7, "bad/6"),
        ("format.wrong-type", "error", 8, "bad/7"),
        ("format.empty-content", "warning", 9, "bad/8"),
        ("format.parse-error", "error", 10, "bad/9"),
        ("format.unsupported-content", "error", 11, "bad/10"),
    ]
    assert "UTF-8" in findings[1].message and "JSON" in findings[0].message
    assert all(f.hint for f in findings)
    assert str(findings[0].source) == f"{src}:2"


def test_bad_json_array_element_reports_its_line(tmp_path):
    src = tmp_path / "arr.json"
    src.write_text(
        '[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "c"},\n'
        '  "just a string",\n  {"instruction": "d", "input": "", "output": "e"},\n'
        '  {"instruction": "f", "output": }\n]\n'
    )
    convs, findings = read_all(src, "alpaca")
    assert [(c.source.line, c.source.row) for c in convs] == [(2, 0), (5, 3)]
    assert [(f.check, f.source.line, f.source.row) for f in findings] == [
        ("format.missing-field", 3, 1),
        ("format.parse-error", 4, 2),
        ("format.parse-error", 6, 4),
    ]
    assert "'output'" in findings[0].message


def test_json_lines_saved_as_json_and_single_object(tmp_path):
    lines = tmp_path / "lines.json"
    write_lines(lines, [json.dumps({"text": "a"}), json.dumps({"text": "b"})])
    convs, findings = read_all(lines)
    assert findings == [] and [c.source.line for c in convs] == [1, 2]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"text": "a"}, indent=2))
    assert len(read_all(one)[0]) == 1


def test_invalid_utf8_in_json_array(tmp_path):
    src = tmp_path / "u.json"
    src.write_bytes(b'[\n{"text": "ok"},\n{"text": "\xff"}\n]')
    convs, findings = read_all(src, "text")
    assert convs == [] and [(f.check, f.source.line) for f in findings] == [("format.parse-error", 3)]


def test_csv_and_gzip(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('instruction,input,output\nfirst,,one\n"multi\nline",x,two\nextra,a,b,c\n\nlast,,"three"\n')
    convs, findings = read_all(csv_path)
    assert [(c.source.line, c.messages[0].content) for c in convs] == [(2, "first"), (3, "multi\nline\nx"), (7, "last")]
    assert [(f.check, f.source.line) for f in findings] == [("format.parse-error", 5)]

    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"question": "q", "answer": "a"}) + "\n{broken\n")
    convs, findings = read_all(gz)
    assert len(convs) == 1 and [(f.check, f.source.line) for f in findings] == [("format.parse-error", 2)]


def test_conversational_csv_cells_hold_json(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text('messages,tools\n"[{""role"": ""user"", ""content"": ""hi""}]",\n')
    (conv,), findings = read_all(src)
    assert findings == [] and conv.messages == (Message("user", "hi"),) and conv.tools is None


def test_limit_counts_records(tmp_path):
    src = write_lines(tmp_path / "t.jsonl", [json.dumps({"text": str(i)}) for i in range(10)])
    assert len(list(formats.read(str(src), limit=3))) == 3


def test_read_usage_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        formats.read(str(tmp_path / "missing.jsonl"))
    src = write_lines(tmp_path / "x.jsonl", [json.dumps({"foo": 1, "bar": 2})])
    with pytest.raises(UsageError, match="fmt 'alpacca': unknown format.*did you mean 'alpaca'"):
        formats.read(str(src), "alpacca")
    with pytest.raises(DataError) as e:
        formats.read(str(src))
    assert "['bar', 'foo']" in str(e.value) and "sharegpt" in str(e.value) and "--from" in str(e.value)
    # a file with only broken records still reads: every record is a finding
    broken = write_lines(tmp_path / "b.jsonl", ["{", "nope"])
    assert [f.check for f in formats.read(str(broken))] == ["format.parse-error"] * 2


def test_jsonl_reading_is_streamed_in_bounded_memory(tmp_path):
    """Peak memory while reading does not grow with the file: ~0.1 MB here, where holding the
    10,000 conversations would take ~9 MB (and a 1M-row file ~1 GB)."""
    src = tmp_path / "big.jsonl.gz"
    row = json.dumps({"instruction": "Say the number " + "x" * 40, "input": "", "output": "y" * 60})
    with gzip.open(src, "wt", compresslevel=1) as f:
        f.write((row + "\n") * 10_000)
    tracemalloc.start()
    n = 0
    for item in formats.read(str(src)):
        n += isinstance(item, Conversation)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == 10_000
    assert peak < 1_000_000, f"peak {peak / 1e6:.1f} MB: reading is not streamed"


MANGLE_SAMPLES = {
    "messages": {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}],
            },
            {"role": "tool", "content": "r"},
            {"role": "assistant", "content": "x", "train": True},
        ],
        "tools": [{"type": "function"}],
        "_meta": {"columns": {"a": 1}, "rejected": [{"role": "assistant"}]},
    },
    "typed-blocks": {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "u"}], "loss_weight": 0.0},
            {
                "role": "assistant",
                "content": [{"type": "reasoning", "value": "r"}, {"type": "tool_call", "value": '{"name": "f"}'}],
            },
        ],
        "tools": "[]",
    },
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": "a"},
            {"from": "function_call", "value": '{"name": "f"}'},
            {"from": "observation", "value": "o"},
            {"from": "gpt", "value": "b"},
        ],
        "system": "s",
    },
    "sharegpt-ranking": {
        "conversations": [{"from": "human", "value": "a"}],
        "chosen": {"from": "gpt", "value": "b"},
        "rejected": {"from": "gpt", "value": "c"},
    },
    "alpaca": {"instruction": "i", "input": "x", "output": ["a", "b"], "system": "s", "history": [["q", "a"]]},
    "prompt-completion": {
        "prompt": [{"role": "user", "content": "p"}],
        "completion": [{"role": "assistant", "content": "c"}],
    },
    "text-label": {"text": "t", "label": 1},
    "knowledge": {"entity": "e", "facts": [{"fact": "f", "value": "v"}]},
    "preference": {"instruction": "p", "input": "i", "chosen": "c", "rejected": "r"},
    "self-instruct-seed": {"instruction": "i", "instances": [{"input": "a", "output": "b"}, {}]},
}


def mangled(row, junk=(None, 1, True, "", "[", [], {}, [{}], [None])):
    """Copies of `row` with each value (at any depth) replaced by each junk value, or deleted."""

    def paths(obj, at=()):
        yield at
        children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for key, value in children:
            yield from paths(value, at + (key,))

    for at in list(paths(row))[1:]:
        for value in (*junk, "DELETE"):
            copy = json.loads(json.dumps(row))
            parent = copy
            for key in at[:-1]:
                parent = parent[key]
            if value == "DELETE":
                del parent[at[-1]]
            else:
                parent[at[-1]] = value
            yield copy


@pytest.mark.parametrize("fmt", sorted(MANGLE_SAMPLES))
def test_mangled_rows_never_raise_and_survivors_round_trip(fmt, tmp_path):
    """Every value of a valid row replaced by the wrong type, or deleted: reading yields findings
    or conversations (never raises), every writer copes with the survivors, and they survive
    messages -> read."""
    src = write_lines(tmp_path / "m.jsonl", [json.dumps(r) for r in mangled(MANGLE_SAMPLES[fmt])])
    convs, findings = read_all(src, fmt)
    assert convs and findings  # some mangles are harmless, most are not
    assert {f.check for f in findings} <= {
        "format.parse-error",
        "format.missing-field",
        "format.wrong-type",
        "format.bad-role",
        "format.empty-content",
        "format.unsupported-content",
    }
    for out_fmt in formats.WRITE_FORMATS:
        out = tmp_path / ("o.parquet" if out_fmt == "parquet" else f"o-{out_fmt}.jsonl")
        result = formats.write(convs, str(out), out_fmt)
        assert result.written + len(result.skipped) == len(convs)
    formats.write(convs, str(tmp_path / "via.jsonl"))
    assert [content_of(c) for c in read_all(tmp_path / "via.jsonl")[0]] == [content_of(c) for c in convs]


# --- writers ---------------------------------------------------------------------------------------


def tool_conversation() -> Conversation:
    return Conversation(
        "t/1",
        (
            Message("user", "weather?"),
            Message(
                "assistant",
                "",
                tool_calls=({"type": "function", "function": {"name": "w", "arguments": {"c": "Oslo"}}},),
            ),
            Message("tool", "3 C"),
            Message("assistant", "It is 3 C."),
        ),
        Source("t.jsonl", 1),
    )


def test_writers_skip_what_they_cannot_hold(tmp_path):
    plain = Conversation("p/1", (Message("user", "a"), Message("assistant", "b")), Source("p.jsonl", 1))
    thinking = Conversation(
        "r/1", (Message("user", "a"), Message("assistant", "b", reasoning="hmm")), Source("r.jsonl", 4)
    )
    result = formats.write([plain, tool_conversation(), thinking], str(tmp_path / "a.json"), "alpaca")
    assert result.written == 1
    assert [(f.check, f.severity, f.example_id) for f in result.skipped] == [
        ("format.unrepresentable", "error", "t/1"),
        ("format.unrepresentable", "error", "r/1"),
    ]
    assert "tool call" in result.skipped[0].message and "reasoning" in result.skipped[1].message
    assert result.skipped[1].source == Source("r.jsonl", 4)
    assert rows_of(tmp_path / "a.json") == [{"instruction": "a", "input": "", "output": "b"}]

    result = formats.write([tool_conversation(), thinking], str(tmp_path / "s.jsonl"), "sharegpt")
    assert result.written == 1 and "reasoning" in result.skipped[0].message
    assert rows_of(tmp_path / "s.jsonl")[0]["conversations"][1] == {
        "from": "function_call",
        "value": '{"name": "w", "arguments": {"c": "Oslo"}}',
    }

    trained_user = Conversation("u/1", (Message("user", "a", train=True), Message("assistant", "b")), Source("u", 1))
    for fmt in ("alpaca", "sharegpt", "qa"):
        assert "train=True" in formats.write([trained_user], str(tmp_path / f"x-{fmt}.jsonl"), fmt).skipped[0].message
    assert formats.write([plain], str(tmp_path / "k.jsonl"), "knowledge").written == 0
    assert (
        formats.write([plain], str(tmp_path / "pref.jsonl"), "preference").skipped[0].check == "format.unrepresentable"
    )
    assert formats.write([plain], str(tmp_path / "t.jsonl"), "text").written == 0


def test_alpaca_round_trip_via_messages_keeps_the_input_split(tmp_path):
    src = write_lines(tmp_path / "a.jsonl", [json.dumps({"instruction": "a\nb", "input": "c\nd", "output": "e"})])
    convs, _ = read_all(src)
    formats.write(convs, str(tmp_path / "m.jsonl"))
    assert rows_of(tmp_path / "m.jsonl")[0]["_meta"] == {"input": "c\nd"}
    formats.write(read_all(tmp_path / "m.jsonl")[0], str(tmp_path / "back.jsonl"), "alpaca")
    assert rows_of(tmp_path / "back.jsonl") == rows_of(src)


def test_prompt_completion_writer_is_conversational(tmp_path):
    formats.write([tool_conversation()], str(tmp_path / "pc.jsonl"), "prompt-completion")
    (row,) = rows_of(tmp_path / "pc.jsonl")
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "tool"]
    assert row["completion"] == [{"role": "assistant", "content": "It is 3 C."}]


def test_write_usage_errors_and_atomicity(tmp_path):
    plain = Conversation("p/1", (Message("user", "a"), Message("assistant", "b")), Source("p.jsonl", 1))
    with pytest.raises(UsageError, match="unknown extension"):
        formats.write([plain], str(tmp_path / "x.txt"))
    with pytest.raises(UsageError, match="parquet files hold the messages format"):
        formats.write([plain], str(tmp_path / "x.parquet"), "alpaca")
    with pytest.raises(UsageError, match="did you mean 'sharegpt'"):
        formats.write([plain], str(tmp_path / "x.jsonl"), "sharegtp")

    def failing():
        yield plain
        raise RuntimeError("disk on fire")

    out = tmp_path / "never.jsonl"
    with pytest.raises(RuntimeError):
        formats.write(failing(), str(out))
    assert not out.exists() and list(tmp_path.glob(".never*")) == []


def test_json_array_output_is_readable_with_line_numbers(tmp_path):
    convs = [
        Conversation(f"p/{i}", (Message("user", f"q{i}\nmore"), Message("assistant", "b")), Source("p", i))
        for i in range(3)
    ]
    out = tmp_path / "o.json"
    formats.write(convs, str(out), "alpaca")
    again, _ = read_all(out)
    assert [c.source.line for c in again] == [2, 7, 12]
    formats.write([], str(tmp_path / "empty.json"))
    assert rows_of(tmp_path / "empty.json") == []


# --- dataset_info.json ---------------------------------------------------------------------------


def test_read_dataset_info_maps_entries(tmp_path):
    info = {
        "plain": {"file_name": "plain.json"},
        "tools": {
            "file_name": "t.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "tools": "tools"},
        },
        "kto": {
            "file_name": "k.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": {"role_tag": "role", "content_tag": "content"},
        },
        "dpo": {
            "file_name": "d.json",
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "orca": {
            "hf_hub_url": "Intel/orca_dpo_pairs",
            "ranking": True,
            "columns": {"prompt": "question", "chosen": "chosen", "rejected": "rejected", "system": "system"},
        },
        "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
        "renamed": {"file_name": "r.jsonl", "columns": {"prompt": "question", "response": "answer"}},
        "ms_only": {"ms_hub_url": "x/y"},
    }
    path = tmp_path / "dataset_info.json"
    path.write_text(json.dumps(info))
    get = lambda name: formats.read_dataset_info(str(path), name)  # noqa: E731
    assert get("plain") == (str(tmp_path / "plain.json"), "alpaca", {})
    assert get("tools")[1] == "sharegpt"
    assert get("kto")[1:] == (
        "sharegpt",
        {"messages": "messages", "kto_tag": "label", "role_tag": "role", "content_tag": "content"},
    )
    assert get("dpo")[1] == "sharegpt-ranking"
    assert get("orca")[:2] == ("Intel/orca_dpo_pairs", "preference")
    assert get("c4")[1] == "text"
    with pytest.raises(UsageError, match="did you mean 'plain'"):
        get("plian")
    with pytest.raises(UsageError, match="neither file_name nor hf_hub_url"):
        get("ms_only")
    # a renamed-columns alpaca entry reads through its mapping
    write_lines(tmp_path / "r.jsonl", [json.dumps({"question": "q", "answer": "a"})])
    file, fmt, columns = get("renamed")
    (conv,), _ = read_all(file, fmt, columns=columns)
    assert conv.messages == (Message("user", "q"), Message("assistant", "a"))


def test_shared_dataset_info_entries():
    info = str(shared("llamafactory/dataset_info.json"))
    path, fmt, columns = formats.read_dataset_info(info, "glaive_toolcall_en_demo")
    assert Path(path).name == "glaive_toolcall_en_demo.json" and fmt == "sharegpt"
    convs, findings = read_all(path, fmt, columns=columns)
    assert findings == [] and len(convs) == 300
    assert any(m.tool_calls for c in convs for m in c.messages)


# --- the bundled examples and the import contract --------------------------------------------------


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("alpaca.json", "alpaca"),
        ("sharegpt.jsonl", "sharegpt"),
        ("messages.jsonl", "messages"),
        ("prompt_completion.jsonl", "prompt-completion"),
        ("knowledge.jsonl", "knowledge"),
        ("preference.jsonl", "preference"),
    ],
)
def test_examples_read_cleanly(name, fmt, tmp_path):
    path = EXAMPLES / name
    assert formats.detect_file_format(str(path)) == fmt
    convs, findings = read_all(path)
    assert findings == [] and 8 <= len(convs) <= 20
    for conv in convs:
        for m in conv.messages:
            if m.role == "assistant":
                assert len(m.content.split()) <= 40, f"{conv.id}: keep example answers short"
    out = tmp_path / ("o" + "".join(path.suffixes))
    formats.write(convs, str(out), fmt)
    assert rows_of(out) == rows_of(path)


def test_examples_cover_the_demo_cases():
    convs, _ = read_all(EXAMPLES / "messages.jsonl")
    assert [m.role for m in convs[1].messages] == ["user", "assistant", "user", "assistant"]  # the demo's row 2
    assert any(c.tools and any(m.tool_calls for m in c.messages) for c in convs)
    assert any(c.messages[0].role == "system" for c in convs)
    sharegpt, _ = read_all(EXAMPLES / "sharegpt.jsonl")
    assert any(m.role == "tool" for c in sharegpt for m in c.messages)
    assert any(m.tool_calls for c in sharegpt for m in c.messages)


def test_import_does_not_pull_torch():
    code = (
        "import sys, sftdata.formats, sftdata.cli.convert; "
        "bad = [m for m in ('torch', 'transformers', 'datasets', 'pyarrow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shape_is_a_field_not_meta_and_round_trips_through_messages(tmp_path):
    """Conversation.shape (how a row was shaped) changes tokenization, so it is a typed field; the
    messages format still stores it as `_meta.kind`, so files written before and after are alike."""
    src = write_lines(tmp_path / "t.jsonl", [json.dumps({"text": "raw text"})])
    first = [c for c in formats.read(str(src), "text") if isinstance(c, Conversation)]
    assert first[0].shape == "text" and "kind" not in first[0].meta
    out = tmp_path / "m.jsonl"
    formats.write(first, str(out))
    assert json.loads(out.read_text().splitlines()[0])["_meta"] == {"kind": "text"}
    again = [c for c in formats.read(str(out)) if isinstance(c, Conversation)]
    assert again[0].shape == "text" and again[0].meta == {} and again[0].messages == first[0].messages
    hand = write_lines(
        tmp_path / "h.jsonl",
        [json.dumps({"messages": [{"role": "user", "content": "x"}], "_meta": {"kind": "something-else"}})],
    )
    (odd,) = [c for c in formats.read(str(hand)) if isinstance(c, Conversation)]
    assert odd.shape == "chat" and odd.meta == {"kind": "something-else"}  # unknown: kept, not obeyed


def test_empty_content_warning_only_for_blank_messages():
    """format.empty-content for a message that is empty or only whitespace (Unicode whitespace
    too), not for one that merely starts with whitespace, nor for a tool-call turn."""
    from sftdata.formats import _content_warnings
    from sftdata.records import Conversation, Message, Source

    msgs = (
        Message("user", " starts with a space"),
        Message("assistant", "\u3000\n\t "),
        Message("user", ""),
        Message("assistant", "", tool_calls=({"function": {"name": "f", "arguments": "{}"}},)),
        Message("user", "\nx"),
        Message("assistant", "ok"),
    )
    conv = Conversation("f/1", msgs, Source("f", 1))
    got = [f.message for f in _content_warnings(conv)]
    assert got == ["message 1 (assistant) has empty content", "message 2 (user) has empty content"]
    assert _content_warnings(Conversation("f/2", msgs[:1] + msgs[4:], Source("f", 2))) == []
