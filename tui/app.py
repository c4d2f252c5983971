"""`sfttui RUN_DIR`: browse a run directory — overview, findings, token view, duplicates, training
curves, base-vs-SFT probes. With no argument, pick one of the run directories under ./runs.

Reads run directory files only (DESIGN.md §4); imports no torch, transformers, trl or peft.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.command import Hit, Hits, Provider
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Footer,
    Header,
    Input,
    Markdown,
    Select,
    Static,
    TabbedContent,
    TabPane,
    Tabs,
)

from tui import run as rd
from tui import tokens as tk
from tui.table import Column, Table

TABS = ("overview", "findings", "example", "duplicates", "training", "probes")
SEV_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def sev_text(severity: str) -> Text:
    return Text(severity, style=SEV_STYLE.get(severity, ""))


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.{digits}g}"
    return str(x)


# --------------------------------------------------------------------------------------------
# modal screens: help, explain, go to


HELP = """\
# sfttui keys

| key | where | what |
|---|---|---|
| `1`…`6` | anywhere | Overview, Findings, Example, Duplicates, Training, Probes |
| `ctrl+p` | anywhere | command palette (screens, filter by check, themes) |
| `?` | anywhere | this help |
| `d` | anywhere | dark / light |
| `q` | anywhere | quit |
| `/` | Findings | search (free text; all words must match) |
| `s` / `S` | Findings | sort by the next column / reverse |
| `e` | Findings, Example | explain the check (`sftdata audit --explain`) |
| `enter` | tables | open the example (or the cluster / probe item) |
| `n` / `p` | Example | next / previous finding (in the Findings filter's order) |
| `[` / `]` | Example | previous / next example of the run |
| `g` | Example | go to an example by id or FILE:LINE |
| `i` | Example | token ids on / off |
| `m` | Duplicates | compare the representative with the next member |
| `r` | Probes | next relation filter |

**Token view**: green = trained (loss on), dim = masked, *dim italic* = template glue between
messages, magenta = special tokens (underlined when trained), `↵` = newline, a red bar marks
where truncation cut the example.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; max-width: 100; height: 90%; border: thick $accent; background: $surface; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)


class TextScreen(ModalScreen[None]):
    """A scrollable text (the --explain of a check)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,e", "dismiss", "close")]
    DEFAULT_CSS = """
    TextScreen { align: center middle; }
    TextScreen > VerticalScroll { width: 90%; max-width: 110; height: 90%; border: thick $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with VerticalScroll() as v:
            v.border_title = self.title_text
            yield Static(self.body, markup=False, id="text-body")


class AskScreen(ModalScreen[str | None]):
    """One line of input (go to an example)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "cancel")]
    DEFAULT_CSS = """
    AskScreen { align: center middle; }
    AskScreen > Vertical { width: 70; height: auto; border: thick $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, prompt: str, placeholder: str = "") -> None:
        super().__init__()
        self.prompt, self.placeholder = prompt, placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.prompt)
            yield Input(placeholder=self.placeholder, id="ask")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


def explain(check: str) -> str:
    """`sftdata audit --explain CHECK`: the check's entry in sftdata.catalogue (stdlib only, no torch)."""
    from sftdata import catalogue

    try:
        return catalogue.explain(check)
    except KeyError:
        return (
            f"{check}: unknown check — it is not in this sftlab's check catalogue, so there is no explanation "
            "to show. The run may come from another version of sftlab; `sftdata audit --explain ID` and "
            "docs/checks.md list the checks this version knows."
        )


# --------------------------------------------------------------------------------------------
# the run screen


class RunScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "tab('overview')", "overview"),
        Binding("2", "tab('findings')", "findings"),
        Binding("3", "tab('example')", "example"),
        Binding("4", "tab('duplicates')", "dups"),
        Binding("5", "tab('training')", "training"),
        Binding("6", "tab('probes')", "probes"),
        Binding("slash", "search", "search", show=False),
        Binding("s", "sort(False)", "sort", show=False),
        Binding("S", "sort(True)", "reverse sort", show=False),
        Binding("e", "explain", "explain", show=False),
        Binding("n", "step_finding(1)", "next finding", show=False),
        Binding("p", "step_finding(-1)", "prev finding", show=False),
        Binding("left_square_bracket", "step_example(-1)", "prev example", show=False),
        Binding("right_square_bracket", "step_example(1)", "next example", show=False),
        Binding("g", "goto", "go to", show=False),
        Binding("i", "toggle_ids", "ids", show=False),
        Binding("m", "next_member", "next member", show=False),
        Binding("r", "next_relation", "relation", show=False),
    ]
    DEFAULT_CSS = """
    .filters { height: 3; }
    .filters Select { width: 28; }
    .filters Input { width: 1fr; }
    #finding-detail { height: auto; max-height: 8; border-top: solid $accent; padding: 0 1; }
    #example-head { height: auto; padding: 0 1; background: $panel; }
    #example-tokens { width: 3fr; padding: 0 1; }
    #example-side { width: 1fr; min-width: 24; border-left: solid $accent; padding: 0 1; }
    #dup-table { height: 1fr; max-height: 12; }
    #dup-sides { height: 2fr; }
    #dup-sides > VerticalScroll { width: 1fr; border: round $accent; padding: 0 1; }
    #train-plots { height: 2fr; }
    #train-plots > Horizontal { height: 1fr; }
    #loss-table { height: 1fr; }
    #probe-summary { height: auto; max-height: 6; padding: 0 1; }
    #probe-table { height: 1fr; min-height: 6; }
    #probe-sides { height: auto; max-height: 9; }
    #probe-sides > VerticalScroll { width: 1fr; height: auto; max-height: 9; border: round $accent; padding: 0 1; }
    #probe-overfit { height: 1fr; max-height: 12; padding: 0 1; }
    .missing { padding: 1 2; }
    """

    def __init__(self, run: rd.Run, start: str = "overview") -> None:
        super().__init__()
        self.run = run
        self.start = start
        self.findings: list[rd.Finding] | None = None
        self.shown: list[rd.Finding] = []  # the Findings table's rows (filtered, sorted)
        self.by_example: dict[str, list[rd.Finding]] = {}
        self.examples: rd.Examples | None = None
        self.vocab: tk.Vocab | None = None
        self.vocab_loaded = False
        self.clusters: dict[int, list[rd.Member]] = {}
        self.sort_keys = ("severity", "check", "source", "example", "message")
        self.sort_key, self.sort_reverse = "severity", False
        self.example_row: int | None = None
        self.example_id: str | None = None
        self.finding_pos = -1
        self.show_ids = False
        self.member_pos = 1
        self.pair: tuple[Text, Text] = (Text(), Text())
        self.plot_titles: dict[str, str] = {}
        self.relations: list[str] = []
        self.check_values: list[str] = []
        self.haystacks: list[str] | None = None
        self.relation = ""
        self.loaded = False
        self.first_paint_s: float | None = None

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("1 Overview", id="overview"), VerticalScroll(id="overview-scroll"):
                yield Static(self.overview(), id="overview-body")
            with TabPane("2 Findings", id="findings"):
                if self.has_findings_table():
                    with Horizontal(classes="filters"):
                        yield Select([], prompt="check / area", id="f-check")
                        yield Select([(s, s) for s in rd.SEVERITIES], prompt="severity", id="f-sev")
                        yield Input(placeholder="/ search: words in check, id, file:line, message", id="f-text")
                    yield Table(
                        [Column("severity", 8), Column("check", 30), Column("source", 26), Column("message", 0)],
                        row_cells=self.finding_cells,
                        empty="loading findings…",
                        id="findings-table",
                    )
                    yield Static("", id="finding-detail")
                else:
                    yield self.missing("audit", "findings")
            with TabPane("3 Example", id="example"):
                if self.run.has("audit"):
                    yield Static(
                        "Choose a finding (Findings, enter) or press g to go to an example by id or FILE:LINE.",
                        id="example-head",
                    )
                    with Horizontal():
                        with VerticalScroll(id="example-tokens"):
                            yield Static("", id="tokens")
                        with VerticalScroll(id="example-side"):
                            yield Static("", id="example-findings")
                else:
                    yield self.missing("audit", "tokenized examples")
            with TabPane("4 Duplicates", id="duplicates"):
                if self.run.has("dedup"):
                    yield Table(
                        [
                            Column("cluster", 14),
                            Column("size", 5),
                            Column("representative", 24),
                            Column("min J", 6),
                            Column("members / evaluation copy", 0),
                        ],
                        row_cells=self.dup_cells,
                        empty="no duplicate clusters or contamination in this run",
                        id="dup-table",
                    )
                    with Horizontal(id="dup-sides"):
                        with VerticalScroll(id="dup-left"):
                            yield Static("", id="dup-a")
                        with VerticalScroll(id="dup-right"):
                            yield Static("", id="dup-b")
                else:
                    yield self.missing("dedup", "duplicates")
            with TabPane("5 Training", id="training"):
                if self.run.has("train"):
                    from textual_plotext import PlotextPlot

                    with Vertical(id="train-plots"):
                        with Horizontal():
                            yield PlotextPlot(id="plot-loss")
                            yield PlotextPlot(id="plot-lr")
                        with Horizontal():
                            yield PlotextPlot(id="plot-grad")
                            yield PlotextPlot(id="plot-tps")
                    yield Table(
                        [
                            Column("final loss", 10),
                            Column("example", 24),
                            Column("tokens", 7),
                            Column("trained", 7),
                            Column("source", 0),
                        ],
                        row_cells=self.loss_cells,
                        empty="no train/example_loss.parquet",
                        id="loss-table",
                    )
                else:
                    yield self.missing("train", "training")
            with TabPane("6 Probes", id="probes"):
                if self.run.has("probes"):
                    yield Static("", id="probe-summary")
                    yield Table(
                        [
                            Column("relation", 14),
                            Column("base", 10),
                            Column("sft", 10),
                            Column("", 9),
                            Column("question", 0),
                        ],
                        row_cells=self.probe_cells,
                        empty="no probes/hallucination.jsonl",
                        id="probe-table",
                    )
                    with Horizontal(id="probe-sides"):
                        with VerticalScroll():
                            yield Static("", id="probe-base")
                        with VerticalScroll():
                            yield Static("", id="probe-sft")
                    with VerticalScroll(id="probe-overfit"):
                        yield Static("", id="probe-overfit-body")
                else:
                    yield self.missing("probes", "probes")
        yield Footer()

    def missing(self, stage: str, what: str) -> Static:
        return Static(
            Text.assemble(
                (f"This run has no {what} ({stage}/ is missing).\n\n", "bold"),
                "Produce it with:\n\n    ",
                (self.run.producer(stage), "bold cyan"),
            ),
            classes="missing",
        )

    def on_mount(self) -> None:
        self.title = "sfttui"
        self.sub_title = self.run.name
        self.call_after_refresh(self.action_tab, self.start)
        self.call_after_refresh(self.load)  # after the first paint: parsing holds the GIL

    # -- loading (a thread: findings.jsonl and the examples index can be large) -----------------

    @work(thread=True, exclusive=True, group="load")
    def load(self) -> None:
        findings = rd.read_findings(self.run)
        examples = rd.open_examples(self.run)
        clusters = rd.read_clusters(self.run) if self.run.has("dedup") else {}
        self.app.call_from_thread(self.loaded_data, findings, examples, clusters)

    def loaded_data(
        self, findings: list[rd.Finding], examples: rd.Examples | None, clusters: dict[int, list[rd.Member]]
    ) -> None:
        self.findings, self.examples, self.clusters = findings, examples, clusters
        by_example: dict[str, list[rd.Finding]] = {}
        for f in findings:
            if f.example_id is not None:
                by_example.setdefault(f.example_id, []).append(f)
        self.by_example = by_example
        self.query_one("#overview-body", Static).update(self.overview())
        if self.has_findings_table():
            checks = sorted({f.check for f in findings})
            areas = sorted({c.split(".", 1)[0] for c in checks})
            self.check_values = [*areas, *checks]
            self.query_one("#f-check", Select).set_options([(f"{a}.*", a) for a in areas] + [(c, c) for c in checks])
            self.query_one("#findings-table", Table).empty = "no findings match"
            self.refilter()
        if self.run.has("dedup"):
            self.fill_duplicates()
        if self.run.has("train"):
            self.fill_training()
        if self.run.has("probes"):
            self.fill_probes()
        self.loaded = True

    # -- overview ---------------------------------------------------------------------------------

    def overview(self) -> Group:
        run, parts = self.run, []
        m = run.manifest
        head = RichTable.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        head.add_row("run", run.name)
        if m.get("created"):
            head.add_row("created", f"{m.get('created')}   updated {m.get('updated', '—')}")
        parts.append(head)
        if run.problems:
            parts.append(Text("problems reading this run:", style="bold red"))
            parts += [Text(f"  {p}", style="red") for p in run.problems]
        a = run.audit
        if a:
            passed = a.get("passed")
            verdict = Text(
                " PASS " if passed else " FAIL ", style="bold white on green" if passed else "bold white on red"
            )
            counts = a.get("by_severity") or {}
            parts.append(
                Text.assemble(
                    "\naudit ",
                    verdict,
                    "  ",
                    f"{a.get('examples', '—')} examples, {a.get('findings', 0)} findings: ",
                    *[x for s in rd.SEVERITIES for x in ((f"{counts.get(s, 0)} {s}", SEV_STYLE[s]), "  ")],
                    f"\nmodel {a.get('model', '—')}  policy {a.get('policy', '—')}  "
                    f"max_length {a.get('max_length', '—')}  fail-on {a.get('fail_on', '—')}",
                )
            )
            t = RichTable(expand=True, show_edge=False)
            for col in ("check", "severity", "findings", "examples"):
                t.add_column(col, justify="right" if col in ("findings", "examples") else "left")
            checks = a.get("checks") or {}
            for cid, c in sorted(
                checks.items(), key=lambda kv: (rd.SEVERITY_RANK.get(str(kv[1].get("severity")), 9), kv[0])
            ):
                if isinstance(c, dict):
                    t.add_row(
                        cid, sev_text(str(c.get("severity"))), str(c.get("findings", "")), str(c.get("examples", ""))
                    )
            parts.append(t)
            parts.append(self.length_histogram(a.get("token_stats") or {}))
        elif not run.has("audit"):
            parts.append(Text(f"\nno audit: {run.producer('audit')}", style="dim"))
        d = run.dedup
        if d:
            parts.append(
                Text(
                    f"\ndedup: {d.get('examples', '—')} examples, {d.get('clusters', 0)} clusters "
                    f"({d.get('examples_in_clusters', 0)} examples), {d.get('exact_duplicates', 0)} exact, "
                    f"{d.get('near_pairs', 0)} near pairs, {d.get('contaminated', 0)} contaminated, "
                    f"threshold {d.get('threshold', '—')}"
                )
            )
        stages = RichTable(title="\nstages", title_justify="left", expand=True, show_edge=False)
        for col in ("stage", "present", "command"):
            stages.add_column(col, overflow="fold", ratio=4 if col == "command" else None)
        mstages = m.get("stages") or {}
        for stage in ("audit", "dedup", "train", "probes"):
            present = run.has(stage)
            # probes records one stage per probe: "probes.hallucination", "probes.overfit"
            keys = [stage] + sorted(k for k in mstages if k.startswith(f"{stage}."))
            cmds = [
                " ".join(Path(str(c)).name if k == 0 else str(c) for k, c in enumerate(cmd))
                for cmd in (
                    (mstages[k] or {}).get("command") if isinstance(mstages[k], dict) else None
                    for k in keys
                    if k in mstages
                )
                if cmd and isinstance(cmd, list)
            ]
            if cmds:
                cmd_text = Text("\n".join(cmds))
            else:
                cmd_text = Text(f"produce it: {run.producer(stage)}", style="dim") if not present else Text("")
            stages.add_row(stage, Text("yes", style="green") if present else Text("no", style="dim"), cmd_text)
        parts.append(stages)
        inputs: list[tuple[str, str]] = []
        for st in mstages.values():
            for i in (st.get("inputs") or []) if isinstance(st, dict) else []:
                if isinstance(i, dict) and (str(i.get("path")), str(i.get("sha256") or "missing")) not in inputs:
                    inputs.append((str(i.get("path")), str(i.get("sha256") or "missing")))
        if inputs:
            t = RichTable(title="\ninputs", title_justify="left", expand=True, show_edge=False)
            t.add_column("path", overflow="fold", ratio=3)
            t.add_column("sha256", overflow="ellipsis", ratio=1, no_wrap=True)
            for p, h in inputs:
                t.add_row(p, h)
            parts.append(t)
        pkgs = m.get("packages") or {}
        if pkgs:
            parts.append(Text("\nversions  " + "  ".join(f"{k} {v}" for k, v in pkgs.items() if v), style="dim"))
        return Group(*parts)

    def length_histogram(self, stats: dict[str, Any]) -> Group:
        lines: list[Text] = []
        n_tok = stats.get("n_tokens") or {}
        if n_tok:
            lines.append(Text("\ntokens per example  " + "  ".join(f"{k} {v}" for k, v in n_tok.items()), style="bold"))
        if self.examples is not None:
            buckets = rd.histogram(self.examples.lengths())
            top = max((n for *_, n in buckets), default=1) or 1
            for lo, hi, n in buckets:
                bar = "█" * max(1 if n else 0, round(40 * n / top))
                lines.append(Text.assemble((f"{lo:>6}–{hi:<6}", "dim"), (bar, "green"), f" {n}"))
        elif self.run.has("audit"):
            lines.append(
                Text("(histogram: loading examples…)" if not self.loaded else "(no examples.parquet)", style="dim")
            )
        return Group(*lines)

    # -- findings -----------------------------------------------------------------------------

    @staticmethod
    def finding_cells(f: rd.Finding) -> tuple[Any, ...]:
        return (sev_text(f.severity), f.check, f.where.rsplit("/", 1)[-1] or (f.example_id or "(run)"), f.message)

    def has_findings_table(self) -> bool:
        return self.run.has("audit") or self.run.has("dedup")

    def refilter(self, keep_cursor: bool = False) -> None:
        if self.findings is None or not self.has_findings_table():
            return
        check = self.query_one("#f-check", Select).value
        sev = self.query_one("#f-sev", Select).value
        text = self.query_one("#f-text", Input).value
        if text.strip() and self.haystacks is None:
            self.haystacks = rd.haystacks(self.findings)
        rows = rd.filter_findings(
            self.findings,
            check if isinstance(check, str) else "",
            sev if isinstance(sev, str) else "",
            text,
            self.haystacks,
        )
        self.shown = rd.sort_findings(rows, self.sort_key, self.sort_reverse)
        table = self.query_one("#findings-table", Table)
        table.sort_note = (
            f"[{len(self.shown)}/{len(self.findings)} · sorted by {self.sort_key}{' ↓' if self.sort_reverse else ''}]"
        )
        table.set_rows(self.shown, keep_cursor=keep_cursor)
        if not self.shown:
            self.query_one("#finding-detail", Static).update("")

    @on(Select.Changed, "#f-check, #f-sev")
    @on(Input.Changed, "#f-text")
    def filters_changed(self) -> None:
        self.refilter()

    @on(Table.Highlighted, "#findings-table")
    def finding_highlighted(self, event: Table.Highlighted) -> None:
        if 0 <= event.index < len(self.shown):
            self.query_one("#finding-detail", Static).update(self.finding_detail(self.shown[event.index]))

    @on(Table.Selected, "#findings-table")
    def finding_selected(self, event: Table.Selected) -> None:
        self.finding_pos = event.index
        self.open_finding(self.shown[event.index])

    @staticmethod
    def finding_detail(f: rd.Finding) -> Text:
        return Text.assemble(
            sev_text(f.severity),
            " ",
            (f.check, "bold"),
            f"  {f.example_id or '(run-wide)'}  ",
            (f.where, "dim"),
            "\n",
            f.message,
            "\n",
            ("fix: ", "bold"),
            f.hint,
        )

    def action_search(self) -> None:
        if self.has_findings_table():
            self.set_tab("findings")
            self.query_one("#f-text", Input).focus()

    def action_sort(self, reverse: bool) -> None:
        if self.active_tab() != "findings" or self.findings is None or not self.has_findings_table():
            return
        if reverse:
            self.sort_reverse = not self.sort_reverse
        else:
            k = self.sort_keys.index(self.sort_key)
            self.sort_key, self.sort_reverse = self.sort_keys[(k + 1) % len(self.sort_keys)], False
        self.refilter()

    def current_finding(self) -> rd.Finding | None:
        tab = self.active_tab()
        if tab == "findings" and self.shown:
            return self.query_one("#findings-table", Table).current
        if tab == "example" and self.example_id:
            fs = self.by_example.get(self.example_id) or []
            if 0 <= self.finding_pos < len(self.shown) and self.shown[self.finding_pos].example_id == self.example_id:
                return self.shown[self.finding_pos]
            return fs[0] if fs else None
        return None

    def action_explain(self) -> None:
        f = self.current_finding()
        if f is not None:
            self.app.push_screen(TextScreen(f"explain {f.check}", explain(f.check)))

    # -- example --------------------------------------------------------------------------------

    def open_finding(self, f: rd.Finding) -> None:
        row = self.examples.row_of.get(f.example_id) if self.examples and f.example_id else None
        if row is None and self.examples and f.file and f.line:
            row = self.examples.find(f"{f.file}:{f.line}")
        self.show_example(row, fallback=f)

    def show_example(self, row: int | None, fallback: rd.Finding | None = None) -> None:
        if not self.run.has("audit"):
            self.notify("this run has no audit/: no tokenized examples", severity="warning")
            return
        self.set_tab("example")
        head = self.query_one("#example-head", Static)
        body = self.query_one("#tokens", Static)
        if row is None or self.examples is None:
            self.example_row, self.example_id = None, fallback.example_id if fallback else None
            where = fallback.where if fallback else ""
            raw = rd.source_line(fallback.file, fallback.line, self.run) if fallback else None
            head.update(
                Text.assemble(
                    (f"{self.example_id or '(run-wide finding)'}", "bold"),
                    f"  {where}\n",
                    (
                        (
                            "no tokens: the audit did not tokenize this example (unreadable record, or a "
                            "finding about the whole run)"
                        ),
                        "dim",
                    ),
                )
            )
            body.update(
                Text.assemble(("source record:\n", "bold"), raw)
                if raw
                else Text("(source record not available)", style="dim")
            )
        else:
            if not self.vocab_loaded:
                self.vocab = tk.load_vocab(self.run)
                self.vocab_loaded = True
            ex = self.examples.get(row)
            self.example_row, self.example_id = row, ex.id
            trained = ex.n_trained if ex.n_trained is not None else sum(ex.loss_mask)
            full = f" of {ex.n_tokens_full}" if ex.n_tokens_full and ex.n_tokens_full != ex.n_tokens else ""
            head.update(
                Text.assemble(
                    (ex.id, "bold"),
                    f"  {ex.where}   {ex.n_tokens}{full} tokens, {trained} trained",
                    ("  TRUNCATED" if ex.truncated else "", "bold red"),
                    f"   [{row + 1}/{len(self.examples)}]\n",
                    ("trained", tk.TRAINED),
                    " · ",
                    ("masked", tk.MASKED),
                    " · ",
                    ("glue", tk.GLUE),
                    " · ",
                    ("special", tk.SPECIAL),
                    ("" if self.vocab else "   (no tokenizer.json found: ids only)", "yellow"),
                    ("   n/p finding  [/] example  g go to  i ids  e explain", "dim"),
                )
            )
            body.update(tk.render_example(ex, self.vocab, show_ids=self.show_ids))
        self.query_one("#example-tokens", VerticalScroll).scroll_home(animate=False)
        fs = self.by_example.get(self.example_id or "", []) if self.example_id else ([fallback] if fallback else [])
        side = Text.assemble((f"{len(fs)} finding{'s' * (len(fs) != 1)}\n", "bold"))
        for f in fs:
            side.append_text(
                Text.assemble(
                    "\n",
                    sev_text(f.severity),
                    " ",
                    (f.check, "bold"),
                    "\n",
                    f.message,
                    "\n",
                    ("fix: ", "italic"),
                    (f.hint, "dim"),
                    "\n",
                )
            )
        self.query_one("#example-findings", Static).update(side)

    def action_step_finding(self, delta: int) -> None:
        if self.active_tab() not in ("example", "findings") or not self.shown or not self.has_findings_table():
            return
        self.finding_pos = max(0, min(self.finding_pos + delta, len(self.shown) - 1)) if self.finding_pos >= 0 else 0
        self.query_one("#findings-table", Table).move_to(self.finding_pos)
        self.open_finding(self.shown[self.finding_pos])

    def action_step_example(self, delta: int) -> None:
        if self.active_tab() != "example" or self.examples is None or not len(self.examples):
            return
        row = 0 if self.example_row is None else max(0, min(self.example_row + delta, len(self.examples) - 1))
        self.show_example(row)

    def action_goto(self) -> None:
        if not self.run.has("audit"):
            return

        def go(answer: str | None) -> None:
            if not answer:
                return
            row = self.examples.find(answer) if self.examples else None
            if row is None:
                self.notify(f"no example {answer!r} in this run (give an id, or FILE:LINE)", severity="error")
                return
            self.show_example(row)

        self.app.push_screen(
            AskScreen("Go to example: an id (messages/3) or FILE:LINE (defects.jsonl:6)", "id or FILE:LINE"), go
        )

    def action_toggle_ids(self) -> None:
        if self.active_tab() == "example" and self.example_row is not None:
            self.show_ids = not self.show_ids
            self.show_example(self.example_row)

    # -- duplicates -----------------------------------------------------------------------------

    def fill_duplicates(self) -> None:
        rows: list[tuple[str, Any]] = [("cluster", members) for _, members in sorted(self.clusters.items())]
        rows += [("contamination", f) for f in (self.findings or []) if f.check == "dedup.contamination"]
        self.query_one("#dup-table", Table).set_rows(rows)

    @staticmethod
    def dup_cells(row: tuple[str, Any]) -> tuple[Any, ...]:
        kind, x = row
        if kind == "cluster":
            members: list[rd.Member] = x
            rep = next((m for m in members if m.representative), members[0])
            js = [m.verified for m in members if m.verified is not None and not m.representative]
            flag = Text(" contaminated", style="bold red") if any(m.contaminated for m in members) else Text("")
            return (
                f"cluster {members[0].cluster_id}",
                str(len(members)),
                rep.example_id,
                fmt(min(js), 3) if js else "—",
                Text.assemble(", ".join(m.example_id for m in members if not m.representative), flag),
            )
        f: rd.Finding = x
        other = (f.data or {}).get("other") or {}
        src = other.get("source") or {}
        return (
            Text("contamination", style="bold red"),
            "2",
            f.example_id or "",
            fmt((f.data or {}).get("verified_jaccard"), 3),
            f"evaluation copy {other.get('example_id', '?')} ({src.get('file', '?')}:{src.get('line', '?')})",
        )

    @on(Table.Highlighted, "#dup-table")
    def dup_highlighted(self, event: Table.Highlighted) -> None:
        self.member_pos = 1
        self.show_pair()

    @on(Table.Selected, "#dup-table")
    def dup_selected(self, event: Table.Selected) -> None:
        self.action_next_member()

    def example_text(self, example_id: str | None, file: str | None, line: int | None) -> str:
        row = self.examples.row_of.get(example_id) if self.examples and example_id else None
        if row is not None and self.examples is not None:
            if not self.vocab_loaded:
                self.vocab = tk.load_vocab(self.run)
                self.vocab_loaded = True
            if self.vocab is not None:
                return tk.message_texts(self.examples.get(row), self.vocab)
        raw = rd.source_line(file, line, self.run)
        return (
            rd.record_text(raw)
            if raw
            else "(text not available: not in audit/examples.parquet and the source file is unreadable)"
        )

    def show_pair(self) -> None:
        table = self.query_one("#dup-table", Table)
        row = table.current
        left, right = self.query_one("#dup-a", Static), self.query_one("#dup-b", Static)
        if row is None:
            left.update("")
            right.update("")
            return
        kind, x = row
        if kind == "cluster":
            members: list[rd.Member] = x
            rep = next((m for m in members if m.representative), members[0])
            others = [m for m in members if m is not rep] or [rep]
            other = others[(self.member_pos - 1) % len(others)]
            a = self.example_text(rep.example_id, rep.file, rep.line)
            b = self.example_text(other.example_id, other.file, other.line)
            ta, tb = tk.word_diff(a, b)
            title_a = Text.assemble(
                ("representative ", "bold green"), (rep.example_id, "bold"), f"  {rep.file}:{rep.line}\n\n"
            )
            title_b = Text.assemble(
                (f"member {(self.member_pos - 1) % len(others) + 1}/{len(others)} ", "bold"),
                (other.example_id, "bold"),
                f"  {other.file}:{other.line}  J={fmt(other.verified, 3)}",
                (" contaminated" if other.contaminated else "", "bold red"),
                ("  (m: next)\n\n", "dim"),
            )
        else:
            f: rd.Finding = x
            o = (f.data or {}).get("other") or {}
            src = o.get("source") or {}
            a = self.example_text(f.example_id, f.file, f.line)
            b = self.example_text(o.get("example_id"), src.get("file"), src.get("line"))
            ta, tb = tk.word_diff(a, b)
            title_a = Text.assemble(("training ", "bold"), (f.example_id or "", "bold"), f"  {f.where}\n\n")
            title_b = Text.assemble(
                ("evaluation copy ", "bold red"),
                (str(o.get("example_id")), "bold"),
                f"  {src.get('file')}:{src.get('line')}  J={fmt((f.data or {}).get('verified_jaccard'), 3)}\n\n",
            )
        self.pair = (title_a + ta, title_b + tb)
        left.update(self.pair[0])
        right.update(self.pair[1])

    def action_next_member(self) -> None:
        if self.active_tab() == "duplicates" and self.run.has("dedup"):
            self.member_pos += 1
            self.show_pair()

    # -- training -------------------------------------------------------------------------------

    def fill_training(self) -> None:
        from textual_plotext import PlotextPlot

        rows = rd.read_metrics(self.run)
        plots = (
            ("plot-loss", "loss", "loss"),
            ("plot-lr", "learning_rate", "learning rate"),
            ("plot-grad", "grad_norm", "grad norm"),
            ("plot-tps", "tokens_per_s", "tokens/s"),
        )
        for pid, key, title in plots:
            plot = self.query_one(f"#{pid}", PlotextPlot)
            pts = [
                (r["step"], r[key])
                for r in rows
                if isinstance(r.get("step"), (int, float))
                and isinstance(r.get(key), (int, float))
                and not math.isnan(r[key])
            ]
            plt = plot.plt
            plt.clear_data()
            self.plot_titles[key] = (
                f"{title} (last {fmt(pts[-1][1])}, {len(pts)} points)" if pts else f"{title}: no data"
            )
            plt.title(self.plot_titles[key])
            if pts:
                plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="braille")
                plt.xlabel("step")
            plot.refresh()
        self.losses = rd.read_example_loss(self.run)
        self.query_one("#loss-table", Table).set_rows(self.losses)

    @staticmethod
    def loss_cells(r: rd.ExampleLoss) -> tuple[Any, ...]:
        return (fmt(r.loss), r.example_id, fmt(r.n_tokens), fmt(r.n_trained), r.source)

    @on(Table.Selected, "#loss-table")
    def loss_selected(self, event: Table.Selected) -> None:
        r: rd.ExampleLoss = self.losses[event.index]
        row = self.examples.row_of.get(r.example_id) if self.examples else None
        if row is None and self.examples is not None and r.source:
            row = self.examples.find(r.source)
        if row is None:
            self.notify(f"{r.example_id} is not in audit/examples.parquet", severity="warning")
            return
        self.show_example(row)

    # -- probes ---------------------------------------------------------------------------------

    def fill_probes(self) -> None:
        self.probe_items = rd.read_probe(self.run, "hallucination")
        self.overfit = rd.read_probe(self.run, "overfit")
        self.relations = sorted({str(i.get("relation")) for i in self.probe_items if i.get("relation") is not None})
        self.query_one("#probe-summary", Static).update(self.probe_summary())
        self.query_one("#probe-overfit-body", Static).update(self.overfit_tables())
        self.refilter_probes()

    def refilter_probes(self) -> None:
        items = [i for i in self.probe_items if not self.relation or str(i.get("relation")) == self.relation]
        self.probe_shown = sorted(
            items, key=lambda i: (not i.get("flip"), not i.get("recovery"), str(i.get("relation")), str(i.get("id")))
        )
        table = self.query_one("#probe-table", Table)
        table.sort_note = f"[relation: {self.relation or 'all'} (r) · {len(self.probe_shown)} items, flips first]"
        table.set_rows(self.probe_shown)

    def action_next_relation(self) -> None:
        if self.active_tab() != "probes" or not self.relations:
            return
        opts = ["", *self.relations]
        self.relation = opts[(opts.index(self.relation) + 1) % len(opts)]
        self.refilter_probes()

    @staticmethod
    def probe_cells(item: dict[str, Any]) -> tuple[Any, ...]:
        def mark(side: Any) -> Text:
            if not isinstance(side, dict):
                return Text("—", style="dim")
            known = side.get("known")
            return Text(
                f"{'known' if known else 'unknown'} #{side.get('rank', '?')}", style="green" if known else "red"
            )

        tag = (
            Text("FLIP", style="bold white on red")
            if item.get("flip")
            else (Text("recovery", style="bold green") if item.get("recovery") else Text(""))
        )
        return (
            str(item.get("relation", "")),
            mark(item.get("base")),
            mark(item.get("sft")),
            tag,
            str(item.get("question", "")),
        )

    @on(Table.Highlighted, "#probe-table")
    def probe_highlighted(self, event: Table.Highlighted) -> None:
        if not 0 <= event.index < len(self.probe_shown):
            return
        item = self.probe_shown[event.index]
        for side, wid in (("base", "#probe-base"), ("sft", "#probe-sft")):
            s = item.get(side) if isinstance(item.get(side), dict) else {}
            correct = s.get("generated_correct")
            text = Text.assemble(
                (f"{side}", "bold"),
                f"  rank {s.get('rank', '—')}  margin {fmt(s.get('margin'), 3)}  ",
                ("known" if s.get("known") else "not known", "green" if s.get("known") else "red"),
                "\n",
                ("Q: ", "bold"),
                str(item.get("question", "")),
                "\n",
                ("gold: ", "bold"),
                str(item.get("gold", "")),
                "\n",
                ("predicted: ", "bold"),
                fmt(s.get("predicted")),
                "\n",
                ("generated: ", "bold"),
                (fmt(s.get("generated")), "green" if correct else "red" if correct is False else ""),
            )
            self.query_one(wid, Static).update(text)

    def probe_summary(self) -> Group:
        s = (self.run.probes or {}).get("hallucination") or {}
        parts: list[Any] = []
        if s:
            ci = s.get("flip_rate_ci")
            ci_s = f" (95% CI {fmt(ci[0], 3)}–{fmt(ci[1], 3)})" if isinstance(ci, list) and len(ci) == 2 else ""
            flagged = s.get("flagged")
            parts.append(
                Text.assemble(
                    ("hallucination  ", "bold"),
                    f"{s.get('items', '—')} items, {s.get('base_known', '—')} known by the base; ",
                    (f"{s.get('flips', '—')} flips", "bold red"),
                    f" (known → unknown), {s.get('recoveries', '—')} recoveries; "
                    f"flip rate {fmt(s.get('flip_rate'), 3)}{ci_s}, McNemar p {fmt(s.get('mcnemar_p'), 3)}  ",
                    ("FLAGGED" if flagged else "not flagged", "bold red" if flagged else "green"),
                )
            )
            by_rel = s.get("by_relation") or {}
            if isinstance(by_rel, dict) and by_rel:
                parts.append(
                    Text(
                        "  "
                        + "   ".join(
                            f"{k}: {v.get('flips', '?')}/{v.get('base_known', v.get('items', '?'))} flips"
                            if isinstance(v, dict)
                            else f"{k}: {v}"
                            for k, v in by_rel.items()
                        ),
                        style="dim",
                    )
                )
        o = (self.run.probes or {}).get("overfit")
        if isinstance(o, dict) and o:
            ci = o.get("membership_auc_ci")
            ci_s = f" (95% CI {fmt(ci[0], 3)}–{fmt(ci[1], 3)})" if isinstance(ci, list) and len(ci) == 2 else ""
            parts.append(
                Text.assemble(
                    ("overfit  ", "bold"),
                    "  ".join(
                        f"{k} {fmt(v, 3)}{ci_s if k == 'membership_auc' else ''}"
                        for k, v in o.items()
                        if isinstance(v, (int, float, str, bool))
                    ),
                )
            )
        if not parts:
            parts.append(Text("no probes/summary.json", style="dim"))
        return Group(*parts)

    def overfit_tables(self) -> Group:
        parts: list[Any] = []
        mem = [r for r in self.overfit if r.get("kind") == "memorization"]
        if mem:
            t = RichTable(
                title="memorization (train vs held-out log-prob gain)",
                title_justify="left",
                expand=True,
                show_edge=False,
            )
            for c in ("example", "split", "base logp", "sft logp", "gain", "source"):
                t.add_column(c, overflow="ellipsis", no_wrap=True)
            for r in sorted(mem, key=lambda r: -(r.get("gain") or 0))[:50]:
                src = r.get("source")
                src = f"{src.get('file')}:{src.get('line')}" if isinstance(src, dict) else str(src or "")
                t.add_row(
                    str(r.get("example_id")),
                    str(r.get("split", "")),
                    fmt(r.get("base_logp"), 4),
                    fmt(r.get("sft_logp"), 4),
                    fmt(r.get("gain"), 3),
                    src,
                )
            parts.append(t)
        stop = [r for r in self.overfit if r.get("kind") == "stopping"]
        if stop:
            t = RichTable(
                title="stopping (does the model end its answer?)", title_justify="left", expand=True, show_edge=False
            )
            for c in ("example", "stops: base", "sft", "run-on: base", "sft", "P(eot) base", "sft", "SFT generated"):
                t.add_column(c, overflow="ellipsis", no_wrap=True)
            for r in stop[:50]:
                gen = str(r.get("sft_generated") or "").replace("\n", "↵")
                t.add_row(
                    str(r.get("example_id")),
                    fmt(r.get("base_stopped")),
                    fmt(r.get("sft_stopped")),
                    fmt(r.get("base_run_on")),
                    fmt(r.get("sft_run_on")),
                    fmt(r.get("base_p_eot"), 3),
                    fmt(r.get("sft_p_eot"), 3),
                    gen[:60],
                )
            parts.append(t)
        others = sorted({str(r.get("kind")) for r in self.overfit} - {"memorization", "stopping"})
        for kind in others:
            rows = [r for r in self.overfit if str(r.get("kind")) == kind]
            parts.append(Text(f"{kind}: {len(rows)} rows", style="dim"))
        if not parts:
            parts.append(Text(f"no probes/overfit.jsonl: `probes overfit ... --run-dir {self.run.name}`", style="dim"))
        return Group(*parts)

    # -- tabs -----------------------------------------------------------------------------------

    def active_tab(self) -> str:
        return self.query_one("#tabs", TabbedContent).active

    def set_tab(self, tab: str) -> None:
        """Show `tab` and focus a widget in it: its table, else its scroll view, else the tab bar. Focus
        must leave the old pane: a focused widget in a hidden pane makes TabbedContent switch back."""
        tabs = self.query_one("#tabs", TabbedContent)
        tabs.active = tab
        target = {
            "overview": "#overview-scroll",
            "findings": "#findings-table",
            "example": "#example-tokens",
            "duplicates": "#dup-table",
            "training": "#loss-table",
            "probes": "#probe-table",
        }.get(tab)
        found = self.query_one(f"#{tab}", TabPane).query(target) if target else None
        self.set_focus(found.first() if found else tabs.query_one(Tabs))

    def action_tab(self, tab: str) -> None:
        self.set_tab(tab)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # letters typed into an Input are text, not commands
        return not (isinstance(self.app.focused, Input) and action != "tab")


# --------------------------------------------------------------------------------------------
# picker


class PickerScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "app.quit", "quit")]

    def __init__(self, root: Path, runs: list[Path]) -> None:
        super().__init__()
        self.root, self.runs = root, runs

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(
            Text.assemble(
                ("Run directories under ", "bold"), (str(self.root), "bold cyan"), " — enter opens one", style=""
            ),
            classes="missing",
        )
        yield Table(
            [Column("run", 30), Column("stages", 28), Column("updated", 0)],
            row_cells=self.cells,
            empty="no run directories here",
            id="picker",
        )
        yield Footer()

    @staticmethod
    def cells(p: Path) -> tuple[str, str, str]:
        stages = [s for s in ("audit", "dedup", "train", "probes") if (p / s).is_dir()]
        m = p / "manifest.json"
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.stat().st_mtime)) if m.is_file() else ""
        return (p.name, " ".join(stages) or "(empty)", updated)

    def on_mount(self) -> None:
        self.title = "sfttui"
        table = self.query_one("#picker", Table)
        table.set_rows(self.runs)
        table.focus()

    @on(Table.Selected, "#picker")
    def picked(self, event: Table.Selected) -> None:
        try:
            run = rd.open_run(self.runs[event.index])
        except rd.NotARunError as e:
            self.notify(str(e), severity="error")
            return
        self.app.push_screen(RunScreen(run))


# --------------------------------------------------------------------------------------------
# app


class RunCommands(Provider):
    """Command palette: the screens, and filtering the findings by a check or area."""

    def commands(self) -> list[tuple[str, Any, str]]:
        screen = self.screen  # the screen the palette was opened over
        if not isinstance(screen, RunScreen):
            return []
        out: list[tuple[str, Any, str]] = [
            (f"Show {t}", lambda t=t: screen.action_tab(t), f"switch to the {t} screen") for t in TABS
        ]
        checks = sorted(
            ((screen.run.audit or {}).get("checks") or {}).keys() | {f.check for f in screen.findings or []}
        )
        for c in [*sorted({c.split(".", 1)[0] for c in checks}), *checks]:
            out.append((f"Filter findings: {c}", lambda c=c: self.filter(screen, c), "show only these findings"))
        out.append(("Go to example…", screen.action_goto, "by id or FILE:LINE"))
        out.append(("Help: keys", lambda: self.app.push_screen(HelpScreen()), "all key bindings"))
        return out

    @staticmethod
    def filter(screen: RunScreen, check: str) -> None:
        screen.action_tab("findings")
        if not screen.has_findings_table():
            return
        select = screen.query_one("#f-check", Select)
        if check in screen.check_values:
            select.value = check
        else:
            select.clear()
        screen.refilter()

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, cb, help_text in self.commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), cb, help=help_text)

    async def discover(self) -> Hits:
        for name, cb, help_text in self.commands():
            yield Hit(1.0, name, cb, help=help_text)


class SftTui(App[None]):
    TITLE = "sfttui"
    COMMANDS = App.COMMANDS | {RunCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("d", "toggle_dark", "dark/light", show=False),
    ]

    def __init__(self, run: rd.Run | None = None, *, runs_root: Path = Path("runs"), screen: str = "overview") -> None:
        super().__init__()
        self.run_ = run
        self.runs_root = runs_root
        self.start_tab = screen
        self.t0 = time.perf_counter()

    def on_mount(self) -> None:
        if self.run_ is not None:
            self.push_screen(RunScreen(self.run_, self.start_tab))
        else:
            self.push_screen(PickerScreen(self.runs_root, rd.find_runs(self.runs_root)))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ("quit", "help", "toggle_dark") and isinstance(self.focused, Input))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sfttui",
        description="Browse a run directory: overview, findings, token view of each example, duplicates, "
        "training curves, base-vs-SFT probes. With no RUN_DIR, pick one of the run directories "
        "under --runs (default ./runs).",
        epilog="keys: 1-6 screens, ctrl+p command palette, ? help, q quit. "
        "exit codes: 0 ok, 2 not a run directory / usage, 3 crash",
    )
    p.add_argument(
        "run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (sftdata audit/dedup, sfttrain run, probes)"
    )
    p.add_argument(
        "--runs", default="runs", metavar="DIR", help="where the picker looks for run directories (default: runs)"
    )
    p.add_argument("--screen", choices=TABS, default="overview", help="the screen to open first")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = None
    if args.run_dir is not None:
        try:
            run = rd.open_run(args.run_dir)
        except rd.NotARunError as e:
            print(f"sfttui: {e}", file=sys.stderr)
            return 2
    elif not rd.find_runs(Path(args.runs)):
        print(
            f"sfttui: no run directories under {args.runs}/; pass one (sfttui RUN_DIR) or --runs DIR. "
            "Make one with `sftdata audit DATA --model MODEL --run-dir runs/NAME`",
            file=sys.stderr,
        )
        return 2
    app = SftTui(run, runs_root=Path(args.runs), screen=args.screen)
    try:
        app.run()
    except KeyboardInterrupt:
        return 130
    return 3 if app.return_code == 1 else 0


if __name__ == "__main__":
    raise SystemExit(main())
