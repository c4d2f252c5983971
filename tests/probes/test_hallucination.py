"""The hallucination probe on tiny models where the answer is known by construction."""

from __future__ import annotations

import json

import pytest

import probes
from probes import facts

pytest.importorskip("torch")


def test_identical_models_never_flip(fact_models, suite_file):
    base, _, tok = fact_models
    report = probes.hallucination(base, base, str(suite_file), tokenizer=tok)
    s = report.summary
    assert s["items"] == 22 and s["base_known"] == 22
    assert s["flips"] == 0 and s["recoveries"] == 0 and s["mcnemar_p"] == 1.0
    assert not report.flagged and report.findings == []
    for r in report.records:  # same weights: the base and control sides score the same prompt identically
        assert r["base"]["scores"] == r["control"]["scores"]


def test_model_preferring_a_distractor_flips_in_that_relation(fact_models, suite_file, tmp_path):
    base, sft, tok = fact_models
    report = probes.hallucination(base, sft, str(suite_file), tokenizer=tok, run_dir=tmp_path / "run")
    s = report.summary
    assert report.flagged
    assert s["by_relation"]["r1"]["flips"] == 12 and s["by_relation"]["r1"]["flagged"]
    assert s["by_relation"]["r2"]["flips"] == 0 and not s["by_relation"]["r2"]["flagged"]
    assert s["flagged_relations"] == ["r1"]
    assert s["flips_knowledge"] == 12  # the control prompt loses it too: the bias is prompt-independent
    assert s["mcnemar_p"] == pytest.approx(2 / 2**12)
    assert [f.check for f in report.findings] == ["probes.narrow-hallucination"] * 12
    assert {f.example_id for f in report.findings} == {f"r1/{i}" for i in range(12)}
    # files: one record per item, the summary key, the manifest stage
    rows = [json.loads(x) for x in (tmp_path / "run/probes/hallucination.jsonl").read_text().splitlines()]
    assert len(rows) == 22 and rows[0]["source"] == {"file": str(suite_file), "line": 1}
    flipped = [r for r in rows if r["flip"]]
    assert {r["relation"] for r in flipped} == {"r1"}
    assert flipped[0]["sft"]["predicted"] in ("zebra", "violin", "pirate", "rocket")
    assert flipped[0]["base"]["rank"] == 1 and flipped[0]["sft"]["rank"] > 1
    summary = json.loads((tmp_path / "run/probes/summary.json").read_text())
    assert summary["hallucination"]["flagged"] is True
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert "probes.hallucination" in manifest["stages"]


def test_reverse_direction_is_recovery_not_flip(fact_models, suite_file):
    base, sft, tok = fact_models
    report = probes.hallucination(sft, base, str(suite_file), tokenizer=tok)
    assert report.summary["recoveries"] == 12 and report.summary["flips"] == 0 and not report.flagged


def test_generation_is_reported_next_to_likelihood(fact_models, suite_file):
    base, sft, tok = fact_models
    report = probes.hallucination(base, sft, str(suite_file), tokenizer=tok, method="both", limit=2)
    g = report.summary["generate"]
    assert g["items"] == 4
    r1 = [r for r in report.records if r["relation"] == "r1"]
    for r in r1:
        assert isinstance(r["sft"]["generated"], str) and r["sft"]["generated_correct"] is False
        assert r["base"]["generated_correct"] == facts.is_correct(r["base"]["generated"], _item(r))


def _item(r):
    from probes.suite import Item
    from sftdata.records import Source

    return Item(
        r["id"], r["relation"], r["question"], r["gold"], tuple(r["aliases"]), tuple(r["distractors"]), Source("x", 1)
    )


def test_normalized_matching():
    it = _item(
        {"id": "a", "relation": "r", "question": "q", "gold": "New Delhi", "aliases": ["Delhi"], "distractors": ["x"]}
    )
    assert facts.is_correct("The capital is New Delhi.", it)
    assert facts.is_correct("delhi", it)
    assert not facts.is_correct("Delhiite food", it)


def test_a_margin_that_rounds_to_zero_is_decided_on_its_sign():
    """Margins are written rounded to 4 decimals; the decisions (predicted, known, lost) use the
    unrounded value, so a side that predicts gold is never counted as having lost it."""
    from probes.facts import _lost, _side
    from probes.suite import Item
    from sftdata.records import Source

    item = Item("r/1", "r", "Q?", "gold", (), ("other",), Source("s.jsonl", 1), None)
    ahead = _side(item, [-1.00002, -1.00005], tie=0.1)
    assert ahead["margin"] == 0.0 and ahead["predicted"] == "gold" and not _lost(ahead)
    behind = _side(item, [-1.00005, -1.00002], tie=0.1)
    assert behind["margin"] == 0.0 and behind["predicted"] == "other" and _lost(behind)
