"""Reading a run directory (DESIGN.md §4) for the TUI: files only, no sftdata/torch imports.

Everything here is tolerant: a missing file means the stage is absent, an unreadable file or line
becomes a `problems` entry shown on the Overview, extra or missing columns are ignored. Examples'
tokens are never loaded up front: `Examples` reads the small columns once (ids, sources, lengths)
and one parquet row group at a time on demand.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}

# what produces each stage, shown where a run lacks it
PRODUCERS = {
    "audit": "sftdata audit DATA.jsonl --model MODEL --run-dir {run}",
    "dedup": "sftdata dedup DATA.jsonl --against EVAL.jsonl --run-dir {run}",
    "train": "sfttrain run CONFIG.yaml --output-dir {run}",
    "probes": "probes hallucination --base MODEL --sft {run} --run-dir {run}   (and: probes overfit ...)",
}


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    severity: str
    example_id: str | None
    file: str | None
    line: int | None
    message: str
    hint: str
    stage: str  # audit | dedup
    data: dict[str, Any] | None = None

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    @property
    def area(self) -> str:
        return self.check.split(".", 1)[0]


@dataclass
class Run:
    path: Path
    manifest: dict[str, Any]
    audit: dict[str, Any] | None  # audit/summary.json
    dedup: dict[str, Any] | None  # dedup/summary.json
    probes: dict[str, Any] | None  # probes/summary.json
    problems: list[str] = field(default_factory=list)  # unreadable files and lines, shown on the Overview

    @property
    def name(self) -> str:
        return str(self.path)

    def has(self, stage: str) -> bool:
        d = self.path / stage
        if stage == "audit":
            return (d / "summary.json").is_file() or (d / "findings.jsonl").is_file()
        if stage == "dedup":
            return (d / "clusters.parquet").is_file() or (d / "summary.json").is_file()
        if stage == "train":
            return (d / "metrics.jsonl").is_file()
        if stage == "probes":
            return d.is_dir() and any(p.suffix in (".jsonl", ".json") for p in d.iterdir())
        return d.is_dir()

    def producer(self, stage: str) -> str:
        return PRODUCERS[stage].format(run=self.name)


class NotARunError(Exception):
    """The path is not a run directory (the CLI turns this into exit 2)."""


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "manifest.json").is_file() or any((path / s).is_dir() for s in ("audit", "dedup", "train", "probes"))
    )


def find_runs(root: Path) -> list[Path]:
    """Run directories directly under `root` (and `root` itself if it is one), newest first."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if is_run_dir(p)]
    if is_run_dir(root):
        runs.append(root)
    return sorted(
        runs,
        key=lambda p: (p / "manifest.json").stat().st_mtime if (p / "manifest.json").exists() else p.stat().st_mtime,
        reverse=True,
    )


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path}: unreadable ({e}); the screens that need it show nothing")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{path}: expected a JSON object, found {type(obj).__name__}")
        return None
    return obj


def open_run(path: str | os.PathLike[str]) -> Run:
    p = Path(path)
    if not p.exists():
        raise NotARunError(f"{p}: no such directory")
    if not is_run_dir(p):
        raise NotARunError(
            f"{p}: not a run directory (no manifest.json, audit/, dedup/, train/ or probes/ in it); "
            "make one with `sftdata audit DATA --model MODEL --run-dir DIR`"
        )
    problems: list[str] = []
    manifest = _read_json(p / "manifest.json", problems) or {}
    return Run(
        p,
        manifest,
        _read_json(p / "audit" / "summary.json", problems),
        _read_json(p / "dedup" / "summary.json", problems),
        _read_json(p / "probes" / "summary.json", problems),
        problems,
    )


# --------------------------------------------------------------------------------------------
# JSONL


def read_jsonl(path: Path, problems: list[str]) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file; bad lines become one problem line each (the first 5) and are skipped."""
    if not path.is_file():
        return
    bad = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    bad += 1
                    if bad <= 5:
                        problems.append(f"{path}:{n}: not valid JSON ({e}); line skipped")
                    continue
                if isinstance(obj, dict):
                    yield obj
                else:
                    bad += 1
                    if bad <= 5:
                        problems.append(f"{path}:{n}: expected a JSON object; line skipped")
    except OSError as e:
        problems.append(f"{path}: unreadable ({e})")
    if bad > 5:
        problems.append(f"{path}: {bad - 5} more bad lines skipped")


def _finding(obj: dict[str, Any], stage: str) -> Finding:
    src = obj.get("source") if isinstance(obj.get("source"), dict) else {}
    line = src.get("line", src.get("row"))
    sev = str(obj.get("severity") or "info")
    return Finding(
        check=str(obj.get("check") or "?"),
        severity=sev if sev in SEVERITY_RANK else "info",
        example_id=None if obj.get("example_id") is None else str(obj["example_id"]),
        file=None if src.get("file") is None else str(src["file"]),
        line=line if isinstance(line, int) else None,
        message=str(obj.get("message") or ""),
        hint=str(obj.get("hint") or ""),
        stage=stage,
        data=obj.get("data") if isinstance(obj.get("data"), dict) else None,
    )


def read_findings(run: Run) -> list[Finding]:
    """audit/findings.jsonl then dedup/findings.jsonl (when the audit already holds dedup findings
    from the same run, those are not repeated)."""
    out = [_finding(o, "audit") for o in read_jsonl(run.path / "audit" / "findings.jsonl", run.problems)]
    seen = {(f.check, f.example_id) for f in out if f.check.startswith("dedup.")}
    out += [
        f
        for f in (_finding(o, "dedup") for o in read_jsonl(run.path / "dedup" / "findings.jsonl", run.problems))
        if (f.check, f.example_id) not in seen
    ]
    return out


def sort_findings(findings: list[Finding], key: str, reverse: bool = False) -> list[Finding]:
    keys = {
        "severity": lambda f: (SEVERITY_RANK.get(f.severity, 9), f.check, f.file or "", f.line or 0),
        "check": lambda f: (f.check, SEVERITY_RANK.get(f.severity, 9), f.file or "", f.line or 0),
        "source": lambda f: (f.file or "", f.line or 0, f.check),
        "example": lambda f: (f.example_id or "", f.check),
        "message": lambda f: (f.message, f.check),
    }
    return sorted(findings, key=keys[key], reverse=reverse)


def haystacks(findings: list[Finding]) -> list[str]:
    """What free-text search looks in, lower-cased, one string per finding (computed once)."""
    return [f"{f.check} {f.example_id} {f.where} {f.message} {f.hint}".lower() for f in findings]


def filter_findings(
    findings: list[Finding], check: str = "", severity: str = "", text: str = "", hay: list[str] | None = None
) -> list[Finding]:
    """`check`: an id or an area ("mask" or "mask.*"); `severity`: one level; `text`: words that must
    all occur (case-insensitive) in the check, example id, source, message or hint (`hay`: the
    precomputed `haystacks(findings)`)."""
    check = check.removesuffix(".*")
    words = text.lower().split()
    if words and hay is None:
        hay = haystacks(findings)
    out = []
    for k, f in enumerate(findings):
        if check and f.check != check and f.area != check:
            continue
        if severity and f.severity != severity:
            continue
        if words and not all(w in hay[k] for w in words):  # type: ignore[index]
            continue
        out.append(f)
    return out


# --------------------------------------------------------------------------------------------
# audit/examples.parquet: small columns at once, tokens one row group at a time


@dataclass(frozen=True)
class Example:
    id: str
    file: str | None
    line: int | None
    n_tokens: int
    n_tokens_full: int | None
    n_trained: int | None
    truncated: bool
    input_ids: list[int]
    loss_mask: list[bool]
    message_index: list[int]

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file


SMALL_COLUMNS = ("id", "file", "line", "row", "n_tokens", "n_tokens_full", "n_trained", "truncated")
TOKEN_COLUMNS = ("input_ids", "loss_mask", "message_index")


class Examples:
    """Index of audit/examples.parquet: ids and sources in memory, tokens read per row group
    (the last few row groups are kept)."""

    def __init__(self, path: Path, cache_groups: int = 2):
        import pyarrow.parquet as pq

        self.path = path
        self.file = pq.ParquetFile(path)
        names = set(self.file.schema_arrow.names)
        if "id" not in names:
            raise ValueError(f"{path}: no `id` column (columns: {', '.join(sorted(names))})")
        cols = [c for c in SMALL_COLUMNS if c in names]
        self.token_columns = [c for c in TOKEN_COLUMNS if c in names]
        table = self.file.read(columns=cols)
        self.columns = {c: table.column(c).to_pylist() for c in cols}
        self.ids: list[str] = [str(x) for x in self.columns["id"]]
        self.n = len(self.ids)
        self.row_of = {x: i for i, x in enumerate(self.ids)}
        starts = [0]
        for g in range(self.file.num_row_groups):
            starts.append(starts[-1] + self.file.metadata.row_group(g).num_rows)
        self.group_starts = starts
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._cache_groups = cache_groups
        self._by_source: dict[tuple[str, int], int] | None = None

    def __len__(self) -> int:
        return self.n

    def lengths(self) -> list[int]:
        return [x or 0 for x in self.columns.get("n_tokens", [])]

    def _line(self, i: int) -> int | None:
        line = self.columns.get("line", [None] * (i + 1))[i]
        return line if line is not None else self.columns.get("row", [None] * (i + 1))[i]

    def find(self, query: str) -> int | None:
        """Row of an example id, or of FILE:LINE (FILE may be a suffix of the stored path)."""
        query = query.strip()
        if query in self.row_of:
            return self.row_of[query]
        file, _, line = query.rpartition(":")
        if not file or not line.strip().isdigit():
            return None
        if self._by_source is None:
            files = self.columns.get("file", [None] * self.n)
            self._by_source = {(str(files[i]), ln): i for i in range(self.n) if (ln := self._line(i)) is not None}
        want = int(line)
        exact = self._by_source.get((file, want))
        if exact is not None:
            return exact
        matches = [
            i
            for (f, ln), i in self._by_source.items()
            if ln == want and (f.endswith("/" + file) or os.path.basename(f) == file)
        ]
        return min(matches) if matches else None

    def _group(self, g: int) -> Any:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        table = self.file.read_row_group(g, columns=self.token_columns)
        self._cache[g] = table
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return table

    def get(self, i: int) -> Example:
        import bisect

        g = bisect.bisect_right(self.group_starts, i) - 1
        row = self._group(g).slice(i - self.group_starts[g], 1).to_pylist()[0]
        c = self.columns

        def col(name: str) -> Any:
            return c[name][i] if name in c else None

        ids = row.get("input_ids") or []
        return Example(
            id=self.ids[i],
            file=col("file"),
            line=self._line(i),
            n_tokens=col("n_tokens") or len(ids),
            n_tokens_full=col("n_tokens_full"),
            n_trained=col("n_trained"),
            truncated=bool(col("truncated")),
            input_ids=list(ids),
            loss_mask=list(row.get("loss_mask") or [False] * len(ids)),
            message_index=list(row.get("message_index") or [-1] * len(ids)),
        )


def open_examples(run: Run) -> Examples | None:
    path = run.path / "audit" / "examples.parquet"
    if not path.is_file():
        return None
    try:
        return Examples(path)
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on a broken file
        run.problems.append(f"{path}: unreadable ({e}); the Example screen has no tokens")
        return None


def histogram(values: list[int], bins: int = 12) -> list[tuple[int, int, int]]:
    """(low, high, count) buckets over [min, max], equal widths rounded up to whole tokens."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    counts = [0] * math.ceil((hi - lo + 1) / width)
    for v in values:
        counts[(v - lo) // width] += 1
    return [(lo + k * width, lo + (k + 1) * width - 1, n) for k, n in enumerate(counts)]


# --------------------------------------------------------------------------------------------
# source records (for examples the audit could not tokenize, and --against examples)


def source_line(file: str | None, line: int | None, run: Run | None = None) -> str | None:
    """The raw text of FILE:LINE (1-based) of a JSONL input, or None when unavailable."""
    if not file or not line:
        return None
    candidates = [Path(file)]
    if run is not None and not Path(file).is_absolute():
        candidates.append(run.path.parent / file)
    for p in candidates:
        if p.is_file() and p.suffix in (".jsonl", ".json", ".txt", ".csv"):
            try:
                with open(p, encoding="utf-8", errors="replace") as f:
                    for n, text in enumerate(f, 1):
                        if n == line:
                            return text.rstrip("\n")
            except OSError:
                return None
    return None


def record_text(raw: str) -> str:
    """The human text of a raw JSONL record: its string values in order (message contents, etc.)."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    out: list[str] = []

    def walk(x: Any, key: str = "") -> None:
        if isinstance(x, str):
            if key in ("role", "from", "id", "name", "type"):
                out.append(f"[{x}]")
            else:
                out.append(x)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, k)
        elif isinstance(x, list):
            for v in x:
                walk(v, key)

    walk(obj)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# dedup/clusters.parquet


@dataclass(frozen=True)
class Member:
    cluster_id: int
    example_id: str
    file: str | None
    line: int | None
    representative: bool
    representative_id: str | None
    estimated: float | None
    verified: float | None
    contaminated: bool


def read_clusters(run: Run) -> dict[int, list[Member]]:
    path = run.path / "dedup" / "clusters.parquet"
    if not path.is_file():
        return {}
    try:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path).read()
    except (OSError, ValueError) as e:
        run.problems.append(f"{path}: unreadable ({e})")
        return {}
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    n = table.num_rows
    if "cluster_id" not in cols or "example_id" not in cols:
        run.problems.append(f"{path}: needs cluster_id and example_id columns (has {', '.join(table.column_names)})")
        return {}

    def col(name: str, *alts: str) -> list[Any]:
        for c in (name, *alts):
            if c in cols:
                return cols[c]
        return [None] * n

    file, line = col("source_file", "file"), col("source_line", "line")
    rep, rep_id = col("representative"), col("representative_id")
    est, ver, cont = col("estimated_jaccard", "estimated"), col("verified_jaccard", "verified"), col("contaminated")
    out: dict[int, list[Member]] = {}
    for i in range(n):
        # `representative` was once the representative's id (a string), now a bool with representative_id
        r = rep[i]
        is_rep = bool(r) if isinstance(r, bool) or r is None else str(r) == str(cols["example_id"][i])
        rid = rep_id[i] if rep_id[i] is not None else (r if isinstance(r, str) else None)
        out.setdefault(int(cols["cluster_id"][i]), []).append(
            Member(
                int(cols["cluster_id"][i]),
                str(cols["example_id"][i]),
                file[i],
                line[i],
                is_rep,
                rid,
                est[i],
                ver[i],
                bool(cont[i]),
            )
        )
    for members in out.values():
        members.sort(key=lambda m: (not m.representative, m.example_id))
    return out


# --------------------------------------------------------------------------------------------
# train/


def read_metrics(run: Run) -> list[dict[str, Any]]:
    return list(read_jsonl(run.path / "train" / "metrics.jsonl", run.problems))


@dataclass(frozen=True)
class ExampleLoss:
    example_id: str
    source: str
    n_tokens: int | None
    n_trained: int | None
    loss: float


def read_example_loss(run: Run) -> list[ExampleLoss]:
    """train/example_loss.parquet ranked by loss, highest first (NaN losses last)."""
    path = run.path / "train" / "example_loss.parquet"
    if not path.is_file():
        return []
    try:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path).read()
    except (OSError, ValueError) as e:
        run.problems.append(f"{path}: unreadable ({e})")
        return []
    cols = {c: table.column(c).to_pylist() for c in table.column_names}
    n = table.num_rows
    if "example_id" not in cols or "loss" not in cols:
        run.problems.append(f"{path}: needs example_id and loss columns (has {', '.join(table.column_names)})")
        return []
    none = [None] * n
    rows = [
        ExampleLoss(
            str(cols["example_id"][i]),
            str(cols.get("source", none)[i] or ""),
            cols.get("n_tokens", none)[i],
            cols.get("n_trained", none)[i],
            float("nan") if cols["loss"][i] is None else float(cols["loss"][i]),
        )
        for i in range(n)
    ]
    return sorted(rows, key=lambda r: (math.isnan(r.loss), -r.loss if not math.isnan(r.loss) else 0.0))


# --------------------------------------------------------------------------------------------
# probes/


def read_probe(run: Run, name: str) -> list[dict[str, Any]]:
    return list(read_jsonl(run.path / "probes" / f"{name}.jsonl", run.problems))
