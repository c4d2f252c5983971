"""Progress bars for long commands (`audit`, `dedup`, `convert`): tqdm on stderr, and only when
stderr is a terminal; nothing at all otherwise (pipes, files, CI logs), and never on stdout."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

__all__ = ["bar", "count_examples", "is_shown"]


def is_shown(stream: TextIO | None = None) -> bool:
    """Whether bars are drawn: `stream` (stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class _Silent:
    """What `bar` yields when bars are off: the same calls, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description_str(self, desc: str) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        pass


@contextlib.contextmanager
def bar(desc: str, total: int | None = None, unit: str = "ex") -> Iterator[Any]:
    """A tqdm bar (count, rate, and ETA when `total` is known) on stderr if it is a terminal, else
    an object with the same methods that does nothing. Leaves no line behind when done."""
    if not is_shown():
        yield _Silent()
        return
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    sized = size.columns > 0 and size.lines > 0  # a terminal that reports no size (some pseudo-terminals):
    with tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=sized,  # 80 x 24
        ncols=None if sized else 80,
        nrows=None if sized else 24,
        mininterval=0.2,
        leave=False,
    ) as b:
        yield b


def count_examples(paths: Sequence[str]) -> int | None:
    """The number of records in `paths` where that is cheap to know (uncompressed .jsonl: its
    non-empty lines; .parquet: its metadata), else None (the bar then shows no ETA)."""
    total = 0
    for path in paths:
        low = os.fspath(path).lower()
        try:
            if low.endswith(".jsonl"):
                total += _count_lines(path)
            elif low.endswith(".parquet"):
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
            else:
                return None
        except (OSError, ValueError):
            return None
    return total


def _count_lines(path: str) -> int:
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")
