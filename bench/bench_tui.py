"""sfttui on large runs: first paint, findings ready, example open and paging times, peak RSS.

Generates run directories of N examples with the real schema (audit/examples.parquet as
sftdata.audit writes it, in row groups of 4096; audit/findings.jsonl with one finding per example;
summary.json; manifest.json), then runs, each in a fresh process:

  sfttui    the app, headless, driven by Textual's pilot: process start -> the pilot's first
            pause returns on the Overview (first_paint_s: the pause waits for the CPU to go idle,
            so it also waits for part of the background loading: an upper bound), -> the
            findings table filled, then 20 example opens at random rows and 50 page-downs
  terminal  `sfttui RUN` in a real terminal (tmux, 120x40): process start -> the Overview's
            PASS/FAIL verdict on the screen (terminal_first_paint_s, best of 3; what a user sees)
  eager     the baseline a naive viewer pays before it can show anything: read every column of
            examples.parquet (all tokens) and parse every finding

    python bench/bench_tui.py --sizes 10000 100000 [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sftdata import rundir

CHECKS = [
    ("mask.boundary-mismatch", "warning"),
    ("length.truncated-answer", "warning"),
    ("tokens.special-in-content", "error"),
    ("format.role-order", "warning"),
    ("dedup.near", "warning"),
]


def make_run(root: Path, n: int, seed: int = 0) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    run = root / f"run-{n}"
    (run / "audit").mkdir(parents=True, exist_ok=True)
    schema = rundir.examples_schema()  # the audit's own columns
    with pq.ParquetWriter(run / "audit" / "examples.parquet", schema) as w:
        for start in range(0, n, 4096):
            k = min(4096, n - start)
            lens = rng.integers(64, 512, size=k).astype(np.int32)
            off = np.zeros(k + 1, dtype=np.int32)
            np.cumsum(lens, out=off[1:])
            total = int(off[-1])
            ids = rng.integers(3, 49152, size=total).astype(np.int32)
            pos = np.arange(total) - np.repeat(off[:-1], lens)
            half = np.repeat(lens // 2, lens)
            mask = pos >= half
            mi = np.where(pos < 4, -1, np.where(mask, 1, 0)).astype(np.int32)
            ids[off[:-1]] = 1  # a BOS-like special token opens each example
            offs = pa.array(off)
            w.write_table(
                pa.table(
                    [
                        pa.array([f"data/{i + start + 1}" for i in range(k)]),
                        pa.array(["data.jsonl"] * k),
                        pa.array(np.arange(start + 1, start + k + 1, dtype=np.int32)),
                        pa.nulls(k, pa.int32()),
                        pa.array(lens),
                        pa.array(lens),
                        pa.array((lens - lens // 2).astype(np.int32)),
                        pa.array(np.zeros(k, bool)),
                        pa.array(np.ones(k, np.int32)),
                        pa.array(["warning"] * k),
                        pa.ListArray.from_arrays(offs, pa.array(ids)),
                        pa.ListArray.from_arrays(offs, pa.array(mask)),
                        pa.ListArray.from_arrays(offs, pa.array(mi)),
                    ],
                    schema=schema,
                )
            )
    counts: dict[str, int] = {}
    with open(run / "audit" / "findings.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            check, sev = CHECKS[i % len(CHECKS)]
            counts[check] = counts.get(check, 0) + 1
            f.write(
                json.dumps(
                    {
                        "check": check,
                        "severity": sev,
                        "example_id": f"data/{i + 1}",
                        "source": {"file": "data.jsonl", "line": i + 1},
                        "message": f"synthetic finding {i} of {check}: the text a real finding carries, "
                        "with where it happened and actual vs expected",
                        "hint": "fix it the way docs/checks.md says",
                    }
                )
                + "\n"
            )
    summary = {
        "passed": False,
        "fail_on": "error",
        "model": "smollm2-135m-instruct",
        "policy": "assistant",
        "max_length": 512,
        "examples": n,
        "findings": n,
        "by_severity": {
            "error": counts.get("tokens.special-in-content", 0),
            "warning": n - counts.get("tokens.special-in-content", 0),
            "info": 0,
        },
        "checks": {c: {"severity": s, "findings": counts.get(c, 0), "examples": counts.get(c, 0)} for c, s in CHECKS},
        "token_stats": {"n_tokens": {"min": 64, "p50": 288, "max": 511}},
    }
    (run / "audit" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "created": "bench",
                "stages": {
                    "audit": {
                        "command": ["sftdata", "audit", "data.jsonl"],
                        "config": {"model": "smollm2-135m-instruct"},
                        "inputs": [{"path": "data.jsonl", "sha256": None}],
                    }
                },
            }
        ),
        encoding="utf-8",
    )
    return run


TUI = r"""
import time, resource, sys, json, random
t0 = time.perf_counter()
from tui import run as rd
from tui.app import SftTui, RunScreen
from tui.table import Table
out = {}
async def pilot_script(pilot):
    app = pilot.app
    while not isinstance(app.screen, RunScreen):
        await pilot.pause(0.005)
    await pilot.pause()  # the overview has been composed and painted
    out["first_paint_s"] = time.perf_counter() - t0
    while not app.screen.loaded:
        await pilot.pause(0.01)
    await pilot.pause()
    out["findings_ready_s"] = time.perf_counter() - t0
    screen = app.screen
    rng = random.Random(0)
    t = time.perf_counter()
    for _ in range(20):
        screen.show_example(rng.randrange(len(screen.examples)))
        await pilot.pause()
    out["example_open_ms"] = (time.perf_counter() - t) / 20 * 1000
    await pilot.press("2")
    screen.query_one("#findings-table", Table).focus()
    t = time.perf_counter()
    for _ in range(50):
        await pilot.press("pagedown")
    await pilot.pause()
    out["page_down_ms"] = (time.perf_counter() - t) / 50 * 1000
    t = time.perf_counter()
    screen.query_one("#f-text").value = "special"
    await pilot.pause()
    out["filter_ms"] = (time.perf_counter() - t) * 1000
    out["rows_after_filter"] = len(screen.shown)
    app.exit()
app = SftTui(rd.open_run(sys.argv[1]))
app.run(headless=True, size=(120, 40), auto_pilot=pilot_script)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""

EAGER = r"""
import time, resource, sys, json
t0 = time.perf_counter()
import pyarrow.parquet as pq
table = pq.ParquetFile(sys.argv[1] + "/audit/examples.parquet").read()
findings = [json.loads(l) for l in open(sys.argv[1] + "/audit/findings.jsonl", encoding="utf-8")]
print(json.dumps({"load_s": time.perf_counter() - t0, "rows": table.num_rows, "findings": len(findings),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def terminal_first_paint(run: Path, repeats: int = 3) -> float | None:
    """Seconds from starting `sfttui RUN` in a real terminal (a detached tmux session, 120x40) until
    the Overview's verdict (PASS/FAIL) is on the screen, read with `tmux capture-pane` every 10 ms;
    best of `repeats`. None without tmux."""
    import shutil

    if shutil.which("tmux") is None:
        return None
    sfttui = Path(sys.executable).with_name("sfttui")
    best = None
    for k in range(repeats):
        name = f"bench-tui-{os.getpid()}-{k}"
        t0 = time.perf_counter()
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", f"{sfttui} {run}"], check=True
        )
        try:
            while time.perf_counter() - t0 < 60:
                screen = subprocess.run(
                    ["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True, check=False
                ).stdout
                if "PASS" in screen or "FAIL" in screen:
                    took = time.perf_counter() - t0
                    best = took if best is None else min(best, took)
                    break
                time.sleep(0.01)
            subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=False)
            time.sleep(1.0)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)
    return best


def child(code: str, run: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, check=False, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--keep", type=Path, help="build the runs here (kept) instead of a temporary directory")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-tui-"))
    for n in args.sizes:
        t = time.perf_counter()
        run = make_run(root, n)
        size = (run / "audit" / "examples.parquet").stat().st_size / 2**20
        print(f"n={n}: run built in {time.perf_counter() - t:.1f} s (examples.parquet {size:.0f} MiB)", flush=True)
        tui, eager = child(TUI, run), child(EAGER, run)
        tui["terminal_first_paint_s"] = terminal_first_paint(run)
        print(
            json.dumps(
                {
                    "n": n,
                    "sfttui": tui,
                    "eager_baseline": eager,
                    "first_paint_vs_eager_load": round(eager["load_s"] / tui["first_paint_s"], 2),
                    "rss_vs_eager": round(eager["peak_rss_mb"] / tui["peak_rss_mb"], 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
