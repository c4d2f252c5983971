"""Conversations -> the rows TRL trains on, through sftdata's single tokenize-with-mask path.

Every example is tokenized by `sftdata.masks.tokenize_stream` (the function the audit uses), and
its labels are its input ids with -100 wherever `loss_mask` is False. TRL gets ready `input_ids`
and `labels` (and, packed, `seq_lengths`) and is told not to prepare the dataset, so nothing is
re-tokenized or re-masked on the way to the model.

Packing is padding-free: examples are binned best-fit-decreasing into rows of at most
`max_length` tokens, and `PackedCollator` gives each row position ids that restart at 0 per
example and no attention mask, from which transformers builds a block-diagonal causal mask (no
example sees another; flash-attention kernels use the same position ids for varlen attention).
Rows stay rows: a batch is [rows, longest row], so attention costs rows x max_length^2, not
(rows x max_length)^2 as when a batch is flattened into one sequence. The few padding positions at
the end of shorter rows follow TRL's convention: position id 0 each (one-token segments that see
only themselves) and label -100. The label of each example's first token is -100 too: it has no
context to be predicted from (unpacked, transformers' label shift drops it the same way).
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftdata import formats, masks
from sftdata.records import Conversation, Finding, Source, Tokenized

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training example: the audited tokens and the labels derived from their mask
    (int32 arrays: 8 bytes a token, so a million examples fit in memory)."""

    example_id: str
    source: str
    input_ids: np.ndarray
    labels: np.ndarray
    n_trained: int


@dataclass(frozen=True)
class Skipped:
    example_id: str
    source: str
    reason: str


def labels_from_mask(input_ids: Sequence[int], loss_mask: Sequence[bool]) -> list[int]:
    """Labels as transformers expects them (unshifted): the token id where trained, else -100."""
    return [t if m else IGNORE for t, m in zip(input_ids, loss_mask, strict=True)]


def to_example(conv: Conversation, tok: Tokenized) -> Example | Skipped:
    if not tok.input_ids:
        reason = "; ".join(f.message for f in tok.findings) or "no tokens"
        return Skipped(conv.id, str(conv.source), f"could not be tokenized: {reason}")
    # Token 0 has no context: no causal LM can be trained on it, so it does not count.
    if not any(tok.loss_mask[1:]):
        return Skipped(conv.id, str(conv.source), "no trained tokens (mask policy, or truncated before the answer)")
    return Example(
        conv.id,
        str(conv.source),
        np.asarray(tok.input_ids, dtype=np.int32),
        np.asarray(labels_from_mask(tok.input_ids, tok.loss_mask), dtype=np.int32),
        sum(tok.loss_mask[1:]),
    )


def examples_from_parquet(path: str | os.PathLike[str]) -> tuple[list[Example], list[Skipped]]:
    """The audit's examples.parquet (DESIGN.md §4) as training examples: the audited tokens and
    masks themselves, so no file is read or tokenized a second time. The same rules as
    `to_example`: no tokens, or no trained token after the first, is skipped."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "file", "line", "row", "input_ids", "loss_mask"])
    examples: list[Example] = []
    skipped: list[Skipped] = []
    for batch in table.to_batches():
        ids_col, mask_col = batch.column("input_ids"), batch.column("loss_mask")
        id_off = ids_col.offsets.to_numpy()
        ids_all = ids_col.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        mask_off = mask_col.offsets.to_numpy()
        mask_all = mask_col.values.to_numpy(zero_copy_only=False).astype(bool, copy=False)
        meta = zip(
            batch.column("id").to_pylist(),
            batch.column("file").to_pylist(),
            batch.column("line").to_pylist(),
            batch.column("row").to_pylist(),
            strict=True,
        )
        for k, (eid, file, line, row) in enumerate(meta):
            source = str(Source(file, line, row))
            ids = ids_all[id_off[k] : id_off[k + 1]]
            mask = mask_all[mask_off[k] : mask_off[k + 1]]
            if len(ids) == 0:
                skipped.append(Skipped(eid, source, "could not be tokenized (the audit's findings say why)"))
                continue
            n_trained = int(mask[1:].sum())
            if n_trained == 0:
                skipped.append(Skipped(eid, source, "no trained tokens (mask policy, or truncated before the answer)"))
                continue
            examples.append(Example(eid, source, ids.copy(), np.where(mask, ids, IGNORE).astype(np.int32), n_trained))
    return examples, skipped


def read_conversations(paths: Iterable[str]) -> Iterable[Conversation]:
    """Every Conversation in `paths`; bad records (Findings) are left to the audit and skipped."""
    for path in paths:
        for item in formats.read(path):
            if isinstance(item, Finding):
                if item.severity == "error":
                    log.info("skipping %s: %s", item.location(), item.message)
                continue
            yield item


def load_examples(
    conversations: Iterable[Conversation], tokenizer: Any, *, policy: str, max_length: int
) -> tuple[list[Example], list[Skipped]]:
    examples: list[Example] = []
    skipped: list[Skipped] = []
    for conv, tok in masks.tokenize_stream(conversations, tokenizer, policy=policy, max_length=max_length):
        ex = to_example(conv, tok)
        (examples if isinstance(ex, Example) else skipped).append(ex)  # type: ignore[arg-type]
    return examples, skipped


def pack_bfd(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: longest first, each into the fullest bin it still fits in.
    Returns bins of indices into `lengths` (each bin in index order); deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"an example of {n} tokens does not fit in a row of {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return [sorted(b) for b in bins]


def rows(
    examples: Sequence[Example], *, packing: bool, max_length: int
) -> tuple[dict[str, list[Any]], list[list[int]]]:
    """Columns for the training dataset, and which examples each row holds."""
    if not packing:
        groups = [[i] for i in range(len(examples))]
        return {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}, groups
    groups = pack_bfd([len(e.input_ids) for e in examples], max_length)
    cols: dict[str, list[Any]] = {"input_ids": [], "labels": [], "seq_lengths": []}
    for g in groups:
        cols["input_ids"].append(np.concatenate([examples[i].input_ids for i in g]))
        cols["labels"].append(np.concatenate([examples[i].labels for i in g]))
        cols["seq_lengths"].append([len(examples[i].input_ids) for i in g])
    return cols, groups


@dataclass(frozen=True)
class PackedCollator:
    """Packed rows -> {input_ids, labels, position_ids} of shape [rows, longest row] (see module doc)."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[b, :n] = torch.tensor(r["input_ids"])
            labels[b, :n] = torch.tensor(r["labels"])
            position_ids[b, :n] = torch.cat([torch.arange(k) for k in r["seq_lengths"]])
        labels[position_ids == 0] = IGNORE
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def to_dataset(examples: Sequence[Example], *, packing: bool, max_length: int) -> Any:
    from datasets import Dataset

    cols, groups = rows(examples, packing=packing, max_length=max_length)
    n_tokens = sum(len(e.input_ids) for e in examples)
    if packing:
        fill = n_tokens / max(1, len(groups) * max_length)
        log.info(
            "packed %d examples (%d tokens) into %d rows of <= %d tokens (%.0f%% full)",
            len(examples),
            n_tokens,
            len(groups),
            max_length,
            100 * fill,
        )
    return Dataset.from_dict(cols)
