"""`sftdata audit` as a library: every check in one streaming pass, written to RUN/audit/.

    result = run_audit(["data.jsonl"], "smollm2-135m-instruct", max_length=2048, run_dir="runs/x")
    if not result.passed: ...

One pass over the inputs: read (sftdata.formats) -> per-conversation checks -> tokenize with the
loss mask in batches (sftdata.masks, the trainer's own path) -> per-example checks -> token-length
statistics -> findings.jsonl and examples.parquet, both streamed to temporary files and renamed into
place at the end (memory stays bounded: a parquet row group is written every few thousand examples).
Template-level checks run once per tokenizer; findings that describe the template (not one example)
are reported once with the number of examples they affect. The examples are tokenized once without
truncation (for the length statistics) and truncated here exactly as masks.tokenize(max_length=)
does (a test proves it), so examples.parquet holds what the trainer trains on.

Parallelism: on inputs of 1 MiB or more, forked worker processes each read every K-th block of
256 records of every file themselves (records of other blocks are skipped before parsing), tokenize
and check them, and send the compact results back; this process merges them in input order and
writes. In one process, a thread tokenizes ahead while this one checks and writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import logging
import multiprocessing
import os
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftdata import checks, formats, masks
from sftdata.checks import CHECKS, PER_TEMPLATE, SEVERITY_RANK
from sftdata.clikit import UsageError
from sftdata.records import POLICIES, SEVERITIES, Conversation, Finding, Tokenized, replace

log = logging.getLogger(__name__)

CANDIDATE_LENGTHS = (512, 1024, 2048, 4096, 8192)
MAX_FINDINGS_IN_MEMORY = 100_000  # per group (errors / the rest) kept in AuditResult.findings; findings.jsonl has all
_BATCH = 256  # conversations per tokenize batch
_ROW_GROUP_ROWS = 8192
_ROW_GROUP_TOKENS = 4_000_000


@dataclass(frozen=True, repr=False)
class AuditResult:
    """What run_audit returns. `passed` is False when a finding is at or above `fail_on`.
    `assert result.passed, result.report` fails listing the findings with file:line.

    `findings` holds every finding, or, past MAX_FINDINGS_IN_MEMORY errors or other findings, the
    first ones of each (summary counts all of them; RUN/audit/findings.jsonl holds all)."""

    findings: list[Finding]
    summary: dict[str, Any]
    passed: bool
    run_dir: str | None

    @property
    def report(self) -> str:
        """Pass/fail, counts and the first 20 findings at or above fail-on, one per line:
        `assert result.passed, result.report`."""
        return describe(self, limit=20)

    def __repr__(self) -> str:  # short: pytest cuts the repr of an assertion message at 240 chars
        return describe(self, limit=1, width=60)


def describe(result: AuditResult, limit: int | None = 5, width: int = 100) -> str:
    """A short text: pass/fail, counts, and the first findings at or above fail-on (compact:
    pytest shows it, truncated, when `assert result.passed, result` fails)."""
    s = result.summary
    fail_on = s.get("fail_on", "error")
    counts = ", ".join(f"{n} {sev}" for sev, n in s.get("by_severity", {}).items() if n)
    head = (f"<AuditResult {'PASSED' if result.passed else 'FAILED'} (fail-on {fail_on}): "
            f"{s.get('examples', 0)} examples, {s.get('findings', 0)} findings" + (f" ({counts})" if counts else "") + ">")
    rank = SEVERITY_RANK[fail_on]
    bad = sorted((f for f in result.findings if SEVERITY_RANK.get(f.severity, 0) >= rank),
                 key=lambda f: -SEVERITY_RANK[f.severity])
    lines = [head]
    for f in bad[:limit] if limit is not None else bad:
        where = f"{os.path.basename(f.source.file)}:{f.source.line}" if f.source and f.source.line else (f.example_id or "-")
        message = f.message if len(f.message) <= width else f.message[: width - 1] + "…"
        lines.append(f"  {f.severity} {f.check} {where}: {message}")
    if limit is not None and len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (result.report)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Selection (--select / --ignore)


def parse_check_list(items: Iterable[str] | str | None, flag: str) -> tuple[str, ...]:
    """Normalise a --select/--ignore value: comma lists, `tokens` / `tokens.*` = the whole area.
    Unknown ids are a UsageError that suggests the nearest one."""
    if items is None:
        return ()
    if isinstance(items, str):
        items = [items]
    out: list[str] = []
    for item in items:
        for raw in str(item).split(","):
            name = raw.strip()
            if not name:
                continue
            area = name[:-2] if name.endswith(".*") else name.rstrip(".")
            if area in checks.AREAS:
                out.append(area + ".")
            elif name in CHECKS:
                out.append(name)
            else:
                import difflib

                near = difflib.get_close_matches(name, list(CHECKS) + list(checks.AREAS), n=1)
                raise UsageError(f"{flag} {name!r}: no such check or area" + (f"; did you mean {near[0]!r}?" if near else "")
                                 + "; `sftdata audit --explain ID` describes one, docs/checks.md lists all")
    return tuple(out)


def _matches(check: str, patterns: tuple[str, ...]) -> bool:
    return any(check == p or (p.endswith(".") and check.startswith(p)) for p in patterns)


@dataclass(frozen=True)
class Selection:
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def wants(self, check: str) -> bool:
        return (not self.select or _matches(check, self.select)) and not _matches(check, self.ignore)

    def wants_any(self, *ids: str) -> bool:
        return any(self.wants(i) for i in ids)


# --------------------------------------------------------------------------------------------
# Findings: counted, kept in memory (bounded), streamed to findings.jsonl


@dataclass
class _Findings:
    selection: Selection
    out: Any = None  # open findings.jsonl (temporary) or None
    kept: list[Finding] = field(default_factory=list)
    kept_per_group: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    dropped: int = 0
    total: int = 0
    by_check: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_severity: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SEVERITIES})

    def add(self, f: Finding, examples: int = 1) -> bool:
        if not self.selection.wants(f.check):
            return False
        self.total += 1
        self.by_severity[f.severity] = self.by_severity.get(f.severity, 0) + 1
        c = self.by_check.get(f.check)
        if c is None:
            c = self.by_check[f.check] = {"severity": f.severity, "findings": 0, "examples": 0, "first": []}
        c["findings"] += 1
        c["examples"] += examples
        if len(c["first"]) < 3 and f.source is not None:
            c["first"].append(str(f.source))
        if self.out is not None:
            self.out.write(json.dumps(f.to_dict(), ensure_ascii=False, default=str))
            self.out.write("\n")
        group = f.severity == "error"  # errors have their own quota: a caller gating on them always sees some
        if self.kept_per_group[group] < MAX_FINDINGS_IN_MEMORY:
            self.kept.append(f)
            self.kept_per_group[group] += 1
        else:
            self.dropped += 1
        return True


@dataclass
class _TemplateTally:
    """Per-template findings from the examples, merged into one finding each at the end."""

    first: dict[str, Finding] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    where: dict[str, list[str]] = field(default_factory=dict)

    def add(self, f: Finding) -> None:
        self.first.setdefault(f.check, f)
        self.count[f.check] = self.count.get(f.check, 0) + 1
        w = self.where.setdefault(f.check, [])
        if len(w) < 3:
            w.append(f.location())


# --------------------------------------------------------------------------------------------
# One batch of examples: tokenize + per-example checks (in-process, or in a forked worker)


@dataclass(frozen=True)
class _Context:
    """What auditing a batch needs; inherited by forked workers."""

    tokenizer: Any  # masks.prepare()d
    info: checks.TokenizerInfo
    policy: str
    max_length: int | None
    limit: int | None  # the length the length.* checks use (max_length or the model's context)
    limit_name: str
    selection: Selection
    run_roles: bool
    run_content: bool
    run_mask: bool
    verify_text: bool
    run_length: bool


@dataclass(frozen=True)
class _Example:
    """One audited example, compact (token arrays as int32/bool bytes) so workers can return it."""

    id: str
    file: str
    line: int | None
    row: int | None
    findings: tuple[Finding, ...]  # this example's own, selected findings
    template: tuple[Finding, ...]  # per-template findings tokenizing noticed (merged at the end)
    is_raw: bool  # a raw row (text, plain prompt/completion): tokenized without the chat template
    has_system: bool
    has_assistant: bool
    input_ids: bytes
    loss_mask: bytes
    message_index: bytes
    n_tokens_full: int
    n_trained: int
    truncated: bool
    last_trained: int  # index of the last trained token before truncation, -1 = none


def _tokenize(batch: list[Conversation], ctx: _Context) -> list[Tokenized]:
    return masks.tokenize_batch(batch, ctx.tokenizer, policy=ctx.policy, max_length=None)


def _audit_batch(batch: list[Conversation], ctx: _Context, tokenized: list[Tokenized] | None = None) -> list[_Example]:
    """Tokenize (unless `tokenized` is given: what _tokenize returned for this batch) and check."""
    out = []
    if tokenized is None:
        tokenized = _tokenize(batch, ctx)
    for conv, full in zip(batch, tokenized):
        kept = truncate(full, ctx.max_length)
        own: list[Finding] = []
        template: list[Finding] = []
        for f in full.findings:
            (template if f.check in PER_TEMPLATE else own).append(f)
        if ctx.run_roles:
            own.extend(checks.check_roles(conv, ctx.policy))
        if ctx.run_content:
            own.extend(checks.check_content(conv, ctx.info))
        if full.input_ids:
            own.extend(checks.check_tokens(conv, kept, ctx.info))
            if ctx.run_mask and not any(f.check == "format.no-assistant" for f in own):
                own.extend(checks.check_mask(conv, kept, ctx.info, ctx.policy, verify_text=ctx.verify_text))
            if ctx.run_length:
                own.extend(checks.check_length(conv, full, kept, ctx.limit, limit_name=ctx.limit_name))
        mask = bytes(full.loss_mask)
        src = conv.source
        out.append(_Example(
            conv.id, src.file, src.line, src.row,
            tuple(f for f in own if ctx.selection.wants(f.check)), tuple(template),
            masks.is_text_row(conv), conv.messages[0].role == "system",
            any(m.role == "assistant" for m in conv.messages),
            array("i", kept.input_ids).tobytes(), mask[: len(kept.input_ids)], array("i", kept.message_index).tobytes(),
            len(full.input_ids), kept.n_trained, kept.truncated, mask.rfind(b"\x01")))
    return out


_WORKER_CONTEXT: _Context | None = None  # set in the parent right before forking workers
_AUTO_WORKERS_MIN_BYTES = 1 << 20  # smaller inputs (about 2k examples) are audited in this process


@dataclass(frozen=True)
class _CpuSample:
    """Busy CPU time of the CPUs this process may run on and of this process itself at one
    moment (for _idle_cpus)."""

    at: float
    machine_busy: float | None  # seconds, those CPUs together, from /proc/stat; None where unreadable
    own: float


def _usable_cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _cpu_sample() -> _CpuSample:
    busy = None
    cpus = {f"cpu{i}" for i in _usable_cpus()}
    try:
        total = 0
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if name in cpus:
                    fields = [int(x) for x in rest.split()]
                    total += sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
        busy = total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return _CpuSample(time.monotonic(), busy, t.user + t.system)


def _cgroup_cpu_limit() -> float | None:
    """The CPUs a cgroup v2 quota (cpu.max) allows this process, if it sets one."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _idle_cpus(since: _CpuSample) -> int:
    """CPUs that other processes leave idle: the CPUs this process may use (affinity, cgroup
    quota) minus what other processes kept them busy with since `since`, this process's own
    work (loading the tokenizer, an earlier audit) not counted. The load average would count it,
    and lags a minute behind. The window is made 50 ms at least; without /proc/stat, the load
    average it is."""
    cpus = len(_usable_cpus())
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = max(1, min(cpus, int(limit)))
    wait = 0.05 - (time.monotonic() - since.at)
    if wait > 0:
        time.sleep(wait)
    others = _others_busy(since, _cpu_sample())
    if others is not None:
        return cpus - int(others + 0.5)
    return cpus - (int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0)


def _others_busy(since: _CpuSample, now: _CpuSample) -> float | None:
    """CPUs other processes kept busy between two samples; None without /proc/stat or when the
    window is under 50 ms."""
    window = now.at - since.at
    if now.machine_busy is None or since.machine_busy is None or window < 0.05:
        return None
    return max(0.0, (now.machine_busy - since.machine_busy) - (now.own - since.own)) / window


_SHARDED_JSON_MAX_BYTES = 256 << 20  # each worker loads a whole JSON array: above this, one process


def _is_json_array(path: str) -> bool:
    name = path.lower()
    return name.endswith(".json") or name.endswith(".json.gz")


def _workers(requested: int | None, inputs: list[str], since: _CpuSample) -> int:
    """Worker processes: `requested`, else $SFTLAB_AUDIT_WORKERS, else the CPUs other processes
    leave idle (at most 8; on a busy machine more processes only add overhead); 1 (this process)
    for files under 1 MiB in all, and for JSON arrays over 256 MiB (each worker would load the
    whole array). Forking needs Linux."""
    if requested is None:
        env = os.environ.get("SFTLAB_AUDIT_WORKERS", "")
        if env.isdigit():
            requested = int(env)
        elif all(os.path.isfile(p) for p in inputs) and sum(os.path.getsize(p) for p in inputs) < _AUTO_WORKERS_MIN_BYTES:
            requested = 1
        elif sum(os.path.getsize(p) for p in inputs if os.path.isfile(p) and _is_json_array(p)) > _SHARDED_JSON_MAX_BYTES:
            requested = 1  # every worker would hold the whole array in memory
        else:
            requested = min(8, _idle_cpus(since))
    if requested > 1 and (sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods()):
        return 1
    return max(1, requested)


@contextlib.contextmanager
def _single_threaded_tokenizers(single: bool = True) -> Iterator[None]:
    """TOKENIZERS_PARALLELISM while the audit runs (restored after). With worker processes
    (`single`), tokenizers encode on one thread: parallelism comes from the workers, and setting it
    keeps tokenizers from warning when they are forked. In one process the Rust thread pool encodes
    on every core while this thread checks the previous batch (_pipelined), unless the caller set
    TOKENIZERS_PARALLELISM=false."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    off = (saved or "").strip().lower() in ("0", "false", "off", "no")  # the caller's explicit choice is kept
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if single or off else "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


@dataclass(frozen=True)
class _Batch:
    block: int  # records block*_BATCH+1 .. (block+1)*_BATCH of its file
    conversations: list[Conversation]
    read_findings: list[Finding]  # what the reader reported for these records (bad records, oddities)


def _file_batches(path: str, fmt: str | None, keep: Callable[[int], bool] | None = None) -> Iterator[_Batch]:
    """The records of one file in blocks of _BATCH record numbers (block b: records
    b*_BATCH+1 .. (b+1)*_BATCH), each block one batch. `keep` reads only some blocks (a worker's)."""
    log.info("auditing %s", path)
    convs: list[Conversation] = []
    read: list[Finding] = []
    block = -1
    for number, item in formats.read_numbered(path, fmt, keep=keep):
        b = (number - 1) // _BATCH
        if b != block:
            if convs or read:
                yield _Batch(block, convs, read)
            convs, read, block = [], [], b
        (read if isinstance(item, Finding) else convs).append(item)
    if convs or read:
        yield _Batch(block, convs, read)


def _pipelined(batches: Iterator[_Batch], ctx: _Context, ahead: int = 2) -> Iterator[tuple[list[Finding], list[_Example]]]:
    """In one process: a thread tokenizes the next batches (the Rust encode releases the GIL)
    while this thread reads, checks and writes the current one. Same results, in input order."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="sftdata-tokenize")
    try:
        pending: deque[tuple[_Batch, Any]] = deque()
        for batch in batches:
            pending.append((batch, pool.submit(_tokenize, batch.conversations, ctx)))
            if len(pending) > ahead:
                done, future = pending.popleft()
                yield done.read_findings, _audit_batch(done.conversations, ctx, future.result())
        while pending:
            done, future = pending.popleft()
            yield done.read_findings, _audit_batch(done.conversations, ctx, future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _shard_main(k: int, workers: int, inputs: list[str], fmts: list[str | None], out: Any, parent: int) -> None:
    """A forked worker: reads, tokenizes and checks the blocks b of every file j with
    (b + j) % workers == k itself (no conversation crosses a process boundary; block b of file j
    going to worker (b + j) % workers spreads many small files too). Sends each result pickled,
    as ("batch", j, b, reader findings, examples), and ("eof", j) after each file; ("crash",
    traceback) if anything fails, pickling included."""
    import pickle
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever the embedding program set: terminate() must work
    ctx = _WORKER_CONTEXT
    try:
        if ctx is None:
            raise RuntimeError("audit worker started without its context")
        _die_with_parent(parent)
        for j, (path, fmt) in enumerate(zip(inputs, fmts)):
            def keep(number: int, j: int = j) -> bool:
                return ((number - 1) // _BATCH + j) % workers == k

            for batch in _file_batches(path, fmt, keep):
                examples = _audit_batch(batch.conversations, ctx)
                out.put(pickle.dumps(("batch", j, batch.block, batch.read_findings, examples), protocol=pickle.HIGHEST_PROTOCOL))
            out.put(pickle.dumps(("eof", j)))
    except KeyboardInterrupt:
        pass
    except BaseException:  # noqa: BLE001 - handed to the parent, which raises it (exit 3)
        import traceback

        out.put(pickle.dumps(("crash", traceback.format_exc())))
    finally:
        out.close()
        out.join_thread()


def _die_with_parent(parent: int) -> None:
    """In a worker: be sent SIGTERM when the parent dies (killed, out of memory), instead of
    waiting forever on a queue nobody reads (Linux prctl PR_SET_PDEATHSIG). `parent` is the
    parent's pid, taken before the fork."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _receive(queue: Any, proc: Any) -> tuple[Any, ...]:
    import queue as queue_mod

    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_mod.Empty:
            if not proc.is_alive():
                try:
                    return queue.get(timeout=0.5)
                except queue_mod.Empty:
                    raise RuntimeError(f"an audit worker process exited with code {proc.exitcode} without "
                                       "finishing (killed? out of memory?)") from None


class _Sharded:
    """`workers` forked processes, each auditing its share of the blocks of every file (see
    _shard_main); iterating yields (reader findings, audited examples) per block in input order.
    Each worker has a small queue, so memory stays bounded whatever the input size."""

    def __init__(self, inputs: list[str], fmts: list[str | None], ctx: _Context, workers: int):
        global _WORKER_CONTEXT
        mp = multiprocessing.get_context("fork")
        self.inputs, self.workers = inputs, workers
        self.queues = [mp.Queue(maxsize=4) for _ in range(workers)]
        self.procs = [mp.Process(target=_shard_main, args=(k, workers, inputs, fmts, q, os.getpid()), daemon=True,
                                 name=f"sftdata-audit-{k}") for k, q in enumerate(self.queues)]
        _WORKER_CONTEXT = ctx
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            self.close()
            raise
        finally:
            _WORKER_CONTEXT = None

    def _get(self, k: int) -> tuple[Any, ...]:
        import pickle

        msg = pickle.loads(_receive(self.queues[k], self.procs[k]))
        if msg[0] == "crash":
            raise RuntimeError(f"audit worker {k} failed:\n{msg[1]}")
        return msg

    def __iter__(self) -> Iterator[tuple[list[Finding], list[_Example]]]:
        for j in range(len(self.inputs)):
            b = 0
            while True:
                owner = (b + j) % self.workers
                msg = self._get(owner)
                if msg[0] == "eof":
                    for k in range(self.workers):  # the others have nothing more of this file either
                        if k != owner and self._get(k) != ("eof", j):
                            raise RuntimeError(f"audit worker {k} sent blocks of {self.inputs[j]} out of order")
                    break
                if msg[1:3] != (j, b):
                    raise RuntimeError(f"audit worker {owner} sent block {msg[2]} of input {msg[1]} where block {b} of "
                                       f"input {j} ({self.inputs[j]}) was due")
                yield msg[3], msg[4]
                b += 1

    def close(self) -> None:
        for p in self.procs:
            if p.pid is not None and p.is_alive():
                p.terminate()
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for q in self.queues:
            q.close()
            q.cancel_join_thread()


# --------------------------------------------------------------------------------------------
# examples.parquet


def _parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("file", pa.string()), ("line", pa.int32()), ("row", pa.int32()),
        ("n_tokens", pa.int32()), ("n_tokens_full", pa.int32()), ("n_trained", pa.int32()), ("truncated", pa.bool_()),
        ("n_findings", pa.int32()), ("severity", pa.string()),
        ("input_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.bool_())), ("message_index", pa.list_(pa.int32())),
    ])


def _worst(findings: tuple[Finding, ...]) -> str | None:
    return max((f.severity for f in findings), key=SEVERITY_RANK.__getitem__, default=None)


def _record_batch(examples: list[_Example], schema: Any) -> Any:
    import numpy as np
    import pyarrow as pa

    lens = np.fromiter((len(e.loss_mask) for e in examples), dtype=np.int32, count=len(examples))
    offsets = np.zeros(len(examples) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    off = pa.array(offsets)
    ids = np.frombuffer(b"".join(e.input_ids for e in examples), dtype=np.int32)
    mi = np.frombuffer(b"".join(e.message_index for e in examples), dtype=np.int32)
    mask = np.frombuffer(b"".join(e.loss_mask for e in examples), dtype=np.bool_)
    return pa.record_batch([
        pa.array([e.id for e in examples], pa.string()),
        pa.array([e.file for e in examples], pa.string()),
        pa.array([e.line for e in examples], pa.int32()),
        pa.array([e.row for e in examples], pa.int32()),
        pa.array(lens),
        pa.array([e.n_tokens_full for e in examples], pa.int32()),
        pa.array([e.n_trained for e in examples], pa.int32()),
        pa.array([e.truncated for e in examples], pa.bool_()),
        pa.array([len(e.findings) for e in examples], pa.int32()),
        pa.array([_worst(e.findings) for e in examples], pa.string()),
        pa.ListArray.from_arrays(off, pa.array(ids)),
        pa.ListArray.from_arrays(off, pa.array(mask)),
        pa.ListArray.from_arrays(off, pa.array(mi)),
    ], schema=schema)


def _write_row_group(writer: Any, batches: list[Any], rows: int) -> None:
    import pyarrow as pa

    writer.write_table(pa.Table.from_batches(batches), row_group_size=max(rows, 1))


# --------------------------------------------------------------------------------------------
# Token statistics


@dataclass
class _Lengths:
    n_full: array = field(default_factory=lambda: array("i"))  # tokens before truncation
    last_trained: array = field(default_factory=lambda: array("i"))  # index of the last trained token, -1 = none
    tokens: int = 0
    trained: int = 0
    truncated: int = 0

    def add(self, e: _Example) -> None:
        self.n_full.append(e.n_tokens_full)
        self.last_trained.append(e.last_trained)
        self.tokens += len(e.loss_mask)
        self.trained += e.n_trained
        self.truncated += e.truncated

    def summary(self, max_length: int | None) -> dict[str, Any]:
        import numpy as np

        n = np.frombuffer(self.n_full, dtype=np.int32) if len(self.n_full) else np.zeros(0, dtype=np.int32)
        last = np.frombuffer(self.last_trained, dtype=np.int32) if len(self.last_trained) else np.zeros(0, dtype=np.int32)
        out: dict[str, Any] = {"tokens": self.tokens, "trained_tokens": self.trained, "truncated_examples": self.truncated}
        if len(n):
            p = np.percentile(n, [50, 90, 95, 99], method="higher")
            out["n_tokens"] = {"min": int(n.min()), "mean": round(float(n.mean()), 1), "p50": int(p[0]), "p90": int(p[1]),
                               "p95": int(p[2]), "p99": int(p[3]), "max": int(n.max())}
        lengths = sorted(set(CANDIDATE_LENGTHS) | ({max_length} if max_length else set()))
        out["max_length_candidates"] = {
            str(L): {"over": int((n > L).sum()), "answers_cut": int((last >= L).sum())} for L in lengths}
        return out


# --------------------------------------------------------------------------------------------
# The pass


def _resolve_model(model: Any) -> tuple[Any, str | None]:
    """(tokenizer, spec string or None)."""
    if isinstance(model, str):
        from sftdata.models import load_tokenizer

        return load_tokenizer(model), model
    if model is None or not hasattr(model, "backend_tokenizer"):
        raise UsageError(f"model: expected a model spec (alias, directory, hub id) or a fast tokenizer, got {type(model).__name__}")
    return model, None


def _weights_dir(spec: str | None, tokenizer: Any) -> str | None:
    """A directory holding model weights for the embedding check, or None."""
    from sftdata import models

    if spec is not None:
        if not models.has_weights(spec):
            return None
        path = models.resolve_model_path(spec)  # an alias is converted once (~20 s)
        return path if Path(path).is_dir() else None
    d = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if d.is_dir() and (any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))):
        return str(d)
    return None


def _config_dir(spec: str | None, tokenizer: Any) -> str | None:
    """Where generation_config.json / config.json may be found (no conversion triggered)."""
    from sftdata import models

    if spec in models.ALIASES:
        d = models.alias_dir(models.ALIASES[spec]) / "model"
        return str(d) if d.is_dir() else None
    for cand in (spec, getattr(tokenizer, "name_or_path", None)):
        if cand and Path(str(cand)).is_dir():
            return str(cand)
    return None


def _context_length(info: checks.TokenizerInfo, config_dir: str | None) -> int | None:
    if info.context_length:
        return info.context_length
    if config_dir and (Path(config_dir) / "config.json").is_file():
        try:
            cfg = json.loads((Path(config_dir) / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        value = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
        return value if isinstance(value, int) and value > 0 else None
    return None


def truncate(tok: Tokenized, max_length: int | None) -> Tokenized:
    """What masks.tokenize(max_length=) returns, from the untruncated Tokenized: keep the head."""
    if max_length is None or len(tok.input_ids) <= max_length:
        return tok
    mask = tok.loss_mask[:max_length]
    return replace(tok, input_ids=tok.input_ids[:max_length], loss_mask=mask,
                   message_index=tok.message_index[:max_length], truncated=True, n_trained=sum(mask))


def run_audit(inputs: list[str], model: str | Any, *, max_length: int | None = None, policy: str = "assistant",
              select: list[str] | None = None, ignore: list[str] | None = None, fail_on: str = "error",
              run_dir: str | None = None, fmt: str | None = None, workers: int | None = None,
              progress: Callable[[int], None] | None = None) -> AuditResult:
    """Run every check on `inputs` in one pass. `model` is a model spec or a loaded fast tokenizer.
    With `run_dir`, writes RUN/audit/{summary.json, findings.jsonl, examples.parquet} and the
    manifest. `workers`: forked processes that read, tokenize and check (each every workers-th
    block of every file; default: $SFTLAB_AUDIT_WORKERS, else the CPUs other processes leave idle;
    files under 1 MiB in all are audited in this process). Output is identical whatever the
    number. `progress(n)` is called as each block of n records is done (the CLI's progress bar).
    Raises UsageError for bad arguments and unreadable paths, never for bad data; a bug in
    a worker is raised here as a RuntimeError carrying its traceback."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("no input files: pass at least one data file")
    if policy not in POLICIES:
        raise UsageError(f"--policy {policy!r}: expected one of {', '.join(POLICIES)}")
    if fail_on not in SEVERITIES:
        raise UsageError(f"--fail-on {fail_on!r}: expected one of {', '.join(SEVERITIES)}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise UsageError(f"--max-length {max_length!r}: expected a positive integer")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers {workers!r}: expected a positive integer")
    selection = Selection(parse_check_list(select, "--select"), parse_check_list(ignore, "--ignore"))
    started = time.perf_counter()
    cpu_at_start = _cpu_sample()
    fmts = [formats.resolve_format(p, fmt) for p in inputs]  # UsageError for a bad path now, before any work
    tokenizer, spec = _resolve_model(model)
    weights = _weights_dir(spec, tokenizer) if selection.wants("tokens.untrained-embedding") else None
    config_dir = weights or _config_dir(spec, tokenizer)
    prepared = masks.prepare(tokenizer)  # once here (its byte table too), not in every worker
    info = checks.tokenizer_info(tokenizer, config_dir, prepared)
    limit = max_length or _context_length(info, config_dir)
    limit_name = "--max-length" if max_length else "the model's context length"
    audit_dir = Path(run_dir) / "audit" if run_dir else None

    with contextlib.ExitStack() as stack:
        n_workers = _workers(workers, inputs, cpu_at_start)
        stack.enter_context(_single_threaded_tokenizers(n_workers > 1))
        out = writer = None
        if audit_dir is not None:
            import pyarrow.parquet as pq

            from sftdata.rundir import atomic_open

            out = stack.enter_context(atomic_open(audit_dir / "findings.jsonl"))
            schema = _parquet_schema()
            writer = stack.enter_context(pq.ParquetWriter(stack.enter_context(atomic_open(audit_dir / "examples.parquet", "wb")),
                                                          schema, compression="zstd"))
        found = _Findings(selection, out)
        tally = _TemplateTally()
        lengths = _Lengths()
        counts = {"examples": 0, "unreadable": 0, "chat": 0, "chat_no_system": 0, "chat_with_assistant": 0, "raw": 0}
        ctx = _Context(
            prepared, info, policy, max_length, limit, limit_name, selection,
            run_roles=selection.wants_any("format.no-assistant", "format.role-order"),
            run_content=selection.wants_any("tokens.special-in-content", "tokens.unknown-special"),
            run_mask=selection.wants_any("mask.no-trained-tokens", "mask.eot-not-trained", "mask.prompt-trained",
                                         "mask.boundary-mismatch"),
            verify_text=selection.wants_any("mask.prompt-trained", "mask.boundary-mismatch"),
            run_length=selection.wants_any("length.truncated-answer", "length.over-max"),
        )
        if n_workers > 1:
            sharded = _Sharded(inputs, fmts, ctx, n_workers)
            stack.callback(sharded.close)
            results: Iterable[tuple[list[Finding], list[_Example]]] = sharded
        else:
            results = _pipelined((b for p, f in zip(inputs, fmts) for b in _file_batches(p, f)), ctx)
        # What needs no example: done here while worker processes (if any) audit.
        probes = _template_probes(tokenizer, info, selection)
        embedding_findings: list[tuple[Finding, int]] = []
        embedding_note = None
        if selection.wants("tokens.untrained-embedding") and weights is not None:
            embedding_findings, embedding_note = _embedding_findings(tokenizer, info, weights)
        pending: list[Any] = []
        pending_rows = pending_tokens = 0
        for read, examples in results:
            for f in read:
                found.add(f)
                counts["unreadable"] += f.severity == "error"
            for e in examples:
                for f in e.template:
                    tally.add(f)
                for f in e.findings:
                    found.add(f)
                if e.is_raw:
                    counts["raw"] += 1
                else:
                    counts["chat"] += 1
                    counts["chat_no_system"] += not e.has_system
                    counts["chat_with_assistant"] += e.has_assistant
                lengths.add(e)
            counts["examples"] += len(examples)
            if progress is not None:
                progress(len(examples) + sum(f.severity == "error" for f in read))
            if writer is not None and examples:
                pending.append(_record_batch(examples, schema))
                pending_rows += len(examples)
                pending_tokens += sum(len(e.loss_mask) for e in examples)
                if pending_rows >= _ROW_GROUP_ROWS or pending_tokens >= _ROW_GROUP_TOKENS:
                    _write_row_group(writer, pending, pending_rows)
                    pending, pending_rows, pending_tokens = [], 0, 0
            if counts["examples"] % 10_000 < len(examples):
                log.info("%d examples audited", counts["examples"])
        if writer is not None and pending:
            _write_row_group(writer, pending, pending_rows)

        template_findings = list(_template_findings(probes, tally, counts))
        template_findings.extend(embedding_findings)
        for f, n in template_findings:
            found.add(f, examples=n)

    elapsed = time.perf_counter() - started
    passed = all(SEVERITY_RANK.get(sev, 0) < SEVERITY_RANK[fail_on] for sev, n in found.by_severity.items() if n)
    summary: dict[str, Any] = {
        "passed": passed,
        "fail_on": fail_on,
        "model": spec if spec is not None else info.name,
        "policy": policy,
        "max_length": max_length,
        "context_length": limit if not max_length else None,
        "inputs": inputs,
        "format": fmt,
        "examples": counts["examples"],
        "records_unreadable": counts["unreadable"],
        "chat_examples": counts["chat"],
        "raw_examples": counts["raw"],
        "findings": found.total,
        "by_severity": found.by_severity,
        "checks": {k: {x: v for x, v in c.items()} for k, c in sorted(
            found.by_check.items(), key=lambda kv: (-SEVERITY_RANK[kv[1]["severity"]], kv[0]))},
        "select": list(selection.select),
        "ignore": list(selection.ignore),
        "embedding_check": embedding_note or ("ran" if weights else "skipped: --model has no weights"),
        "token_stats": lengths.summary(max_length),
        "findings_in_memory": len(found.kept),
        "findings_dropped_from_memory": found.dropped,
        "workers": n_workers,
        "elapsed_s": round(elapsed, 3),
        "examples_per_s": round(counts["examples"] / elapsed, 1) if elapsed > 0 else None,
    }
    if audit_dir is not None:
        summary["run_dir"] = str(run_dir)
        from sftdata.rundir import update_manifest, write_json

        write_json(audit_dir / "summary.json", summary)
        config = {"model": summary["model"], "max_length": max_length, "policy": policy, "select": list(selection.select),
                  "ignore": list(selection.ignore), "fail_on": fail_on, "format": fmt}
        update_manifest(run_dir, "audit", config=config, inputs=[p for p in inputs if os.path.isfile(p)])
    # Template-level findings first, then per-example ones in input order.
    per_template = [f for f in found.kept if f.check in PER_TEMPLATE]
    findings = per_template + [f for f in found.kept if f.check not in PER_TEMPLATE]
    return AuditResult(findings, summary, passed, str(run_dir) if run_dir else None)


def _template_probes(tokenizer: Any, info: checks.TokenizerInfo, selection: Selection) -> dict[str, Finding] | None:
    """What the tokenizer and template checks find by probing (no data needed); None when no
    per-template check is selected."""
    if not selection.wants_any(*PER_TEMPLATE):
        return None
    probes: dict[str, Finding] = {}
    for f in itertools.chain(checks.check_tokenizer(tokenizer, info), checks.check_template(tokenizer, info)):
        probes.setdefault(f.check, f)
    return probes


def _template_findings(probes: dict[str, Finding] | None, tally: _TemplateTally,
                       counts: dict[str, int]) -> Iterator[tuple[Finding, int]]:
    """Per-template findings, each once, with the number of examples it affects."""
    if probes is None:
        return
    affected = {
        "template.missing": counts["chat"],
        "template.generation-prompt-mismatch": counts["chat_with_assistant"],
        "template.default-system-prompt": counts["chat_no_system"],
        "template.eot-not-eos": counts["chat_with_assistant"],
        "tokens.pad-is-eos": counts["examples"],
    }
    for check in PER_TEMPLATE:
        seen = tally.count.get(check, 0)
        base = probes.get(check) or tally.first.get(check)
        if base is None:
            continue
        n = seen or affected.get(check, 0)
        if n == 0:
            continue  # the template has the problem, but no example here runs into it
        where = tally.where.get(check, [])
        first = tally.first.get(check)
        extra = f" [{n} of {counts['examples']} examples" + (f"; first: {', '.join(where)}" if where else "") + "]"
        yield (Finding(check, base.severity, base.message + extra, base.hint,
                       first.example_id if first else None, first.source if first else None,
                       {**base.data, "examples": n, "first": where}), n)


def _embedding_findings(tokenizer: Any, info: checks.TokenizerInfo, weights: str) -> tuple[list[tuple[Finding, int]], str]:
    try:
        embeddings = checks.load_input_embeddings(weights)
    except (OSError, ValueError, RuntimeError) as e:
        log.warning("tokens.untrained-embedding skipped: cannot read the embeddings in %s (%s)", weights, e)
        return [], f"skipped: cannot read the embeddings in {weights} ({type(e).__name__})"
    if embeddings is None:
        return [], f"skipped: no input embedding tensor found in {weights}"
    ids = checks.template_special_ids(tokenizer, info)
    return [(f, 0) for f in checks.check_embeddings(tokenizer, info, embeddings, ids)], "ran"


def default_run_dir() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join("runs", f"audit-{stamp}")
