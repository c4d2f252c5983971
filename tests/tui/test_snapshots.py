"""Snapshots of the main screens (pytest-textual-snapshot; `pytest --snapshot-update` accepts new
ones). The run directory is the session's real audit + dedup run, copied with its timestamps and
package versions pinned so the pictures do not change from one machine or day to the next."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tui import run as rd
from tui.app import RunScreen, SftTui

FIXED = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def snap_run(runs_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    shutil.copytree(runs_base / "data", tmp_path / "data")
    shutil.copytree(runs_base / "runs" / "audit", tmp_path / "runs" / "audit")
    path = tmp_path / "runs" / "audit" / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    m["created"] = m["updated"] = FIXED
    m["packages"] = {"sftlab": "0.1.0"}
    for stage in m["stages"].values():
        stage["finished"] = FIXED
    path.write_text(json.dumps(m), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return "runs/audit"


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
