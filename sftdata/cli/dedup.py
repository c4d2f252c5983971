"""`sftdata dedup INPUT... [--against FILE...]`: exact and near-duplicates, eval contamination.

Prints counts and, per check, the first examples -o drops and why (the kept example, file:line);
`--json` prints one JSON object instead. `-o KEPT` writes one example per duplicate cluster plus
every example without a duplicate, minus those contaminated by --against, in the input's format.
`--run-dir DIR` writes dedup/clusters.parquet, dedup/pairs.parquet, dedup/findings.jsonl and
dedup/summary.json there (nothing is written without it). Findings are per example: one per
example -o drops (naming the kept one) and one per contaminated training example. A progress bar
on stderr while it works, when stderr is a terminal. Exit 0 when nothing was found, 1 when duplicates, contamination
or unreadable records were, 2 on usage errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sftdata import dedup, formats, progress, readers, rundir
from sftdata.cli import kit
from sftdata.records import Conversation, Finding

EXAMPLES = """\
examples:
  sftdata dedup data/train.jsonl
  sftdata dedup data/train.jsonl --against data/eval.jsonl -o runs/train.dedup.jsonl
  sftdata dedup shard-*.jsonl --fields prompt --threshold 0.7 --run-dir runs/exp1 --json
  sftdata dedup shard-3.jsonl --lsh-storage redis://127.0.0.1:6379/0   # index shared by several workers

how it decides:
  text      --fields prompt (non-assistant messages), answer (assistant messages) or all, normalised:
            NFKC, casefolded, punctuation removed, whitespace collapsed
  exact     identical normalised texts                                   -> dedup.exact (warning)
  near      MinHash + LSH candidates, each verified by the exact Jaccard
            similarity of the shingle sets >= --threshold                -> dedup.near (warning)
  against   any training example exact- or near-duplicating an --against
            example                                                      -> dedup.contamination (error)
  shingles  --shingle words:N (default words:5) or chars:N; texts that are mostly Chinese/Japanese
            use chars:3; a text shorter than N units is a single shingle
  LSH       bands x rows derived from --threshold so a pair at exactly the threshold is a
            candidate with probability >= 0.95
  findings  one per example -o drops (naming the kept example, the cluster size and the Jaccard
            to it) and one per contaminated training example; the pairs: --run-dir's
            dedup/pairs.parquet. A progress bar on stderr when it is a terminal.
"""
SHOW_DROPPED = 4
SHOW_LOCATIONS = 3


def main(argv: list[str] | None = None) -> int:
    return kit.run(lambda: _without_gc(_dedup, argv))


def _without_gc(fn: Any, *args: Any) -> Any:
    """fn(*args) with the cyclic garbage collector paused: reading allocates a few objects per
    record, and the collections they trigger walk every conversation read so far, again and
    again (a tenth of the reading time on T0) to find no cycles."""
    if not gc.isenabled():
        return fn(*args)
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def _parser() -> Any:
    p = kit.parser("sftdata dedup", "Find exact and near-duplicate examples and evaluation-set contamination.")
    p.epilog = EXAMPLES
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="training data files (any format sftdata reads)")
    p.add_argument(
        "--against",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="evaluation sets / probe suites: training examples duplicating them are contamination",
    )
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity for a near-duplicate (default 0.8)")
    p.add_argument(
        "--fields",
        default="all",
        choices=dedup.FIELDS,
        help="compare prompts (non-assistant messages), answers, or all (default)",
    )
    p.add_argument("--shingle", default="words:5", help="words:N or chars:N (default words:5)")
    p.add_argument(
        "--keep",
        default="first",
        choices=dedup.KEEP,
        help="which example of a cluster -o keeps: the first or the longest (default first)",
    )
    p.add_argument("-o", "--output", metavar="KEPT", help="write the kept examples here, in the input's format")
    p.add_argument("--json", action="store_true", help="print one JSON object (summary + findings) on stdout")
    p.add_argument(
        "--run-dir", metavar="DIR", help="write dedup/clusters.parquet, pairs.parquet, findings and summary into DIR"
    )
    p.add_argument(
        "--lsh-storage",
        metavar="URL",
        help="redis://HOST:PORT/DB: a datasketch MinHashLSH index in Redis, shared by several workers",
    )
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    p.add_argument("--seed", type=_seed, default=1, help="MinHash seed, 0 to 2**32-1 (default 1, datasketch's default)")
    return p


def _seed(text: str) -> int:
    """argparse type: a MinHash seed numpy's RandomState takes (0 <= seed < 2**32)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"must be between 0 and 2**32-1 = {2**32 - 1} (numpy's seed range), got {value}"
        )
    return value


def _dedup(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    config = dedup.DedupConfig(
        threshold=args.threshold,
        fields=args.fields,
        shingle=args.shingle,
        keep=args.keep,
        num_perm=args.num_perm,
        seed=args.seed,
        lsh_storage=args.lsh_storage,
    )
    problems = config.problems()
    if problems:
        raise kit.UsageError("; ".join(problems))
    if args.output:
        _check_output(args.output)  # a bad -o fails before the work
        rundir.check_output(args.output, "-o")
    if args.run_dir:
        rundir.check_output(args.run_dir, "--run-dir", directory=True)
    if (args.inputs + args.against).count(readers.STDIN) > 1:
        raise kit.UsageError("`-` (standard input) can be given once, as an INPUT or an --against file")
    args.inputs = [readers.local_path(p) for p in args.inputs]
    args.against = [readers.local_path(p) for p in args.against]

    train_files = _open_all(args.inputs, "INPUT")  # a bad path or format fails before the kernels load
    against_files = _open_all(args.against, "--against")
    _load_kernels()  # before reading: the workers that sign while it reads need them from the start
    read_findings: list[Finding] = []
    total = progress.count_examples(args.inputs + args.against) if progress.is_shown() else None
    try:
        with contextlib.ExitStack() as bars:
            bar = bars.enter_context(progress.bar("reading", total))
            train = _examples(train_files, read_findings, bar)
            against = _examples(against_files, read_findings, bar)
            result = dedup.dedup(train, against, config, progress=_stages(bars))
    except _redis_errors() as e:
        raise kit.UsageError(
            f"--lsh-storage {args.lsh_storage}: cannot use Redis ({e}); start redis-server or fix the URL"
        ) from None

    findings = list(read_findings) + list(result.findings)
    summary = dict(result.summary)
    summary["inputs"] = list(args.inputs)
    summary["against"] = list(args.against)
    summary["unreadable_records"] = sum(f.severity == "error" for f in read_findings)
    if args.output:
        out_fmt = _output_format(args.output, args.inputs[0])
        kept = [result.examples[i] for i in result.kept]
        written = formats.write(kept, args.output, out_fmt)
        findings.extend(written.skipped)
        summary.update(
            output=args.output,
            output_format=formats.output_format(args.output, out_fmt),
            written=written.written,
            not_written=len(written.skipped),
        )
    if args.run_dir:
        _write_run_dir(args.run_dir, result, findings, summary, config, argv, args.inputs + args.against)
        summary["run_dir"] = args.run_dir

    if args.json:
        kit.print_json("dedup", summary, [f.to_dict() for f in findings], finite=True)  # Jaccards, counts, text
    else:
        _print_report(summary, result, read_findings)
    found = result.findings or summary["unreadable_records"] or summary.get("not_written")
    return kit.EXIT_FINDINGS if found else kit.EXIT_OK


def _load_kernels() -> None:
    """Load the compiled kernels (the ahead-of-time module: milliseconds; else numba's on-disk
    cache: 0.5-0.7 s) before reading, in this
    thread. On a thread of their own while the main thread parsed the input they took 2.7 s on T0:
    loading calls into LLVM, releasing the GIL each time, and waited up to the 5 ms switch
    interval for it back every time, so the signing workers started late. Without scipy.linalg:
    the first time numba loads a compiled function it imports `scipy.linalg.cython_blas` only to
    learn whether np.correlate/np.convolve may call BLAS (sftdata's kernels call neither), 0.45 s.
    The import is blocked only in this command's process and only while the kernels load; numba
    then uses its own loop for those two functions for the rest of the process. Where the kernels
    were compiled ahead of time (`python -m sftdata.aot`) none of this happens: numba is not
    imported at all."""
    from sftdata import aot

    if aot.in_use():
        dedup.load_kernels()
        return
    blocked = _BLAS not in sys.modules
    if blocked:
        sys.modules[_BLAS] = None  # type: ignore[assignment]  # `import` raises ImportError
    try:
        with _cache_loads_without_registries():
            dedup.load_kernels()
    except ImportError:  # numba missing: dedup.dedup raises it again, with the install hint, in the main thread
        return
    finally:
        if blocked and sys.modules.get(_BLAS, 0) is None:
            del sys.modules[_BLAS]


_BLAS = "scipy.linalg.cython_blas"
_FAST_LOAD_NUMBA = ("0.68.",)  # numba versions whose cache loading `_cache_loads_without_registries` was tested on


@contextlib.contextmanager
def _cache_loads_without_registries() -> Iterator[None]:
    """While the kernels load from numba's on-disk cache: skip the typing and lowering registries
    (0.55 -> 0.17 s on T0's machine). Numba's `Cache.load_overload` refreshes the target context
    before loading a cached function; the refresh starts numba's runtime (NRT, whose symbols the
    cached code links against) and imports and installs every registry numba compiles with
    (numpy, linalg, cpython, ...: 0.4 s), which running already-compiled code never uses. Here it
    starts the runtime only (`rtsys.initialize`, what `load_additional_registries` does first).
    A cache miss compiles as usual: the compiler refreshes the context itself. Only on numba
    versions this was tested on, and only while the CLI loads its kernels; anything else loads as
    numba does (a test runs the CLI both ways and compares)."""
    try:
        import numba
        from numba.core import caching
        from numba.core.runtime import rtsys
    except ImportError:
        yield
        return
    cache = caching.Cache
    load = cache.__dict__.get("load_overload")
    usable = (
        numba.__version__.startswith(_FAST_LOAD_NUMBA)
        and load is not None
        and callable(getattr(cache, "_load_overload", None))
        and callable(getattr(cache, "_guard_against_spurious_io_errors", None))
        and callable(getattr(rtsys, "initialize", None))
        and os.environ.get("SFTDATA_NUMBA_FAST_LOAD", "1").strip() != "0"
    )
    if not usable:
        yield
        return

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    cache.load_overload = load_overload
    try:
        yield
    finally:
        cache.load_overload = load


def _check_output(output: str) -> None:
    try:
        formats.output_format(output)
    except kit.SftlabError as e:
        raise kit.UsageError(f"-o: {e.describe(kit.flag(e.param))}") from None


def _output_format(output: str, first_input: str) -> str | None:
    """-o writes the first input's format (detected again from its first records); a .parquet
    output holds the messages format, and so does a .jsonl/.json output of an undetectable input."""
    fmt = formats.detect_file_format(first_input)
    if fmt is None or output.lower().removesuffix(".gz").endswith(".parquet"):
        return None
    try:
        formats.output_format(output, fmt)
    except kit.SftlabError:
        return None  # e.g. a format the output container cannot hold: the default format
    return fmt


def _open_all(paths: list[str], flag: str) -> list[Iterator[Conversation | Finding]]:
    """formats.read of each path: what it raises (no such file, no format) as a usage error now."""
    opened = []
    for path in paths:
        try:
            opened.append(formats.read(path))
        except kit.SftlabError as e:
            raise kit.UsageError(f"{flag} {e.describe(kit.flag(e.param))}") from None
    return opened


def _examples(
    files: list[Iterator[Conversation | Finding]], findings: list[Finding], bar: Any
) -> Iterator[Conversation]:
    """The examples of the opened files, read as dedup takes them in; what reading finds goes to
    `findings`."""
    for items in files:
        for item in items:
            if isinstance(item, Conversation):
                bar.update()
                yield item
            else:
                findings.append(item)
                if item.severity == "error":
                    bar.update()


def _stages(bars: contextlib.ExitStack) -> Any:
    """dedup's progress callback. The reading bar (in `bars`) counts examples during the "read"
    stage; then it gives way to a bar of one step per finished stage, the current stage's name shown."""
    state: dict[str, Any] = {}

    def on_stage(name: str) -> None:
        if name == dedup.STAGES[0]:
            return
        if "bar" not in state:
            bars.close()  # the reading bar: the input is read
            state["bar"] = bars.enter_context(progress.bar("dedup", len(dedup.STAGES) - 1, unit="stage"))
        else:
            state["bar"].update(1)
        state["bar"].set_description_str(f"dedup: {name}")

    return on_stage


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis
    except ImportError:
        return (ImportError,)
    return (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ResponseError,
        ImportError,
    )


def _write_run_dir(
    run_dir: str,
    result: dedup.DedupResult,
    findings: list[Finding],
    summary: dict[str, Any],
    config: dedup.DedupConfig,
    argv: list[str] | None,
    inputs: list[str],
) -> None:
    if kit.WHOLE_PROCESS:
        rundir.pyarrow_without_pandas()
    import pyarrow as pa

    schema = pa.schema(
        [
            ("cluster_id", pa.int64()),
            ("cluster_size", pa.int64()),
            ("example_id", pa.string()),
            ("source_file", pa.string()),
            ("source_line", pa.int64()),
            ("representative", pa.bool_()),
            ("representative_id", pa.string()),
            ("estimated_jaccard", pa.float64()),
            ("verified_jaccard", pa.float64()),
            ("contaminated", pa.bool_()),
        ]
    )
    # pairs.parquet (half a million rows on T0: 0.25 s) is encoded and written by pyarrow, which
    # releases the GIL, on a thread of its own while this one writes the clusters and findings
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftdata-write") as pool:
        pairs = pool.submit(rundir.write_parquet, os.path.join(run_dir, "dedup", "pairs.parquet"), _pairs_table(result))
        table = pa.Table.from_pydict(result.clusters, schema=schema)
        rundir.write_parquet(os.path.join(run_dir, "dedup", "clusters.parquet"), table)
        rundir.write_jsonl(  # what --json prints: plain values, finite Jaccards
            os.path.join(run_dir, "dedup", "findings.jsonl"), (f.to_dict() for f in findings), finite=True
        )
        pairs.result()
    rundir.write_json(os.path.join(run_dir, "dedup", "summary.json"), summary)
    command = ["sftdata", "dedup", *(argv if argv is not None else sys.argv[1:])]
    rundir.update_manifest(run_dir, "dedup", command=command, config=dataclasses.asdict(config), inputs=inputs)


def _pairs_table(result: dedup.DedupResult) -> Any:
    """dedup/pairs.parquet: every exact, near and contamination pair (both sides' id, file, line),
    the strings dictionary-encoded (T0 has half a million pairs)."""
    import numpy as np
    import pyarrow as pa

    ex = result.examples
    ids = pa.array([c.id for c in ex], pa.string())
    files = pa.array([c.source.file for c in ex], pa.string())
    lines = np.array([-1 if dedup._line(c) is None else dedup._line(c) for c in ex], dtype=np.int64)
    p = result.pairs

    def side(idx: np.ndarray) -> list[Any]:
        return [
            pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), ids),
            pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), files),
            pa.array(lines[idx], pa.int64(), mask=lines[idx] < 0),
        ]

    kinds = pa.DictionaryArray.from_arrays(pa.array(p.kind.astype(np.int32)), pa.array(list(dedup.KINDS)))
    return pa.Table.from_arrays(
        [kinds, *side(p.left), *side(p.right), pa.array(p.estimated_jaccard), pa.array(p.verified_jaccard)],
        names=[
            "kind",
            "example_id",
            "source_file",
            "source_line",
            "other_id",
            "other_file",
            "other_line",
            "estimated_jaccard",
            "verified_jaccard",
        ],
    )


def _print_report(summary: dict[str, Any], result: dedup.DedupResult, read_findings: list[Finding]) -> None:
    out = sys.stdout
    s = summary
    rows = [
        (
            "examples",
            s["examples"],
            f"from {len(s['inputs'])} file(s)"
            + (f"; {s['against_examples']} --against examples" if s["against"] else ""),
        ),
        ("exact duplicates", s["exact_duplicates"], "examples whose normalised text repeats an earlier one"),
        ("near pairs", s["near_pairs"], f"pairs with verified Jaccard >= {s['threshold']}"),
        (
            "clusters",
            s["clusters"],
            f"{s['examples_in_clusters']} examples in clusters, the largest has {s['largest_cluster']}",
        ),
        ("contaminated", s["contaminated"], "training examples duplicating an --against example"),
        (
            "dropped by",
            s["removed"],
            ", ".join(f"{k} {v}" for k, v in s["dropped_by"].items()) + " (each example counted once)",
        ),
        (
            "kept",
            s["kept"],
            f"{s['removed']} dropped"
            + (f"; wrote {s['written']} to {s['output']}" if "output" in s else " with -o KEPT"),
        ),
    ]
    for label, n, note in rows:
        out.write(f"{label:<17}{n:>8}  {note}\n")
    out.write(
        f"\nLSH: {s['bands']} bands x {s['rows']} rows, P(candidate | J={s['threshold']}) = "
        f"{s['recall_at_threshold']:.3f}; {s['lsh_candidates']} candidate pairs verified; "
        f"fields={s['fields']}, shingle={s['shingle']} ({s['char_shingled_texts']} CJK texts as chars:3)\n"
    )
    if s.get("lsh_unverified_remote_candidates"):
        out.write(
            f"     {s['lsh_unverified_remote_candidates']} candidate links to other workers' examples in the "
            "shared index (not verified here: dedup those files together)\n"
        )

    shown = [
        f
        for check in ("dedup.contamination", "dedup.near", "dedup.exact")
        for f in [f for f in result.findings if f.check == check][:SHOW_DROPPED]
    ]
    if shown:
        out.write("\nexamples -o drops, and why (first of each check; --json or --run-dir lists them all):\n")
        for f in shown:
            other = f.data["other"]["source"]
            where = f"{other['file']}:{other['line']}" if other.get("line") is not None else other["file"]
            role = "copies --against" if f.check == "dedup.contamination" else "kept instead:"
            size = f", cluster of {f.data['cluster_size']}" if "cluster_size" in f.data else ""
            out.write(
                f"  {f.check:<20} {f.source}  J={f.data['verified_jaccard']:.3f}{size}\n  {'':<20} {role} {where}\n"
            )
    if read_findings:
        groups: dict[str, list[Finding]] = {}
        for f in read_findings:
            groups.setdefault(f.check, []).append(f)
        out.write(f"\nreading: {len(read_findings)} findings ({s['unreadable_records']} records skipped)\n")
        for check, group in sorted(groups.items()):
            out.write(f"  {check}: {len(group)}\n")
            for f in group[:SHOW_LOCATIONS]:
                out.write(f"    {f.location()}  {f.message}\n")
    out.write("\nseconds: " + ", ".join(f"{k} {v:.2f}" for k, v in s["seconds"].items()) + "\n")
    if not result.findings:
        out.write("\nno duplicates found\n")
    elif "output" not in s:
        out.write("\nhint: -o KEPT writes one example per cluster, minus contaminated ones\n")
