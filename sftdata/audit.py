"""`sftdata audit` as a library: every check in one streaming pass, written to RUN/audit/.

    result = run_audit(["data.jsonl"], "smollm2-135m-instruct", max_length=2048, run_dir="runs/x")
    if not result.passed: ...

One pass over the inputs: read (sftdata.formats) -> per-conversation checks -> tokenize with the
loss mask in batches (sftdata.masks, the trainer's own path) -> per-example checks -> token-length
statistics -> findings.jsonl and examples.parquet, both streamed to temporary files and renamed into
place at the end (memory stays bounded: a parquet row group is written every few thousand examples).
Template-level checks run once per tokenizer; findings that describe the template (not one example)
are reported once with the number of examples they affect. The examples are tokenized once without
truncation (for the length statistics) and cut with masks.truncate (what masks.tokenize(max_length=)
returns), so examples.parquet holds what the trainer trains on.

Parallelism (sftdata.parallel): on inputs of 1 MiB or more, forked worker processes each read every
K-th block of 256 records of every file themselves (records of other blocks are skipped before
parsing), tokenize and check them, and send the compact results back; this process merges them in
input order and writes. In one process, a thread tokenizes ahead while this one checks and writes.
Model resolution lives in sftdata.models, the examples.parquet writer in sftdata.rundir.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftdata import checks, formats, masks, models, parallel
from sftdata.catalogue import PER_TEMPLATE, SEVERITY_RANK, Selection, finding, parse_check_list
from sftdata.errors import UsageError
from sftdata.records import POLICIES, SEVERITIES, Conversation, Finding, Tokenized
from sftdata.rundir import ExamplesWriter, atomic_open, check_output, update_manifest, write_json

log = logging.getLogger(__name__)

CANDIDATE_LENGTHS = (512, 1024, 2048, 4096, 8192)
MAX_FINDINGS_IN_MEMORY = 100_000  # per group (errors / the rest) kept in AuditResult.findings; findings.jsonl has all
_BATCH = 256  # conversations per tokenize batch


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
    head = (
        f"<AuditResult {'PASSED' if result.passed else 'FAILED'} (fail-on {fail_on}): "
        f"{s.get('examples', 0)} examples, {s.get('findings', 0)} findings" + (f" ({counts})" if counts else "") + ">"
    )
    rank = SEVERITY_RANK[fail_on]
    bad = sorted(
        (f for f in result.findings if SEVERITY_RANK.get(f.severity, 0) >= rank),
        key=lambda f: -SEVERITY_RANK[f.severity],
    )
    lines = [head]
    for f in bad[:limit] if limit is not None else bad:
        where = (
            f"{os.path.basename(f.source.file)}:{f.source.line}"
            if f.source and f.source.line
            else (f.example_id or "-")
        )
        message = f.message if len(f.message) <= width else f.message[: width - 1] + "…"
        lines.append(f"  {f.severity} {f.check} {where}: {message}")
    if limit is not None and len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more (result.report)")
    return "\n".join(lines)


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
        kept = masks.truncate(full, ctx.max_length)
        own: list[Finding] = []
        template: list[Finding] = []
        for f in full.findings:
            (template if f.check in PER_TEMPLATE else own).append(f)
        if ctx.run_roles:
            own.extend(checks.check_roles(conv, ctx.policy))
        if ctx.run_content:
            own.extend(checks.check_special_strings(conv, ctx.info))
        if full.input_ids:
            own.extend(checks.check_double_bos(conv, kept, ctx.info))
            if ctx.run_mask and not any(f.check == "format.no-assistant" for f in own):
                own.extend(checks.check_mask(conv, kept, ctx.info, ctx.policy, verify_text=ctx.verify_text))
            if ctx.run_length:
                own.extend(checks.check_length(conv, full, kept, ctx.limit, limit_name=ctx.limit_name))
        mask = bytes(full.loss_mask)
        src = conv.source
        out.append(
            _Example(
                conv.id,
                src.file,
                src.line,
                src.row,
                tuple(f for f in own if ctx.selection.wants(f.check)),
                tuple(template),
                masks.is_text_row(conv),
                conv.messages[0].role == "system",
                any(m.role == "assistant" for m in conv.messages),
                array("i", kept.input_ids).tobytes(),
                mask[: len(kept.input_ids)],
                array("i", kept.message_index).tobytes(),
                len(full.input_ids),
                kept.n_trained,
                kept.truncated,
                mask.rfind(b"\x01"),
            )
        )
    return out


_AUTO_WORKERS_MIN_BYTES = 1 << 20  # smaller inputs (about 2k examples) are audited in this process
_SHARDED_JSON_MAX_BYTES = 256 << 20  # each worker loads a whole JSON array: above this, one process


def _is_json_array(path: str) -> bool:
    name = path.lower()
    return name.endswith(".json") or name.endswith(".json.gz")


def _workers(requested: int | None, inputs: list[str], since: parallel.CpuSample) -> int:
    """Worker processes: `requested`, else $SFTLAB_AUDIT_WORKERS, else the CPUs other processes
    leave idle (at most 8; on a busy machine more processes only add overhead); 1 (this process)
    for files under 1 MiB in all, and for JSON arrays over 256 MiB (each worker would load the
    whole array). Forking needs Linux."""
    if requested is None:
        env = os.environ.get("SFTLAB_AUDIT_WORKERS", "")
        if env.isdigit():
            requested = int(env)
        elif (
            all(os.path.isfile(p) for p in inputs) and sum(os.path.getsize(p) for p in inputs) < _AUTO_WORKERS_MIN_BYTES
        ):
            requested = 1
        elif (
            sum(os.path.getsize(p) for p in inputs if os.path.isfile(p) and _is_json_array(p)) > _SHARDED_JSON_MAX_BYTES
        ):
            requested = 1  # every worker would hold the whole array in memory
        else:
            requested = min(8, parallel.idle_cpus(since))
    if requested > 1 and not parallel.can_fork():
        return 1
    return max(1, requested)


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


def _results(
    inputs: list[str], fmts: list[str | None], ctx: _Context, workers: int, stack: contextlib.ExitStack
) -> Iterable[tuple[list[Finding], list[_Example]]]:
    """(reader findings, audited examples) per block of records, in input order. With several
    workers, forked processes each read, tokenize and check the blocks b of file j with
    (b + j) % workers == their number (no conversation crosses a process boundary); in one
    process, a thread tokenizes the next batches while this one checks."""
    if workers <= 1:
        batches = (b for p, f in zip(inputs, fmts) for b in _file_batches(p, f))
        return parallel.pipelined(
            batches,
            lambda b: _tokenize(b.conversations, ctx),
            lambda b, tokenized: (b.read_findings, _audit_batch(b.conversations, ctx, tokenized)),
        )

    def shard(k: int, n: int, j: int) -> Iterator[tuple[int, tuple[list[Finding], list[_Example]]]]:
        def keep(number: int) -> bool:
            return ((number - 1) // _BATCH + j) % n == k

        for batch in _file_batches(inputs[j], fmts[j], keep):
            yield batch.block, (batch.read_findings, _audit_batch(batch.conversations, ctx))

    pool = parallel.ForkedShards(len(inputs), workers, shard, name="sftdata-audit")
    stack.callback(pool.close)
    return pool


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
        last = (
            np.frombuffer(self.last_trained, dtype=np.int32) if len(self.last_trained) else np.zeros(0, dtype=np.int32)
        )
        out: dict[str, Any] = {
            "tokens": self.tokens,
            "trained_tokens": self.trained,
            "truncated_examples": self.truncated,
        }
        if len(n):
            p = np.percentile(n, [50, 90, 95, 99], method="higher")
            out["n_tokens"] = {
                "min": int(n.min()),
                "mean": round(float(n.mean()), 1),
                "p50": int(p[0]),
                "p90": int(p[1]),
                "p95": int(p[2]),
                "p99": int(p[3]),
                "max": int(n.max()),
            }
        lengths = sorted(set(CANDIDATE_LENGTHS) | ({max_length} if max_length else set()))
        out["max_length_candidates"] = {
            str(L): {"over": int((n > L).sum()), "answers_cut": int((last >= L).sum())} for L in lengths
        }
        return out


# --------------------------------------------------------------------------------------------
# The pass


def _check_arguments(inputs: Any, policy: str, fail_on: str, max_length: Any, workers: Any) -> list[str]:
    """The input paths as a list; UsageError for a bad argument."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("no input files: pass at least one data file", param="inputs")
    if policy not in POLICIES:
        raise UsageError(f"expected one of {', '.join(POLICIES)}", param="policy", value=policy)
    if fail_on not in SEVERITIES:
        raise UsageError(f"expected one of {', '.join(SEVERITIES)}", param="fail_on", value=fail_on)
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise UsageError("expected a positive integer", param="max_length", value=max_length)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise UsageError("expected a positive integer", param="workers", value=workers)
    return inputs


def _context(
    tokenizer: Any, config_dir: str | None, policy: str, max_length: int | None, selection: Selection
) -> _Context:
    prepared = masks.prepare(tokenizer)  # once here (its byte table too), not in every worker
    info = checks.tokenizer_info(tokenizer, config_dir, prepared)
    return _Context(
        prepared,
        info,
        policy,
        max_length,
        limit=max_length or info.context_length or models.context_length(config_dir),
        limit_name="--max-length" if max_length else "the model's context length",
        selection=selection,
        run_roles=selection.wants_any(*checks.check_roles.emits),
        run_content=selection.wants_any(*checks.check_special_strings.emits),
        run_mask=selection.wants_any(*checks.check_mask.emits),
        verify_text=selection.wants_any("mask.prompt-trained", "mask.boundary-mismatch"),  # what verify_text adds
        run_length=selection.wants_any(*checks.check_length.emits),
    )


def run_audit(
    inputs: list[str],
    model: str | Any,
    *,
    max_length: int | None = None,
    policy: str = "assistant",
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    fail_on: str = "error",
    run_dir: str | None = None,
    fmt: str | None = None,
    workers: int | None = None,
    config_file: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditResult:
    """Run every check on `inputs` in one pass. `model` is a model spec or a loaded fast tokenizer.
    With `run_dir`, writes RUN/audit/{summary.json, findings.jsonl, examples.parquet} and the
    manifest. `workers`: forked processes that read, tokenize and check (each every workers-th
    block of every file; default: $SFTLAB_AUDIT_WORKERS, else the CPUs other processes leave idle;
    files under 1 MiB in all are audited in this process). Output is identical whatever the
    number. `config_file`: where settings came from, recorded in the summary. `progress(n)` is
    called as each block of n records is done (the CLI's progress bar). Raises UsageError for bad
    arguments and DataError for unreadable inputs, never for bad data; a bug in a worker is raised
    here as a RuntimeError carrying its traceback."""
    inputs = _check_arguments(inputs, policy, fail_on, max_length, workers)
    selection = Selection(parse_check_list(select, "select"), parse_check_list(ignore, "ignore"))
    started = time.perf_counter()
    cpu_at_start = parallel.cpu_sample()
    fmts = [formats.resolve_format(p, fmt) for p in inputs]  # a bad path fails now, before any work
    if run_dir is not None:
        check_output(run_dir, "run_dir", directory=True)
    tokenizer, spec = models.tokenizer_of(model)
    weights = models.weights_dir(spec, tokenizer) if selection.wants("tokens.untrained-embedding") else None
    ctx = _context(tokenizer, weights or models.config_dir(spec, tokenizer), policy, max_length, selection)
    if ctx.tokenizer.template_error is not None and ctx.tokenizer.template_error.check == "template.render-error":
        e = ctx.tokenizer.template_error  # the template does not compile: no example could be rendered
        raise UsageError(f"{e.message}; {e.hint}", param="model", value=spec or getattr(tokenizer, "name_or_path", "?"))
    audit_dir = Path(run_dir) / "audit" if run_dir else None
    with contextlib.ExitStack() as stack:
        n_workers = _workers(workers, inputs, cpu_at_start)
        stack.enter_context(parallel.tokenizers_parallelism(n_workers <= 1))
        out = table = None
        if audit_dir is not None:
            out = stack.enter_context(atomic_open(audit_dir / "findings.jsonl"))
            table = stack.enter_context(
                ExamplesWriter(stack.enter_context(atomic_open(audit_dir / "examples.parquet", "wb")))
            )
        found = _Findings(selection, out)
        results = _results(inputs, fmts, ctx, n_workers, stack)
        # What needs no example: done here while worker processes (if any) audit.
        probes = _template_probes(tokenizer, ctx.info, selection)
        embedding_findings, embedding_note = _embedding_findings(tokenizer, ctx.info, weights, selection)
        tally, lengths, counts = _consume(results, found, table, progress)
        for f, n in [*_template_findings(probes, tally, counts), *embedding_findings]:
            found.add(f, examples=n)
    passed = all(SEVERITY_RANK.get(sev, 0) < SEVERITY_RANK[fail_on] for sev, n in found.by_severity.items() if n)
    summary = {
        "passed": passed,
        "fail_on": fail_on,
        "model": spec if spec is not None else ctx.info.name,
        "policy": policy,
        "max_length": max_length,
        "context_length": ctx.limit if not max_length else None,
        "inputs": inputs,
        "format": fmt,
        **_counts_summary(counts, found, selection),
        "embedding_check": embedding_note or ("ran" if weights else "skipped: --model has no weights"),
        "token_stats": lengths.summary(max_length),
        "findings_in_memory": len(found.kept),
        "findings_dropped_from_memory": found.dropped,
        "workers": n_workers,
        **_speed(counts["examples"], time.perf_counter() - started),
    }
    if audit_dir is not None:
        summary["run_dir"] = str(run_dir)
    if config_file is not None:
        summary["config_file"] = str(config_file)
    if audit_dir is not None:
        _write_summary(run_dir, summary, selection)
    # Template-level findings first, then per-example ones in input order.
    per_template = [f for f in found.kept if f.check in PER_TEMPLATE]
    findings = per_template + [f for f in found.kept if f.check not in PER_TEMPLATE]
    return AuditResult(findings, summary, passed, str(run_dir) if run_dir else None)


def _consume(
    results: Iterable[tuple[list[Finding], list[_Example]]],
    found: _Findings,
    table: ExamplesWriter | None,
    progress: Callable[[int], None] | None,
) -> tuple[_TemplateTally, _Lengths, dict[str, int]]:
    """Count, keep and write what the workers (or this process) audited, in input order."""
    tally, lengths = _TemplateTally(), _Lengths()
    counts = {"examples": 0, "unreadable": 0, "chat": 0, "chat_no_system": 0, "chat_with_assistant": 0, "raw": 0}
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
        if table is not None:
            table.add(examples)
        if counts["examples"] % 10_000 < len(examples):
            log.info("%d examples audited", counts["examples"])
    return tally, lengths, counts


def _counts_summary(counts: dict[str, int], found: _Findings, selection: Selection) -> dict[str, Any]:
    return {
        "examples": counts["examples"],
        "records_unreadable": counts["unreadable"],
        "chat_examples": counts["chat"],
        "raw_examples": counts["raw"],
        "findings": found.total,
        "by_severity": found.by_severity,
        "checks": {
            k: {x: v for x, v in c.items()}
            for k, c in sorted(found.by_check.items(), key=lambda kv: (-SEVERITY_RANK[kv[1]["severity"]], kv[0]))
        },
        "select": list(selection.select),
        "ignore": list(selection.ignore),
    }


def _speed(examples: int, elapsed: float) -> dict[str, Any]:
    return {"elapsed_s": round(elapsed, 3), "examples_per_s": round(examples / elapsed, 1) if elapsed > 0 else None}


def _write_summary(run_dir: str, summary: dict[str, Any], selection: Selection) -> None:
    """RUN/audit/summary.json and the manifest's audit stage."""
    write_json(Path(run_dir) / "audit" / "summary.json", summary)
    config = {
        "model": summary["model"],
        "max_length": summary["max_length"],
        "policy": summary["policy"],
        "select": list(selection.select),
        "ignore": list(selection.ignore),
        "fail_on": summary["fail_on"],
        "format": summary["format"],
    }
    update_manifest(run_dir, "audit", config=config, inputs=[p for p in summary["inputs"] if os.path.isfile(p)])


def _template_probes(tokenizer: Any, info: checks.TokenizerInfo, selection: Selection) -> dict[str, Finding] | None:
    """What the tokenizer and template checks find by probing (no data needed); None when no
    per-template check is selected."""
    if not selection.wants_any(*PER_TEMPLATE):
        return None
    probes: dict[str, Finding] = {}
    for f in itertools.chain(checks.check_pad_token(tokenizer, info), checks.check_template(tokenizer, info)):
        probes.setdefault(f.check, f)
    return probes


def _template_findings(
    probes: dict[str, Finding] | None, tally: _TemplateTally, counts: dict[str, int]
) -> Iterator[tuple[Finding, int]]:
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
        yield (
            finding(
                check,
                base.message + extra,
                hint=base.hint,
                example_id=first.example_id if first else None,
                source=first.source if first else None,
                data={**base.data, "examples": n, "first": where},
            ),
            n,
        )


def _embedding_findings(
    tokenizer: Any, info: checks.TokenizerInfo, weights: str | None, selection: Selection
) -> tuple[list[tuple[Finding, int]], str | None]:
    """tokens.untrained-embedding (when selected and there are weights), and a note for the summary."""
    if weights is None or not selection.wants("tokens.untrained-embedding"):
        return [], None
    from safetensors import SafetensorError

    try:
        embeddings = checks.load_input_embeddings(weights)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # a corrupt or truncated weights file
        log.warning("tokens.untrained-embedding skipped: cannot read the embeddings in %s (%s)", weights, e)
        return [], f"skipped: cannot read the embeddings in {weights} ({type(e).__name__})"
    if embeddings is None:
        return [], f"skipped: no input embedding tensor found in {weights}"
    ids = checks.template_special_ids(tokenizer, info)
    return [(f, 0) for f in checks.check_embeddings(tokenizer, info, embeddings, ids)], "ran"


def default_run_dir() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join("runs", f"audit-{stamp}")
