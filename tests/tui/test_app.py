"""The TUI through Textual's Pilot, on run directories built by the real commands (conftest.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, Select, Static

from sftdata.catalogue import CHECKS
from tui import run as rd
from tui.app import TABS, HelpScreen, PickerScreen, RunScreen, SftTui, TextScreen, explain, main
from tui.table import Table


def drive(app: SftTui, scenario, size: tuple[int, int] = (100, 30)) -> None:
    """Run `scenario(pilot, screen)` once the RunScreen (or picker) has loaded its data."""

    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            for _ in range(400):
                await pilot.pause(0.02)
                if isinstance(app.screen, PickerScreen) or (isinstance(app.screen, RunScreen) and app.screen.loaded):
                    break
            else:
                raise AssertionError("the run screen never finished loading")
            await pilot.pause()
            await scenario(pilot, app.screen)

    asyncio.run(go())


def text_of(screen, selector: str) -> str:
    w = screen.query_one(selector, Static)
    r = w.render()
    return getattr(r, "plain", None) or str(w.content if hasattr(w, "content") else r)


def plain(renderable) -> str:
    from rich.console import Console

    c = Console(width=200, record=True, color_system=None)
    c.print(renderable)
    return c.export_text()


def test_overview_shows_manifest_counts_histogram_and_verdict(in_base: Path) -> None:
    async def scenario(pilot, screen: RunScreen) -> None:
        body = plain(screen.overview())
        assert "FAIL" in body  # defects.jsonl has error-level findings
        assert "tokens.special-in-content" in body and "format.parse-error" in body
        assert "sftdata audit data/defects.jsonl data/train.jsonl" in body  # the command that made it
        assert "data/train.jsonl" in body and len(screen.run.manifest["stages"]["audit"]["inputs"][0]["sha256"]) == 64
        assert "█" in body and "tokens per example" in body  # the length histogram
        assert "dedup: 10 examples, 2 clusters" in body and "1 contaminated" in body
        assert "sfttrain run CONFIG.yaml --output-dir runs/audit" in body  # the missing stage says how to make it

    drive(SftTui(rd.open_run("runs/audit")), scenario)


def test_findings_filter_sort_and_open(in_base: Path) -> None:
    findings = rd.read_findings(rd.open_run("runs/audit"))

    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.press("2")
        table = screen.query_one("#findings-table", Table)
        assert len(table.rows) == len(findings) > 10
        assert [f.severity for f in table.rows] == sorted((f.severity for f in findings), key=rd.SEVERITY_RANK.get)
        screen.query_one("#f-check", Select).value = "dedup"  # an area
        await pilot.pause()
        assert {f.check for f in table.rows} == {"dedup.exact", "dedup.near", "dedup.contamination"}
        screen.query_one("#f-check", Select).clear()
        screen.query_one("#f-sev", Select).value = "error"
        await pilot.pause()
        assert table.rows and all(f.severity == "error" for f in table.rows)
        screen.query_one("#f-sev", Select).clear()
        await pilot.press("slash")
        assert isinstance(screen.app.focused, Input)
        await pilot.press(*"photosynthesis")
        await pilot.pause()
        assert [f.example_id for f in table.rows] == ["train/4"]  # the near-duplicate names the text
        assert "near-duplicates" in text_of(screen, "#finding-detail")
        await pilot.press("tab")
        screen.query_one("#findings-table", Table).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.active_tab() == "example" and screen.example_id == "train/4"
        # sorting: s cycles the key, S reverses
        await pilot.press("2")
        screen.query_one("#f-text", Input).value = ""
        await pilot.pause()
        table.focus()
        await pilot.press("s")
        assert screen.sort_key == "check"
        assert [f.check for f in table.rows] == sorted(f.check for f in findings)
        await pilot.press("S")
        assert [f.check for f in table.rows] == sorted((f.check for f in findings), reverse=True)

    drive(SftTui(rd.open_run("runs/audit")), scenario)


def test_example_view_tokens_findings_and_stepping(in_base: Path) -> None:
    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.press("2")
        first = screen.shown[0]
        screen.query_one("#findings-table", Table).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.active_tab() == "example" and screen.example_id == first.example_id
        seen = [screen.example_id]
        for _ in range(4):
            await pilot.press("n")
            await pilot.pause()
            seen.append(screen.example_id)
        assert seen == [f.example_id for f in screen.shown[:5]]  # n walks the findings in table order
        await pilot.press("p")
        assert screen.example_id == screen.shown[3].example_id
        # jump by FILE:LINE (a suffix of the recorded path is enough) and by id
        await pilot.press("g")
        await pilot.press(*"defects.jsonl:2", "enter")
        await pilot.pause()
        assert screen.example_id == "defects/2"
        tokens = text_of(screen, "#tokens")
        assert "message 0 · user" in tokens and "message 1 · assistant" in tokens
        assert "<|im_start|>" in tokens and "<|im_end|>" in tokens
        side = text_of(screen, "#example-findings")
        assert "tokens.special-in-content" in side and "fix:" in side
        await pilot.press("i")
        assert "[2]" in text_of(screen, "#tokens")  # <|im_end|> is id 2 in the demo tokenizer
        await pilot.press("g")
        await pilot.press(*"defects/6", "enter")
        await pilot.pause()
        assert "✂ truncated here" in text_of(screen, "#tokens") and "TRUNCATED" in text_of(screen, "#example-head")
        await pilot.press("right_square_bracket")
        assert screen.example_id == "defects/7"
        await pilot.press("g")
        await pilot.press(*"nope:99", "enter")
        await pilot.pause()
        assert screen.example_id == "defects/7"  # unknown target: a notification, nothing changes
        # an unreadable record has no tokens: the view shows the raw source line instead
        screen.open_finding(next(f for f in screen.findings if f.check == "format.parse-error"))
        await pilot.pause()
        assert "source record" in text_of(screen, "#tokens")

    drive(SftTui(rd.open_run("runs/audit")), scenario)


def test_example_styles_trained_tokens_exactly(in_base: Path) -> None:
    """Trained tokens (green) decode to the assistant answer plus its end-of-turn token."""
    from tui import tokens as tk

    run = rd.open_run("runs/audit")
    examples = rd.open_examples(run)
    vocab = tk.load_vocab(run)
    assert vocab is not None and examples is not None
    ex = examples.get(examples.find("data/train.jsonl:1"))
    text = tk.render_example(ex, vocab)
    trained = "".join(text.plain[s.start : s.end] for s in text.spans if s.style in (tk.TRAINED, tk.SPECIAL_TRAINED))
    assert trained == "The capital of Canada is Ottawa.<|im_end|>"
    assert tk.message_texts(ex, vocab).endswith("[assistant] The capital of Canada is Ottawa.<|im_end|>")


def test_explain_help_and_palette(in_base: Path) -> None:
    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.press("2")
        screen.query_one("#findings-table", Table).focus()
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(screen.app.screen, TextScreen)
        check = screen.shown[0].check
        body = str(screen.app.screen.query_one("#text-body", Static).render())
        # the catalogue's own explanation (`sftdata audit --explain`), not a fragment of docs/checks.md
        assert body.startswith(f"{check} (") and "Fix:" in body and CHECKS[check].fix in body
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert isinstance(screen.app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert isinstance(screen.app.screen, CommandPalette)
        await pilot.press(*"Filter findings: format.role-order")
        for _ in range(50):
            await pilot.pause(0.05)
            hits = screen.app.screen.query_one(CommandList)
            if hits.option_count and "role-order" in str(hits.get_option_at_index(0).prompt):
                break
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert screen.active_tab() == "findings"
        assert len(screen.shown) == 2 and {f.check for f in screen.shown} == {"format.role-order"}

    drive(SftTui(rd.open_run("runs/audit")), scenario)


def test_explain_unknown_check_says_so() -> None:
    text = explain("nope.not-a-check")
    assert "unknown check" in text and "nope.not-a-check" in text
    assert explain("format.role-order").startswith("format.role-order (warning)")


def test_duplicates_side_by_side_and_contamination(in_base: Path) -> None:
    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.press("4")
        table = screen.query_one("#dup-table", Table)
        kinds = [k for k, _ in table.rows]
        assert kinds == ["cluster", "cluster", "contamination"]
        table.move_to(1)  # the near-duplicate cluster: train/2 (representative) vs train/4
        await pilot.pause()
        a, b = screen.pair
        assert "representative train/2" in a.plain and "train/4" in b.plain
        changed = {b.plain[s.start : s.end] for s in b.spans if s.style == "bold black on yellow"}
        assert "briefly." in changed and not any("Photosynthesis" in c for c in changed)
        table.move_to(2)
        await pilot.pause()
        b = screen.pair[1]
        assert "evaluation copy eval/1" in b.plain and "Shakespeare" in b.plain  # read from data/eval.jsonl:1

    drive(SftTui(rd.open_run("runs/audit")), scenario)


def test_missing_stages_say_what_produces_them(in_base: Path) -> None:
    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.press("5")
        msg = screen.query_one("#training .missing", Static).render()
        assert "sfttrain run CONFIG.yaml --output-dir runs/audit" in str(msg)
        await pilot.press("6")
        assert "probes hallucination" in str(screen.query_one("#probes .missing", Static).render())

    drive(SftTui(rd.open_run("runs/audit")), scenario)


@pytest.mark.slow
def test_training_curves_and_loss_ranking(train_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(train_base)
    from textual_plotext import PlotextPlot

    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.press("5")
        await pilot.pause()
        assert len(screen.query(PlotextPlot)) == 4
        assert set(screen.plot_titles) == {"loss", "learning_rate", "grad_norm", "tokens_per_s"}
        assert all("2 points" in t for t in screen.plot_titles.values()), screen.plot_titles
        table = screen.query_one("#loss-table", Table)
        losses = [r.loss for r in table.rows]
        assert len(losses) == 10 and losses == sorted(losses, reverse=True)
        table.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.active_tab() == "example" and screen.example_id == table.rows[0].example_id

    drive(SftTui(rd.open_run("runs/train")), scenario)


def test_picker_lists_runs_and_opens_one(in_base: Path) -> None:
    async def scenario(pilot, screen) -> None:
        assert isinstance(screen, PickerScreen)
        names = [p.name for p in screen.query_one("#picker", Table).rows]
        assert "audit" in names
        screen.query_one("#picker", Table).move_to(names.index("audit"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(pilot.app.screen, RunScreen) and pilot.app.screen.run.path.name == "audit"

    drive(SftTui(None, runs_root=Path("runs")), scenario)


def test_damaged_run_directory_is_reported_not_a_crash(in_base: Path, tmp_path: Path) -> None:
    run = tmp_path / "damaged"
    shutil.copytree("runs/audit", run)
    with open(run / "audit" / "findings.jsonl", "a", encoding="utf-8") as f:
        f.write('{"check": "x.y", "sev\n[1, 2]\n')
    (run / "audit" / "examples.parquet").write_bytes(b"PAR1 not really")
    (run / "dedup" / "summary.json").write_text("{", encoding="utf-8")

    async def scenario(pilot, screen: RunScreen) -> None:
        body = plain(screen.overview())
        assert "problems reading this run" in body
        assert "findings.jsonl:" in body and "not valid JSON" in body and "examples.parquet: unreadable" in body
        await pilot.press("2")
        assert len(screen.query_one("#findings-table", Table).rows) > 5  # the good lines are all there
        screen.query_one("#findings-table", Table).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert "no tokens" in text_of(screen, "#example-head")

    drive(SftTui(rd.open_run(run)), scenario)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["--runs", str(tmp_path / "empty")]) == 2
    assert "no run directories" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "RUN_DIR" in capsys.readouterr().out


def test_tui_imports_no_torch_even_after_opening_an_example(in_base: Path) -> None:
    code = """
import asyncio, sys
from tui import run as rd
from tui.app import SftTui, RunScreen
async def go():
    app = SftTui(rd.open_run("runs/audit"))
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(400):
            await pilot.pause(0.02)
            if isinstance(app.screen, RunScreen) and app.screen.loaded:
                break
        await pilot.press("2", "enter", "4", "5", "6", "1")
        await pilot.pause()
        assert app.screen.vocab is not None
asyncio.run(go())
bad = sorted(m for m in ("torch", "transformers", "trl", "peft") if m in sys.modules)
print("HEAVY", bad)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "HEAVY []" in p.stdout


def test_reader_tolerates_other_columns_and_old_cluster_schema(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "r"
    (run / "dedup").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "cluster_id": [0, 0],
                "example_id": ["a", "b"],
                "representative": ["a", "a"],
                "estimated": [1.0, 0.9],
                "extra": [1, 2],
            }
        ),
        run / "dedup" / "clusters.parquet",
    )
    (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    clusters = rd.read_clusters(rd.open_run(run))
    assert [(m.example_id, m.representative, m.representative_id) for m in clusters[0]] == [
        ("a", True, "a"),
        ("b", False, "a"),
    ]


@pytest.mark.slow
def test_probes_side_by_side_flips_and_relations(probes_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(probes_base)
    items = rd.read_probe(rd.open_run("runs/train"), "hallucination")

    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.press("6")
        table = screen.query_one("#probe-table", Table)
        assert len(table.rows) == len(items) > 0
        flips = [bool(i.get("flip")) for i in table.rows]
        assert flips == sorted(flips, reverse=True)  # flips first
        summary = plain(screen.probe_summary())
        assert "flip rate" in summary and "95% CI" in summary and "McNemar p" in summary
        first = table.rows[0]
        base, sft = text_of(screen, "#probe-base"), text_of(screen, "#probe-sft")
        assert first["question"] in base and first["question"] in sft
        assert str(first["base"]["predicted"]) in base and str(first["sft"]["predicted"]) in sft
        await pilot.press("r")
        rel = screen.relation
        assert rel and all(i["relation"] == rel for i in table.rows)
        assert "memorization" in plain(screen.overfit_tables())
        # the Overview shows both probes commands (manifest stages probes.hallucination, probes.overfit)
        body = plain(screen.overview())
        assert "probes hallucination --base tiny-model" in body and "probes overfit --base tiny-model" in body

    drive(SftTui(rd.open_run("runs/train")), scenario)


def test_screen_flag_opens_that_screen(in_base: Path) -> None:
    async def scenario(pilot, screen: RunScreen) -> None:
        await pilot.pause(0.1)
        assert screen.active_tab() == "duplicates"

    drive(SftTui(rd.open_run("runs/audit"), screen="duplicates"), scenario)


# -- every key on every screen of runs that have one stage only ----------------------------------

STAGES = ("audit", "dedup", "train", "probes")


def one_stage_run(base: Path, src: str, stage: str, dest: Path) -> Path:
    """A copy of the real run `base/src` holding only `stage`/ (and the manifest's entries for it)."""
    dest.mkdir(parents=True)
    shutil.copytree(base / src / stage, dest / stage, ignore=shutil.ignore_patterns("model", "checkpoints", "adapter"))
    m = json.loads((base / src / "manifest.json").read_text(encoding="utf-8"))
    m["stages"] = {k: v for k, v in m.get("stages", {}).items() if k == stage or k.startswith(f"{stage}.")}
    (dest / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    for other in STAGES:
        assert (dest / other).is_dir() == (other == stage)
    return dest


def every_key() -> list[str]:
    keys = [k for b in (*RunScreen.BINDINGS, *SftTui.BINDINGS) for k in b.key.split(",")]  # type: ignore[union-attr]
    return [k for k in dict.fromkeys([*keys, "enter", "down", "up", "escape", "ctrl+p"]) if k != "q"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_key_on_every_screen_of_a_one_stage_run(
    stage: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs that lack the other stages: no key on any screen crashes (e.g. `m` on Duplicates without
    dedup/, `s` on Findings without audit/ or dedup/), and `q` still quits with exit code 0."""
    if stage in ("audit", "dedup"):
        base, src = request.getfixturevalue("runs_base"), "runs/audit"
    else:
        base, src = request.getfixturevalue("probes_base"), "runs/train"
    monkeypatch.chdir(base)  # the findings' relative source paths resolve from here
    run = one_stage_run(base, src, stage, tmp_path / f"only-{stage}")
    keys = every_key()
    app = SftTui(rd.open_run(run))

    async def scenario(pilot, screen: RunScreen) -> None:
        for tab in "123456":
            for key in keys:
                if isinstance(pilot.app.focused, Input):  # after `/` or `g`: keys would be typed, not run
                    pilot.app.set_focus(None)
                if screen.active_tab() != TABS[int(tab) - 1] or key == keys[0]:
                    await pilot.press(tab)
                # the number keys always switch (focus left in a hidden pane used to switch back)
                assert screen.active_tab() == TABS[int(tab) - 1], (stage, tab, key, pilot.app.focused)
                await pilot.press(key)
                if key in "123456":
                    assert screen.active_tab() == TABS[int(key) - 1], (stage, tab, key, pilot.app.focused)
                for _ in range(3):  # a help, explain, go-to or palette screen: close it
                    if pilot.app.screen is screen:
                        break
                    await pilot.pause()
                    await pilot.press("escape")
                assert pilot.app.screen is screen and pilot.app.return_code is None, (stage, tab, key)
        await pilot.press("q")
        await pilot.pause()

    drive(app, scenario)
    assert app.return_code == 0
