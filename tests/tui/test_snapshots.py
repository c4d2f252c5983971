"""Snapshots of the main screens (pytest-textual-snapshot; `pytest --snapshot-update` accepts new
ones). The run directories are the session's real runs (audit + dedup; a 2-step training with its
probes), copied with their timestamps, package versions and model-dependent numbers pinned so the
pictures do not change from one machine or day to the next."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tui import run as rd
from tui.app import RunScreen, SftTui

FIXED = "2026-01-01T00:00:00+00:00"


def pin_manifest(run: Path) -> None:
    path = run / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    m["created"] = m["updated"] = FIXED
    m["packages"] = {"sftlab": "0.1.0"}
    for stage in m["stages"].values():
        stage["finished"] = FIXED
    path.write_text(json.dumps(m), encoding="utf-8")


@pytest.fixture
def snap_run(runs_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    shutil.copytree(runs_base / "data", tmp_path / "data")
    shutil.copytree(runs_base / "runs" / "audit", tmp_path / "runs" / "audit")
    pin_manifest(tmp_path / "runs" / "audit")
    monkeypatch.chdir(tmp_path)
    return "runs/audit"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pin_training(run: Path) -> None:
    """The real 2-step run's files with every number that depends on the machine, the clock or float
    rounding (loss, grad norm, tokens/s, elapsed, per-example loss) replaced by fixed values; the keys,
    steps, token counts and example ids stay as `sfttrain` wrote them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fixed = {
        "loss": (2.5, -0.5),
        "learning_rate": (2e-4, -1e-4),
        "grad_norm": (1.0, 0.25),
        "tokens_per_s": (1000.0, 50.0),
    }
    rows = []
    for k, r in enumerate(read_jsonl(run / "train" / "metrics.jsonl")):
        for key, v in r.items():
            if key in fixed:
                r[key] = fixed[key][0] + fixed[key][1] * k
            elif isinstance(v, float) and key not in ("epoch", "step"):
                r[key] = float(k + 1)
        rows.append(r)
    write_jsonl(run / "train" / "metrics.jsonl", rows)
    path = run / "train" / "example_loss.parquet"
    table = pq.read_table(path)
    losses = pa.array([3.0 - 0.25 * i for i in range(table.num_rows)], type=table.schema.field("loss").type)
    pq.write_table(table.set_column(table.schema.get_field_index("loss"), "loss", losses), path)


FACTS = [
    ("capital", "What is the capital of France?", "Paris", "Lyon"),
    ("capital", "What is the capital of Japan?", "Tokyo", "Osaka"),
    ("author", "Who wrote Hamlet?", "William Shakespeare", "Christopher Marlowe"),
    ("plural", 'What is the plural of "mouse"?', "mice", "mouses"),
    ("element-symbol", "What is the chemical symbol of gold?", "Au", "Ag"),
    ("author", "Who wrote Faust?", "Goethe", "Schiller"),
    ("plural", 'What is the plural of "thesis"?', "theses", "thesises"),
]


def pin_probes(run: Path) -> None:
    """The real probes files (items, relations, example ids as the probes commands wrote them) with the
    tiny random model's scores, answers and statistics replaced by a fixed pattern: flips, recoveries,
    known and unknown items, so the screen shows each kind."""
    real = read_jsonl(run / "probes" / "hallucination.jsonl")
    items = []
    pattern = [(True, False), (True, True), (False, False), (False, True), (True, True)]  # (base, sft) known
    for k, (relation, question, gold, wrong) in enumerate(FACTS):
        # the record as `probes hallucination` writes it, with the fact itself fixed (the built-in
        # fact list is not this test's business)
        item = {**real[k % len(real)], "id": f"{relation}/{k}", "relation": relation, "question": question}
        item.update(gold=gold, aliases=[], distractors=[wrong], source={"file": "builtin", "line": k + 1})
        base_known, sft_known = pattern[k % len(pattern)]
        for side, known in (("base", base_known), ("sft", sft_known), ("control", base_known)):
            item[side] = {
                "rank": 1 if known else 2 + k % 3,
                "margin": 0.5 if known else -0.25,
                "predicted": item["gold"] if known else wrong,
                "scores": {},
                "known": known,
                "lost": not known,
                "generated": None,
                "generated_correct": None,
            }
        item["flip"], item["recovery"] = base_known and not sft_known, sft_known and not base_known
        item["flip_kind"] = "knowledge" if item["flip"] else None
        items.append(item)
    write_jsonl(run / "probes" / "hallucination.jsonl", items)

    def counts(xs: list[dict]) -> dict:
        known = sum(x["base"]["known"] for x in xs)
        flips = sum(x["flip"] for x in xs)
        return {
            "items": len(xs),
            "base_known": known,
            "sft_known": sum(x["sft"]["known"] for x in xs),
            "flips": flips,
            "recoveries": sum(x["recovery"] for x in xs),
            "flip_rate": round(flips / known, 4) if known else 0.0,
        }

    relations = sorted({x["relation"] for x in items})
    summary = {
        "hallucination": {
            **counts(items),
            "flip_rate_ci": [0.1, 0.7],
            "mcnemar_p": 0.25,
            "flagged": True,
            "by_relation": {r: counts([x for x in items if x["relation"] == r]) for r in relations},
        },
        "overfit": {
            "train_examples": 6,
            "heldout_examples": 2,
            "mean_gain_per_token_train": 0.0125,
            "mean_gain_per_token_heldout": 0.005,
            "membership_auc": 0.75,
            "membership_auc_ci": [0.5, 1.0],
            "flagged": True,
        },
    }
    (run / "probes" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    rows = []
    for k, r in enumerate(read_jsonl(run / "probes" / "overfit.jsonl")):
        keep = {key: r[key] for key in ("kind", "example_id", "source", "split", "n_tokens", "text_id") if key in r}
        if r["kind"] == "memorization":
            gain = 0.5 - 0.05 * k
            keep.update(base_logp=-2.0 * (k + 10), sft_logp=-2.0 * (k + 10) + gain, gain=gain)
        elif r["kind"] != "stopping":
            if sum(x["kind"] == r["kind"] for x in rows) >= 2:
                continue  # kinds the screen only counts: a fixed number of them
        else:
            keep.update(
                base_stopped=False,
                sft_stopped=True,
                base_run_on=True,
                sft_run_on=False,
                base_p_eot=0.01,
                sft_p_eot=0.5,
                sft_generated="A fixed answer.\nIt stops.",
            )
        rows.append(keep)
    write_jsonl(run / "probes" / "overfit.jsonl", rows)


@pytest.fixture
def snap_train_run(train_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    shutil.copytree(train_base / "data", tmp_path / "data")
    ignore = shutil.ignore_patterns("model", "checkpoints", "adapter", "probes")
    shutil.copytree(train_base / "runs" / "train", tmp_path / "runs" / "train", ignore=ignore)
    run = tmp_path / "runs" / "train"
    pin_manifest(run)
    pin_training(run)
    monkeypatch.chdir(tmp_path)
    return "runs/train"


@pytest.fixture
def snap_probes_run(probes_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    shutil.copytree(probes_base / "data", tmp_path / "data")
    ignore = shutil.ignore_patterns("model", "checkpoints", "adapter")
    shutil.copytree(probes_base / "runs" / "train", tmp_path / "runs" / "train", ignore=ignore)
    run = tmp_path / "runs" / "train"
    pin_manifest(run)
    pin_training(run)
    pin_probes(run)
    monkeypatch.chdir(tmp_path)
    return "runs/train"


def loaded(*keys: str):
    async def run_before(pilot) -> None:
        for _ in range(500):
            await pilot.pause(0.02)
            if isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.loaded:
                break
        await pilot.pause()
        if keys:
            await pilot.press(*keys)
        await pilot.pause(0.1)

    return run_before


def test_overview(snap_compare, snap_run: str) -> None:
    assert snap_compare(SftTui(rd.open_run(snap_run)), terminal_size=(100, 34), run_before=loaded())


def test_overview_80x24(snap_compare, snap_run: str) -> None:
    assert snap_compare(SftTui(rd.open_run(snap_run)), terminal_size=(80, 24), run_before=loaded())


def test_findings(snap_compare, snap_run: str) -> None:
    assert snap_compare(SftTui(rd.open_run(snap_run)), terminal_size=(100, 30), run_before=loaded("2", "down", "down"))


def test_findings_80x24_filtered(snap_compare, snap_run: str) -> None:
    assert snap_compare(
        SftTui(rd.open_run(snap_run)), terminal_size=(80, 24), run_before=loaded("2", "slash", *"dedup")
    )


def test_example(snap_compare, snap_run: str) -> None:
    assert snap_compare(
        SftTui(rd.open_run(snap_run)), terminal_size=(100, 30), run_before=loaded("g", *"defects.jsonl:2", "enter")
    )


def test_duplicates(snap_compare, snap_run: str) -> None:
    assert snap_compare(SftTui(rd.open_run(snap_run)), terminal_size=(100, 30), run_before=loaded("4", "down"))


def test_help(snap_compare, snap_run: str) -> None:
    assert snap_compare(SftTui(rd.open_run(snap_run)), terminal_size=(100, 34), run_before=loaded("question_mark"))


@pytest.mark.slow
def test_training(snap_compare, snap_train_run: str) -> None:
    assert snap_compare(SftTui(rd.open_run(snap_train_run)), terminal_size=(100, 34), run_before=loaded("5"))


@pytest.mark.slow
def test_probes(snap_compare, snap_probes_run: str) -> None:
    assert snap_compare(SftTui(rd.open_run(snap_probes_run)), terminal_size=(100, 34), run_before=loaded("6"))
