"""Run directory writing (DESIGN.md §4): atomic files and the manifest.

Every file is written to a temporary name in the same directory and renamed into place, so a
crash never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

PACKAGES = ("sftlab", "transformers", "tokenizers", "trl", "peft", "torch", "datasets", "datasketch")


def check_output(path: str | os.PathLike[str], flag: str, *, directory: bool = False) -> None:
    """Raise UsageError, before any work, when `path` cannot be written: an existing directory
    where a file goes (or a file where a directory goes), a regular file on the way to it, a
    folder this user cannot write into. `flag` names the option in the message."""
    from sftdata.errors import UsageError

    p = Path(path)
    what = f"{flag} {os.fspath(path)}"
    try:
        _check_output(p, what, directory)
    except OSError as e:  # a name too long, a symlink loop on the way
        raise UsageError(f"{what}: cannot be written ({e.strerror}); pick another place") from None


def _check_output(p: Path, what: str, directory: bool) -> None:
    from sftdata.errors import UsageError

    if len(p.name.encode()) > 200:  # atomic_open's temporary name adds ~15 characters to it
        raise UsageError(f"{what}: the file name is too long ({len(p.name.encode())} bytes); shorten it")
    if p.is_dir() and not directory:
        raise UsageError(f"{what}: is a directory; name a file in it, e.g. {p / 'out.jsonl'}")
    if p.exists() and not p.is_dir() and directory:
        raise UsageError(f"{what}: is a file, not a directory; pick another run directory")
    parent = p if p.is_dir() else p.parent
    while not parent.exists():
        if parent.is_symlink():
            raise UsageError(f"{what}: {parent} is a dangling symlink; fix it or pick another place")
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{what}: {parent} is a file, not a directory; pick another place")
    from sftdata.cli.kit import signals_held

    try:  # the one sure test (read-only mounts, /proc, ACLs): create and remove a file there
        with signals_held():
            fd, probe = tempfile.mkstemp(prefix=".sftdata-probe.", dir=parent)
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{what}: cannot write into {parent} ({e.strerror}); pick a writable place") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync and rename it over `path`."""
    from sftdata.cli.kit import signals_held
    from sftdata.errors import UsageError

    path = Path(path)
    binary = "b" in mode
    f: BinaryIO | Any = None
    tmp = None
    try:
        with signals_held():  # Ctrl-C / SIGTERM wait until `tmp` is known, so the except below removes it
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as e:
                raise UsageError(f"{path}: cannot write ({e.strerror}: {e.filename}); pick a writable place") from None
            f = os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"}))
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        try:
            os.replace(tmp, path)
        except OSError as e:  # e.g. a directory has taken the name since the run started
            raise UsageError(f"{path}: cannot be replaced ({e.strerror}); remove it or pick another name") from None
    except BaseException:
        if f is not None:
            f.close()
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any], *, finite: bool = False) -> int:
    """One JSON line per row (json.dumps(row, ensure_ascii=False, default=str)), atomically;
    returns the number of rows. With `finite=True` msgspec encodes each line, about 10x faster
    (dedup writes 23.6k findings on T0: 0.5 -> 0.05 s): the same JSON values, without the spaces
    after `,` and `:`, for rows the caller knows hold only dicts, lists, tuples, str, int, bool,
    None and floats that are never NaN or infinite. A row holding anything else (msgspec refuses
    a type it does not know) goes through json.dumps; sets, dates and dataclasses, which msgspec
    encodes its own way, must not be in them (as for `kit.print_json`)."""
    encode = _plain_encoder() if finite else None
    n = 0
    with atomic_open(path, "wb") as f:
        for row in rows:
            data = None
            if encode is not None:
                try:
                    data = encode(row)
                except (TypeError, ValueError, UnicodeError, OverflowError):
                    data = None
            if data is None:
                data = json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")
            f.write(data)
            f.write(b"\n")
            n += 1
    return n


def _plain_encoder() -> Any:
    """msgspec's JSON encoder refusing (TypeError) every type it would encode only through a hook."""
    import msgspec

    def refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is left to json.dumps")

    encoder = msgspec.json.Encoder(enc_hook=refuse)

    def encode(row: Any) -> bytes:
        try:
            return encoder.encode(row)
        except msgspec.MsgspecError as e:
            raise ValueError(str(e)) from None

    return encode


def write_parquet(path: str | os.PathLike[str], table: Any) -> None:
    """Write a pyarrow Table atomically."""
    import pyarrow.parquet as pq

    with atomic_open(path, "wb") as f:
        pq.write_table(table, f)


def pyarrow_without_pandas() -> bool:
    """Let pyarrow settle, once, that pandas is absent, unless something imported pandas already:
    its first array otherwise imports pandas (0.4 s; `sftdata dedup --run-dir` on T0 paid it)
    only to ask whether the values are pandas objects, which sftlab never hands it. For a process
    that runs one command and exits (`kit.WHOLE_PROCESS`): pyarrow then skips its pandas checks
    for the rest of the process (an explicit `to_pandas()` still imports pandas). Returns whether
    it did so."""
    if "pandas" in sys.modules or "pyarrow" in sys.modules:  # pyarrow may have settled it already
        return False
    import pyarrow as pa

    class NoPandas:  # an import finder under which `import pandas` raises ImportError
        @staticmethod
        def find_spec(name: str, path: Any = None, target: Any = None) -> None:
            if name == "pandas" or name.startswith("pandas."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    finder = NoPandas()
    sys.meta_path.insert(0, finder)  # type: ignore[arg-type]
    try:
        pa.array([0])  # pyarrow's pandas shim tries its import here, once, and remembers
    finally:
        sys.meta_path.remove(finder)  # type: ignore[arg-type]
    return "pandas" not in sys.modules


def sha256_file(path: str | os.PathLike[str]) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def update_manifest(
    run_dir: str | os.PathLike[str],
    stage: str,
    *,
    command: list[str] | None = None,
    config: dict[str, Any] | None = None,
    inputs: Iterable[str] = (),
) -> dict[str, Any]:
    """Add or refresh `stage` in RUN/manifest.json (created on first use), atomically."""
    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    manifest: dict[str, Any] = {}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            # keep the unreadable one beside the new one rather than losing its stages silently
            backup = path.with_name(f"manifest.corrupt-{int(_dt.datetime.now().timestamp())}.json")
            os.replace(path, backup)
            log.warning("%s was unreadable (%s); moved to %s and started a new manifest", path, e, backup)
            manifest = {}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest.setdefault("schema_version", 1)
    manifest.setdefault("created", now)
    manifest["updated"] = now
    manifest["packages"] = package_versions()
    stages = manifest.setdefault("stages", {})
    stages[stage] = {
        "command": command if command is not None else sys.argv,
        "config": config or {},
        "inputs": [{"path": str(p), "sha256": sha256_file(p)} for p in inputs],
        "finished": now,
    }
    manifest["stages_present"] = sorted(stages)
    write_json(path, manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# RUN/audit/examples.parquet

EXAMPLES_ROW_GROUP_ROWS = 8192
EXAMPLES_ROW_GROUP_TOKENS = 4_000_000


def examples_schema() -> Any:
    """The columns of RUN/audit/examples.parquet (one row per audited example)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("file", pa.string()),
            ("line", pa.int32()),
            ("row", pa.int32()),
            ("n_tokens", pa.int32()),
            ("n_tokens_full", pa.int32()),
            ("n_trained", pa.int32()),
            ("truncated", pa.bool_()),
            ("n_findings", pa.int32()),
            ("severity", pa.string()),
            ("input_ids", pa.list_(pa.int32())),
            ("loss_mask", pa.list_(pa.bool_())),
            ("message_index", pa.list_(pa.int32())),
        ]
    )


class ExamplesWriter:
    """Streams examples into RUN/audit/examples.parquet (atomically, through an open atomic_open
    file), a row group every few thousand examples so memory stays bounded. An example has `id`,
    `file`, `line`, `row`, `n_tokens_full`, `n_trained`, `truncated`, `findings` and the token
    arrays as bytes: `input_ids` and `message_index` int32, `loss_mask` one byte per token."""

    def __init__(self, f: BinaryIO) -> None:
        import pyarrow.parquet as pq

        self.schema = examples_schema()
        self.writer = pq.ParquetWriter(f, self.schema, compression="zstd")
        self.pending: list[Any] = []
        self.rows = self.tokens = 0

    def add(self, examples: list[Any]) -> None:
        if not examples:
            return
        self.pending.append(_examples_batch(examples, self.schema))
        self.rows += len(examples)
        self.tokens += sum(len(e.loss_mask) for e in examples)
        if self.rows >= EXAMPLES_ROW_GROUP_ROWS or self.tokens >= EXAMPLES_ROW_GROUP_TOKENS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending), row_group_size=max(self.rows, 1))
        self.pending, self.rows, self.tokens = [], 0, 0

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def __enter__(self) -> ExamplesWriter:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.writer.close()


def _worst(findings: tuple[Any, ...]) -> str | None:
    from sftdata.catalogue import SEVERITY_RANK

    return max((f.severity for f in findings), key=SEVERITY_RANK.__getitem__, default=None)


def _examples_batch(examples: list[Any], schema: Any) -> Any:
    import numpy as np
    import pyarrow as pa

    lens = np.fromiter((len(e.loss_mask) for e in examples), dtype=np.int32, count=len(examples))
    offsets = np.zeros(len(examples) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    off = pa.array(offsets)
    ids = np.frombuffer(b"".join(e.input_ids for e in examples), dtype=np.int32)
    mi = np.frombuffer(b"".join(e.message_index for e in examples), dtype=np.int32)
    mask = np.frombuffer(b"".join(e.loss_mask for e in examples), dtype=np.bool_)
    return pa.record_batch(
        [
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
        ],
        schema=schema,
    )
