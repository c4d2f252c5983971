"""Suite rows (probes.suite): what a bad row becomes, and suites made from knowledge records."""

from __future__ import annotations

import json

from probes.suite import from_knowledge, read_suite

GOOD = {"question": "What is the capital of Peru?", "gold": "Lima", "distractors": ["Cusco"], "relation": "capital"}


def _suite(tmp_path, rows):
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_an_empty_completion_prompt_is_a_bad_row_not_a_crash(tmp_path):
    rows = [GOOD, {**GOOD, "completion_prompt": "   "}, {**GOOD, "completion_prompt": ""}]
    items, bad = read_suite(_suite(tmp_path, rows))
    assert len(items) == 1
    assert [f.source.line for f in bad] == [2, 3] and all("completion_prompt" in f.message for f in bad)
    assert all(f.check == "probes.suite-row" for f in bad)


def test_optional_lists_may_be_null(tmp_path):
    items, bad = read_suite(_suite(tmp_path, [{**GOOD, "aliases": None}]))
    assert not bad and items[0].aliases == ()


def test_knowledge_suite_never_uses_a_true_value_as_a_distractor_and_keeps_every_value(tmp_path):
    """An entity with two values of one fact (two official languages): neither is a distractor of
    the other, and both rows survive (distinct ids)."""
    kn = tmp_path / "knowledge.jsonl"
    records = [
        {"entity": "Bel", "facts": [{"fact": "language", "value": "Dutch"}, {"fact": "language", "value": "French"}]},
        {"entity": "Ita", "facts": [{"fact": "language", "value": "Italian"}]},
        {"entity": "Spa", "facts": [{"fact": "language", "value": "Spanish"}]},
    ]
    kn.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, _ = from_knowledge(str(kn), n_distractors=5)
    bel = [r for r in rows if r["question"].endswith("of Bel?")]
    assert {r["gold"] for r in bel} == {"Dutch", "French"}
    for r in bel:
        assert not {"Dutch", "French"} & set(r["distractors"]), r
    assert len({r["id"] for r in rows}) == len(rows) == 4
    items, bad = read_suite(_suite(tmp_path, rows))
    assert len(items) == 4 and not bad
