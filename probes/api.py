"""The Python API: `probes.hallucination(...)` and `probes.overfit(...)` return a Report; with
`run_dir` they also write RUN/probes/ and update RUN/manifest.json (DESIGN.md §4).

    report = probes.hallucination(base="smollm2-135m-instruct", sft="runs/demo", suite="builtin")
    assert not report.flagged, report.summary["by_relation"]

`base`/`sft` are what the CLI flags take (strings) or in-process models (then pass `tokenizer`, and
`sft_tokenizer` when the SFT tokenizer differs; the same PeftModel twice toggles its adapter).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from probes import facts as hallucination_mod
from probes.facts import Report
from probes.pair import Pair, load_pair, pair_from_models
from probes.suite import Item, read_suite, suite_path
from sftdata import rundir


def make_pair(base: Any, sft: Any, tokenizer: Any = None, sft_tokenizer: Any = None) -> Pair:
    if isinstance(sft, (str, os.PathLike)):
        return load_pair(None if base is None else str(base), str(sft))
    if tokenizer is None:
        raise ValueError("in-process models need tokenizer= (and sft_tokenizer= when it differs)")
    return pair_from_models(base, sft, tokenizer, sft_tokenizer)


def hallucination(
    base: Any = None,
    sft: Any = None,
    suite: str | list[Item] = "builtin",
    *,
    tokenizer: Any = None,
    sft_tokenizer: Any = None,
    run_dir: str | os.PathLike[str] | None = None,
    method: str = "likelihood",
    tie: float = hallucination_mod.TIE,
    alpha: float = hallucination_mod.ALPHA,
    floor: float = hallucination_mod.FLOOR,
    limit: int | None = None,
    pair: Pair | None = None,
    command: list[str] | None = None,
) -> Report:
    """Run the narrow-hallucination probe (probes.hallucination module docstring). `command` is
    what the run directory's manifest records as the command (default: this process's argv)."""
    if isinstance(suite, str):
        items, bad = read_suite(suite)
    else:
        items, bad = list(suite), []
    pool = items
    if limit is not None:
        items = per_relation_subset(items, limit)
    pair = pair or make_pair(base, sft, tokenizer, sft_tokenizer)
    report = hallucination_mod.run(pair, items, method=method, tie=tie, alpha=alpha, floor=floor, shot_pool=pool)
    report = Report(
        report.command,
        {**report.summary, "suite": suite if isinstance(suite, str) else "<in-process>", "bad_rows": len(bad)},
        report.records,
        [*bad, *report.findings],
    )
    if run_dir is not None:
        inputs = [str(suite_path(suite))] if isinstance(suite, str) else []
        write_report(run_dir, report, "hallucination.jsonl", inputs=inputs, command=command)
    return report


def per_relation_subset(items: list[Item], per_relation: int) -> list[Item]:
    """The last `per_relation` items of every relation, in suite order: a quick run that keeps every
    relation (the last ones are never few-shot examples, so their prompts share one prefix)."""
    by_relation: dict[str, list[Item]] = {}
    for it in items:
        by_relation.setdefault(it.relation, []).append(it)
    keep = {it.id for group in by_relation.values() for it in group[-per_relation:]}
    return [it for it in items if it.id in keep]


def write_report(
    run_dir: str | os.PathLike[str],
    report: Report,
    records_name: str,
    *,
    inputs: list[str] = (),
    command: list[str] | None = None,
) -> None:
    """RUN/probes/<records_name>, this command's key of RUN/probes/summary.json, the manifest stage."""
    out = Path(run_dir) / "probes"
    rundir.write_jsonl(out / records_name, report.records)
    summary_path = out / "summary.json"
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            summary = {}
    summary[report.command] = {**report.summary, "findings": len(report.findings)}
    rundir.write_json(summary_path, summary)
    rundir.update_manifest(
        run_dir,
        f"probes.{report.command}",
        command=command,  # None: this process's argv (rundir.update_manifest)
        config={k: v for k, v in report.summary.items() if isinstance(v, (str, int, float, bool))},
        inputs=inputs,
    )


def overfit(*args: Any, **kwargs: Any) -> Report:
    """Run the overfitting probes (probes.overfit module docstring)."""
    from probes import overfitting as overfit_mod

    return overfit_mod.api(*args, **kwargs)
