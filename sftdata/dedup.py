"""Exact and MinHash near-duplicates, and eval-set contamination (checks `dedup.*`).

The pipeline, top to bottom (signatures and normalisation live in `sftdata.minhash`):

1. `text_of` picks the text of a Conversation (`fields`: prompt = non-assistant messages, answer =
   assistant messages, or all), as the examples arrive (the CLI passes its readers), and hands it
   to a `minhash.SignStream`: worker threads fold each batch of texts (NFKC, casefold,
   punctuation to spaces, whitespace collapsed; a compiled kernel) while the next ones are read.
2. The same workers compute MinHash signatures bit-identical to datasketch's `MinHash`, for every
   text as it comes. Identical normalised texts are exact duplicates: the signatures of one copy
   of each text (`Signatures.take`) go on to step 3. Empty texts are skipped (counted, never
   paired).
3. `lsh_params` turns the user's Jaccard threshold into bands x rows such that a pair at exactly
   the threshold becomes a candidate with probability >= 0.95, with the smallest false-positive
   area. Candidates come from in-memory banding, or from datasketch's `MinHashLSH` with Redis
   storage (`redis://HOST:PORT/DB`) so several workers share one index.
4. Every candidate pair is verified against the exact Jaccard similarity of its shingle sets
   (a shingle is identified by the first 8 bytes of its SHA-1, computed anyway) by a compiled
   kernel (a merge of two sorted sets per pair, no Python object per pair, on all cores); pairs
   below the threshold are dropped, so no false pair is reported.
5. Connected components of exact and verified pairs are the clusters; each keeps one
   representative (`first` or `longest`, never a contaminated one while a clean one exists).
   Pairs with an `against` example are contamination.
6. Findings are per example: one `dedup.exact` / `dedup.near` per example `-o` drops from a
   cluster (naming the kept representative, the cluster size and the verified Jaccard to it), one
   `dedup.contamination` per training example that copies an --against example. The pairs stay in
   `DedupResult.pairs` (and `dedup/pairs.parquet`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import numpy as np

from sftdata import minhash
from sftdata.catalogue import finding, finding_of
from sftdata.minhash import THREADS, ShingleSpec, Signatures, _map, parse_shingle
from sftdata.records import Conversation, Finding

log = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "DedupConfig",
    "DedupResult",
    "LshParams",
    "Pair",
    "Pairs",
    "ShingleSets",
    "candidate_pairs",
    "candidate_probability",
    "dedup",
    "lsh_params",
    "redis_candidate_pairs",
    "shingle_sets",
    "text_of",
    "verified_jaccard",
]

FIELDS = ("prompt", "answer", "all")
KEEP = ("first", "longest")
MIN_RECALL = 0.95  # probability that a pair at exactly the threshold becomes an LSH candidate
_SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # as imported: keys the AOT module
# progress and summary["seconds"]: "read" takes the examples in (the CLI reads its files here) while
# worker threads normalise and sign their texts; "signatures" is the signing left when the input
# ends, then exact duplicates (summary["kernel_seconds"]: the workers' seconds in each kernel)
STAGES = ("read", "signatures", "candidates", "verify", "clusters", "findings")


# ---------------------------------------------------------------------------------------------
# 1. Text of an example
# ---------------------------------------------------------------------------------------------


def text_of(conversation: Conversation, fields: str = "all") -> str:
    """The raw text dedup compares: prompt = every non-assistant message, answer = assistant ones."""
    if fields == "prompt":
        return "\n".join([m.content for m in conversation.messages if m.role != "assistant" and m.content])
    if fields == "answer":
        return "\n".join([m.content for m in conversation.messages if m.role == "assistant" and m.content])
    return "\n".join([m.content for m in conversation.messages if m.content])


# ---------------------------------------------------------------------------------------------
# 3. LSH: bands and rows from the threshold, candidate pairs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LshParams:
    bands: int
    rows: int
    threshold: float
    recall_at_threshold: float  # P(candidate | Jaccard == threshold)
    false_positive_area: float  # integral of P(candidate | s) over s in [0, threshold)


def candidate_probability(jaccard: float | np.ndarray, bands: int, rows: int) -> Any:
    """Probability that a pair with this Jaccard similarity shares at least one LSH band."""
    return 1.0 - (1.0 - np.asarray(jaccard, dtype=float) ** rows) ** bands


def lsh_params(threshold: float, num_perm: int = 128, min_recall: float = MIN_RECALL) -> LshParams:
    """Bands x rows (bands * rows <= num_perm) whose candidate probability at `threshold` is at
    least `min_recall`, choosing among those the one with the smallest false-positive area. If no
    choice reaches `min_recall` (very low thresholds with few permutations), the most sensitive
    one is used."""
    grid = np.linspace(0.0, threshold, 401)
    best: LshParams | None = None
    fallback: LshParams | None = None
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            recall = float(candidate_probability(threshold, bands, rows))
            if recall < min_recall and bands < num_perm // rows:
                continue
            fp = float(np.trapezoid(candidate_probability(grid, bands, rows), grid))
            params = LshParams(bands, rows, threshold, recall, fp)
            if recall >= min_recall:
                if best is None or fp < best.false_positive_area:
                    best = params
                break  # more bands only add false positives
            if fallback is None or recall > fallback.recall_at_threshold:
                fallback = params
    chosen = best or fallback
    assert chosen is not None
    return chosen


def _band_keys(hashvalues: np.ndarray, params: LshParams) -> np.ndarray:
    """(bands, n) uint64 keys, one per band: a 64-bit mix of the band's `rows` hash values.
    Equal bands give equal keys; a rare key collision only adds a candidate, which is verified."""
    n = hashvalues.shape[0]
    keys = np.empty((params.bands, n), dtype=np.uint64)
    prime = np.uint64(0x9E3779B97F4A7C15)
    for band in range(params.bands):
        cols = hashvalues[:, band * params.rows : (band + 1) * params.rows].astype(np.uint64)
        k = np.full(n, band, dtype=np.uint64)
        for r in range(params.rows):
            k ^= cols[:, r]
            k *= prime
            k ^= k >> np.uint64(29)
        keys[band] = k
    return keys


def candidate_pairs(
    hashvalues: np.ndarray, params: LshParams, max_bucket: int = 2000, *, threads: int = THREADS
) -> np.ndarray:
    """In-memory banding: (m, 2) int64 pairs i < j sharing at least one band, each pair once,
    ascending.

    A bucket bigger than `max_bucket` (thousands of distinct texts agreeing on a band: templated
    data) links each member to its first `max_bucket` members (by index) only, to bound the pair
    count. Per band, a stable argsort of the band keys puts each bucket in a run and a compiled
    kernel writes each pair in a run as one code i * n + j; bands run on `threads` threads; the
    codes are then sorted and their repeats dropped. (T0: 3.7M codes, 0.55 -> 0.2 s.)"""
    n = hashvalues.shape[0]
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    _jit()
    band_keys = _band_keys(hashvalues, params)

    def band(k: int) -> tuple[np.ndarray, int]:
        order = np.argsort(band_keys[k], kind="stable")
        return _band_pairs_kernel(order, band_keys[k][order], max_bucket)

    found = _map(threads, band, [(k,) for k in range(params.bands)])
    big = sum(b for _, b in found)
    if big:
        log.warning(
            "%d LSH buckets hold more than %d texts; pairing their members with the first %d only",
            big,
            max_bucket,
            max_bucket,
        )
    code = np.concatenate([c for c, _ in found])
    if len(code) == 0:
        return np.empty((0, 2), dtype=np.int64)
    code.sort()
    code = code[np.concatenate([[True], code[1:] != code[:-1]])]
    return np.stack([code // n, code % n], axis=1)


def _band_pairs_kernel(order: np.ndarray, sorted_keys: np.ndarray, max_bucket: int) -> tuple[np.ndarray, int]:
    """The pairs within each run of equal `sorted_keys` (texts `order`): element p of a run pairs
    with every later one if p < max_bucket; each pair as min * n + max. Also how many runs are
    longer than max_bucket."""
    n = len(order)
    total = 0
    big = 0
    s = 0
    while s < n:
        e = s + 1
        while e < n and sorted_keys[e] == sorted_keys[s]:
            e += 1
        length = e - s
        big += length > max_bucket
        m = max(0, min(length, max_bucket))  # members that pair with every later one
        total += m * (length - 1) - m * (m - 1) // 2
        s = e
    out = np.empty(total, np.int64)
    k = 0
    s = 0
    while s < n:
        e = s + 1
        while e < n and sorted_keys[e] == sorted_keys[s]:
            e += 1
        for p in range(min(e - s, max_bucket)):
            i = order[s + p]
            for q in range(s + p + 1, e):
                j = order[q]
                out[k] = min(i, j) * n + max(i, j)
                k += 1
        s = e
    return out, big


def parse_redis_url(url: str) -> tuple[dict[str, Any], bytes | None]:
    """`redis://HOST:PORT/DB[?basename=NAME]` -> (redis client kwargs, basename or None)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"--lsh-storage {url!r} is not redis://HOST:PORT/DB (e.g. redis://127.0.0.1:6379/0)")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"--lsh-storage {url!r}: database {db!r} is not a number")
    try:
        port = parts.port or 6379
    except ValueError as e:
        raise ValueError(f"--lsh-storage {url!r}: {e}") from None
    cfg: dict[str, Any] = {"host": parts.hostname, "port": port, "db": int(db)}
    if parts.password:
        cfg["password"] = parts.password
    basename = parse_qs(parts.query).get("basename", [None])[0]
    return cfg, basename.encode("utf-8") if basename else None


def redis_candidate_pairs(
    hashvalues: np.ndarray,
    keys: Sequence[str],
    params: LshParams,
    url: str,
    *,
    seed: int = 1,
    basename: bytes = b"sftdata-dedup",
) -> tuple[np.ndarray, int]:
    """Candidates from datasketch `MinHashLSH` with Redis storage, shared with other workers.

    Inserts every signature (as a datasketch `LeanMinHash`) under its key, then queries each one
    (the same bucket lookups as `MinHashLSH.query`, pipelined per band). Returns the local pairs
    and the number of candidate links to keys this run does not hold (other workers' examples:
    they cannot be verified here)."""
    import redis
    from datasketch import LeanMinHash, MinHashLSH
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    redis_cfg, url_basename = parse_redis_url(url)
    redis.Redis(**redis_cfg, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)).ping()  # fail fast
    storage = {"type": "redis", "basename": url_basename or basename, "redis": redis_cfg}
    num_perm = hashvalues.shape[1]
    lsh = MinHashLSH(num_perm=num_perm, params=(params.bands, params.rows), storage_config=storage, prepickle=False)
    bkeys = [k.encode("utf-8") for k in keys]
    index = {k: i for i, k in enumerate(bkeys)}
    with lsh.insertion_session(buffer_size=10000) as session:
        for key, hv in zip(bkeys, hashvalues):
            session.insert(key, LeanMinHash(seed=seed, hashvalues=hv, scheme="affine32"), check_duplication=False)
    pairs: set[tuple[int, int]] = set()
    remote = 0
    step = 2000
    for lo in range(0, len(bkeys), step):
        chunk = hashvalues[lo : lo + step]
        found: list[set[bytes]] = [set() for _ in range(len(chunk))]
        for (start, end), table in zip(lsh.hashranges, lsh.hashtables):
            band_hashes = [lsh._H(hv[start:end]) for hv in chunk]  # datasketch's own band key
            for q, members in enumerate(table.getmany(*band_hashes)):
                found[q].update(members)
        for q, members in enumerate(found):
            i = lo + q
            for key in members:
                j = index.get(bytes(key))
                if j is None:
                    remote += 1
                elif j != i:
                    pairs.add((min(i, j), max(i, j)))
    arr = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return arr, remote


# ---------------------------------------------------------------------------------------------
# 4. Verification
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShingleSets:
    """Texts' shingle sets: text i's sorted, unique fingerprints are keys[offsets[i]:offsets[i + 1]]
    (empty for texts not asked for)."""

    keys: np.ndarray  # uint64
    offsets: np.ndarray  # (n + 1,) int64

    def size(self) -> np.ndarray:
        return np.diff(self.offsets)


def shingle_sets(signatures: Signatures, texts: np.ndarray | None = None, *, threads: int = THREADS) -> ShingleSets:
    """The shingle sets of `texts` (default: all); the others are left empty. A compiled kernel
    sorts each text's fingerprints and drops repeats, on `threads` threads."""
    _jit()
    n = len(signatures.hashvalues)
    chosen = np.ones(n, dtype=bool) if texts is None else np.zeros(n, dtype=bool)
    if texts is not None and len(texts):
        chosen[np.asarray(texts, dtype=np.int64).ravel()] = True
    step = max(1, -(-n // max(1, threads)))
    parts = _map(
        threads,
        lambda lo, hi: _sets_kernel(signatures.fingerprints, signatures.offsets[lo : hi + 1], chosen[lo:hi]),
        [(lo, min(n, lo + step)) for lo in range(0, n, step)],
    )
    if not parts:
        return ShingleSets(np.empty(0, np.uint64), np.zeros(1, np.int64))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.concatenate([np.diff(p[1]) for p in parts]), out=offsets[1:])
    return ShingleSets(np.concatenate([p[0] for p in parts]), offsets)


def verified_jaccard(
    sets: ShingleSets, pairs: np.ndarray, *, threads: int = THREADS, chunk: int = 1 << 16
) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair of texts (0 for two empty sets):
    a compiled merge of the two sorted sets per pair, chunks of pairs on `threads` threads."""
    _jit()
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), dtype=np.float64)
    if len(pairs) == 0:
        return out
    left, right = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])

    def work(lo: int, hi: int) -> None:
        out[lo:hi] = _jaccard_kernel(sets.keys, sets.offsets, left[lo:hi], right[lo:hi])

    _map(threads, work, [(lo, min(lo + chunk, len(pairs))) for lo in range(0, len(pairs), chunk)])
    return out


def _sets_kernel(fps: np.ndarray, offsets: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each chosen text's fingerprints sorted, repeats dropped. Fingerprints are SHA-1 bytes, so
    uniform: a bucket pass on their top bits (as many buckets as the text has shingles) leaves
    runs of about one, which an insertion sort finishes in linear time (T0, every text: 0.63 s with
    np.sort per text, 0.22 s so). Should the insertion sort move more than 16 per element (two
    distinct shingles in one bucket, each repeated many times), np.sort redoes that text."""
    n = len(offsets) - 1
    total = 0
    longest = 0
    for i in range(n):
        if chosen[i]:
            total += offsets[i + 1] - offsets[i]
            longest = max(longest, offsets[i + 1] - offsets[i])
    keys = np.empty(total, np.uint64)
    out_off = np.zeros(n + 1, np.int64)
    bits = 0
    while (1 << bits) < longest:
        bits += 1
    count = np.zeros((1 << bits) + 1, np.int64)
    run = np.empty(longest, np.uint64)
    q = 0
    for i in range(n):
        a, m = offsets[i], offsets[i + 1] - offsets[i]
        if chosen[i] and m > 0:
            kb = 0
            while (1 << kb) < m:
                kb += 1
            shift = np.uint64(64 - kb)
            count[: (1 << kb) + 1] = 0
            for k in range(a, a + m):
                count[(fps[k] >> shift if kb > 0 else np.uint64(0)) + np.uint64(1)] += 1
            for j in range(1 << kb):
                count[j + 1] += count[j]
            for k in range(a, a + m):
                h = fps[k] >> shift if kb > 0 else np.uint64(0)
                run[count[h]] = fps[k]
                count[h] += 1
            moves = 0
            for k in range(1, m):
                x = run[k]
                j = k - 1
                while j >= 0 and run[j] > x:
                    run[j + 1] = run[j]
                    j -= 1
                run[j + 1] = x
                moves += k - 1 - j
                if moves > 16 * m:
                    run[:m].sort()
                    break
            keys[q] = run[0]
            q += 1
            for k in range(1, m):
                if run[k] != run[k - 1]:
                    keys[q] = run[k]
                    q += 1
        out_off[i + 1] = q
    return keys[:q].copy(), out_off


def _jaccard_kernel(keys: np.ndarray, off: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    out = np.zeros(len(left), np.float64)
    for k in range(len(left)):
        i, e1 = off[left[k]], off[left[k] + 1]
        j, e2 = off[right[k]], off[right[k] + 1]
        union = (e1 - i) + (e2 - j)
        inter = 0
        while i < e1 and j < e2:
            a, b = keys[i], keys[j]
            if a == b:
                inter += 1
                i += 1
                j += 1
            elif a < b:
                i += 1
            else:
                j += 1
        union -= inter
        if union > 0:
            out[k] = inter / union
    return out


_JIT_LOCK = threading.Lock()
_jitted = False  # the entry points are compiled (ahead of time or by numba)
_numba_bound = False  # they are numba's (`_jit_numba`)

# the compiled entry points and their signatures (see minhash._AOT_EXPORTS and sftdata/aot.py)
_AOT_EXPORTS = {
    "_band_pairs_kernel": "Tuple((int64[::1], int64))(int64[::1], uint64[::1], int64)",
    "_sets_kernel": "Tuple((uint64[::1], int64[::1]))(uint64[::1], int64[::1], boolean[::1])",
    "_estimate_kernel": "float64[::1](uint32[:, ::1], int64[::1], int64[::1])",
    "_jaccard_kernel": "float64[::1](uint64[::1], int64[::1], int64[::1], int64[::1])",
}


def load_kernels() -> None:
    """Load (or compile) every compiled kernel dedup uses now; the CLI does it before reading, so
    the signing workers can start on the first batch."""
    minhash._jit()
    _jit()


def _jit() -> None:
    """Put the verification kernels in place of the Python functions above: from the
    ahead-of-time module where it is built (sftdata/aot.py), else numba's (`_jit_numba`);
    `import sftdata.dedup` does not import numba. Idempotent, thread-safe."""
    global _jitted
    with _JIT_LOCK:
        if _jitted:
            return
        from sftdata import aot

        if aot.bind(globals(), "dedup", _AOT_EXPORTS):
            _jitted = True
            return
    _jit_numba()


def _jit_numba() -> None:
    """Compile the verification kernels with numba (or load them from numba's cache). Idempotent,
    thread-safe."""
    global _jitted, _numba_bound
    with _JIT_LOCK:
        if _numba_bound:
            return
        numba = minhash.import_numba()
        compiled = {name: numba.njit(sig, nogil=True, cache=True)(_PY[name]) for name, sig in _AOT_EXPORTS.items()}
        globals().update(compiled)
        _numba_bound = _jitted = True


def compiled_by() -> str:
    """Who compiled the kernels a dedup run uses: "aot", "numba", "aot+numba" (a process that
    compiled some with numba since), or "" (none yet)."""
    mine = "numba" if _numba_bound else "aot" if _jitted else ""
    theirs = minhash.compiled_by()
    return mine if mine == theirs else "+".join(sorted({mine, theirs} - {""}))


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated aranges [starts[k], starts[k] + lens[k])."""
    total = int(lens.sum())
    first = np.cumsum(lens) - lens
    return np.repeat(starts - first, lens) + np.arange(total)


def estimated_jaccard(hashvalues: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """MinHash estimate: the share of equal hash values (datasketch `MinHash.jaccard`)."""
    _jit()
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return _estimate_kernel(
        np.ascontiguousarray(hashvalues), np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
    )


def _estimate_kernel(hashvalues: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    out = np.empty(len(left), np.float64)
    m = hashvalues.shape[1]
    for k in range(len(left)):
        a, b = hashvalues[left[k]], hashvalues[right[k]]
        same = 0
        for p in range(m):
            same += a[p] == b[p]
        out[k] = same / m
    return out


# ---------------------------------------------------------------------------------------------
# 5. The whole run: exact groups, near pairs, contamination, clusters, findings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8
    fields: str = "all"
    shingle: str = "words:5"
    keep: str = "first"
    num_perm: int = 128
    seed: int = 1
    lsh_storage: str | None = None  # redis://HOST:PORT/DB
    threads: int = THREADS

    def problems(self) -> list[str]:
        """What is wrong with this config, as messages naming the flag (empty if fine)."""
        out = []
        if not 0.0 < self.threshold <= 1.0:
            out.append(f"--threshold {self.threshold} is not in (0, 1]; try 0.8")
        if self.fields not in FIELDS:
            out.append(f"--fields {self.fields!r} is not one of {', '.join(FIELDS)}")
        if self.keep not in KEEP:
            out.append(f"--keep {self.keep!r} is not one of {', '.join(KEEP)}")
        if self.num_perm < 2:
            out.append(f"--num-perm {self.num_perm} is below 2; try 128")
        try:
            parse_shingle(self.shingle)
        except ValueError as e:
            out.append(f"--shingle: {e}")
        if self.lsh_storage is not None:
            try:
                parse_redis_url(self.lsh_storage)
            except ValueError as e:
                out.append(str(e))
        return out


KINDS = ("exact", "near", "contamination")


@dataclass(frozen=True)
class Pair:
    """Two examples (indices into DedupResult.examples) and their similarity. For exact and near
    pairs both are training examples, left < right; for contamination left is the training example
    and right the --against example."""

    left: int
    right: int
    kind: str  # one of KINDS
    estimated_jaccard: float
    verified_jaccard: float


@dataclass(frozen=True)
class Pairs:
    """All pairs of a run as parallel arrays (a corpus like T0 has hundreds of thousands)."""

    left: np.ndarray  # int64
    right: np.ndarray  # int64
    kind: np.ndarray  # int8 index into KINDS
    estimated_jaccard: np.ndarray  # float64
    verified_jaccard: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.left)

    def count(self, kind: str) -> int:
        return int((self.kind == KINDS.index(kind)).sum())

    def top(self, kind: str | None = None, n: int | None = None) -> list[Pair]:
        """Pairs (of one kind) by verified Jaccard, highest first, then by position."""
        idx = np.arange(len(self)) if kind is None else np.flatnonzero(self.kind == KINDS.index(kind))
        idx = idx[np.lexsort((self.right[idx], self.left[idx], -self.verified_jaccard[idx]))][:n]
        return [
            Pair(
                int(self.left[k]),
                int(self.right[k]),
                KINDS[self.kind[k]],
                float(self.estimated_jaccard[k]),
                float(self.verified_jaccard[k]),
            )
            for k in idx
        ]


@dataclass(frozen=True)
class DedupResult:
    examples: tuple[Conversation, ...]  # the training examples, then the --against examples
    n_train: int
    pairs: Pairs
    cluster: np.ndarray  # (n_train,) cluster id, or -1 for an example with no duplicate
    representative: np.ndarray  # (n_train,) bool
    contaminated: np.ndarray  # (n_train,) bool
    kept: tuple[int, ...]  # training examples -o writes: one per cluster + singletons, not contaminated
    findings: tuple[Finding, ...]
    summary: dict[str, Any]
    params: LshParams
    # the columns of dedup/clusters.parquet, or a function that makes them (on first use: a run
    # that writes no run directory never needs them)
    cluster_table: dict[str, list[Any]] | Callable[[], dict[str, list[Any]]] = field(default_factory=dict)

    @property
    def clusters(self) -> dict[str, list[Any]]:
        """dedup/clusters.parquet's columns: every member of a cluster, its cluster id and size,
        representative, and its estimated and verified Jaccard to the representative."""
        table = self.cluster_table
        if callable(table):
            table = table()
            object.__setattr__(self, "cluster_table", table)
        return table


def dedup(
    train: Iterable[Conversation],
    against: Iterable[Conversation] = (),
    config: DedupConfig = DedupConfig(),
    progress: Callable[[str], None] | None = None,
) -> DedupResult:
    """Find exact and near duplicates within `train` and contamination of `train` by `against`.
    Both may be iterators (the CLI passes its readers): each example's text is normalised and
    signed on worker threads while the next ones are read. `progress(stage)` is called as each of
    STAGES begins (the CLI draws a bar with it).

    Longer than most functions here on purpose: it is the pipeline, read top to bottom, one block
    per stage (each timed by `_Clock`), handing numpy arrays on; the helpers below hold the details."""
    clock = _Clock(progress)
    clock.start("read")
    spec = parse_shingle(config.shingle)
    params = lsh_params(config.threshold, config.num_perm)
    examples: list[Conversation] = []
    raw: list[str] = []  # kept for the findings' snippets
    with minhash.SignStream(spec, num_perm=config.num_perm, seed=config.seed, threads=config.threads) as stream:
        n_train = 0
        for k, part in enumerate((train, against)):
            for c in part:
                examples.append(c)
                raw.append(text_of(c, config.fields))
                stream.add(raw[-1])
            n_train = len(examples) if k == 0 else n_train
        clock.start("signatures")
        signed = stream.parts()
    uid, first = _exact_groups_parts(signed)  # exact duplicates share a text id
    length = signed.chars  # normalised length, for --keep longest
    kernel_seconds = signed.seconds
    sigs = signed.signatures(first)  # one signature per distinct non-empty text
    del signed
    n_texts = len(first)
    first_train = _first_member(uid[:n_train], n_texts, 0)
    first_against = _first_member(uid[n_train:], n_texts, n_train)
    log.info(
        "dedup: %d examples, %d distinct non-empty texts; %d bands x %d rows (P(candidate | J=%.2f) = %.3f)",
        len(examples),
        n_texts,
        params.bands,
        params.rows,
        config.threshold,
        params.recall_at_threshold,
    )

    clock.start("candidates")
    remote = 0
    if config.lsh_storage:
        owner = np.where(first_train >= 0, first_train, first_against)
        keys = [_lsh_key(examples[int(i)]) for i in owner]
        cand, remote = redis_candidate_pairs(
            sigs.hashvalues,
            keys,
            params,
            config.lsh_storage,
            seed=config.seed,
            basename=_basename(config, spec, params),
        )
    else:
        cand = candidate_pairs(sigs.hashvalues, params, threads=config.threads)
    u, v = cand[:, 0], cand[:, 1]
    tu, tv, au, av = first_train[u] >= 0, first_train[v] >= 0, first_against[u] >= 0, first_against[v] >= 0
    cand = cand[(tu & tv) | (tu & av) | (tv & au)]  # pairs of two --against texts do not matter
    clock.start("verify")
    sets = shingle_sets(sigs, cand, threads=config.threads)
    ver = verified_jaccard(sets, cand, threads=config.threads)
    ok = ver >= config.threshold - 1e-12
    near, near_ver, near_est = cand[ok], ver[ok], estimated_jaccard(sigs.hashvalues, cand[ok])
    log.info("dedup: %d LSH candidate pairs, %d verified at Jaccard >= %.2f", len(cand), len(near), config.threshold)

    clock.start("clusters")
    pairs = _example_pairs(uid, n_train, first_train, first_against, near, near_est, near_ver)
    c = _cluster(pairs, n_train, length, config.keep)
    # every member's similarity to its representative (a member can join through a chain of pairs)
    to_rep = np.stack([uid[c.member_order], uid[c.rep_of[c.member_order]]], axis=1)
    rep_est = estimated_jaccard(sigs.hashvalues, to_rep)
    rep_ver = np.where(to_rep[:, 0] == to_rep[:, 1], 1.0, verified_jaccard(sets, to_rep, threads=config.threads))
    del sets

    clock.start("findings")
    mo = c.member_order
    dropped = mo[~c.representative[mo] & ~c.contaminated[c.rep_of[mo]]]
    size_of = np.ones(n_train, dtype=np.int64)
    size_of[c.members] = c.size[c.cluster[c.members]]
    similarity = dict(zip(mo.tolist(), zip(rep_est.tolist(), rep_ver.tolist())))
    findings = _findings(examples, raw, pairs, dropped, c.rep_of, uid, size_of, similarity)
    clusters = functools.partial(_clusters_table, examples, c, rep_est, rep_ver)
    clock.start(None)
    summary = {
        **_counts(examples, n_train, uid, n_texts, pairs, c, dropped),
        "lsh_candidates": len(cand),
        "lsh_unverified_remote_candidates": remote,
        "char_shingled_texts": int(sigs.char_shingled.sum()),
        **_settings(config, spec, params),
        "seconds": clock.laps,
        "kernel_seconds": {k: round(v, 3) for k, v in kernel_seconds.items()},
        "kernels": compiled_by(),
    }
    log.info("dedup: seconds per stage %s", clock.laps)
    return DedupResult(
        tuple(examples),
        n_train,
        pairs,
        c.cluster,
        c.representative,
        c.contaminated,
        c.kept,
        tuple(findings),
        summary,
        params,
        clusters,
    )


@dataclass
class _Clusters:
    cluster: np.ndarray  # per training example: its cluster id, -1 when in none
    members: np.ndarray  # training examples in a cluster, ascending
    member_order: np.ndarray  # the same, by cluster then index
    representative: np.ndarray  # bool per training example: it is its cluster's kept example
    rep_of: np.ndarray  # per training example: its representative (itself when in no cluster)
    contaminated: np.ndarray  # bool per training example: near-copies an --against example
    size: np.ndarray  # per cluster id: its number of members
    kept: tuple[int, ...]  # what -o writes


def _cluster(pairs: Any, n_train: int, length: np.ndarray, keep: str) -> _Clusters:
    """Clusters = connected components of the exact and near pairs among training examples; each
    keeps one representative (`keep`: first, or longest normalised text), never a contaminated one
    unless all its members are; contaminated examples are never kept."""
    contaminated = np.zeros(n_train, dtype=bool)
    is_cont = pairs.kind == 2
    contaminated[pairs.left[is_cont]] = True
    dup = ~is_cont
    labels = _components(n_train, pairs.left[dup], pairs.right[dup])
    in_cluster = np.bincount(labels, minlength=n_train)[labels] > 1 if n_train else np.zeros(0, dtype=bool)
    cluster = np.full(n_train, -1, dtype=np.int64)
    _, inverse = np.unique(labels[in_cluster], return_inverse=True)
    cluster[in_cluster] = inverse
    members = np.flatnonzero(in_cluster)
    policy = -length[members] if keep == "longest" else np.zeros(len(members), dtype=np.int64)
    order = members[np.lexsort((members, policy, contaminated[members], cluster[members]))]
    is_first = np.ones(len(order), dtype=bool)
    is_first[1:] = cluster[order[1:]] != cluster[order[:-1]]
    reps = order[is_first]  # one per cluster, in cluster id order; contaminated only if all members are
    representative = np.zeros(n_train, dtype=bool)
    representative[reps] = True
    rep_of = np.arange(n_train)
    rep_of[members] = reps[cluster[members]]
    kept = tuple(int(i) for i in np.flatnonzero((~in_cluster | representative) & ~contaminated))
    size = np.bincount(cluster[members], minlength=len(reps))
    member_order = members[np.lexsort((members, cluster[members]))]
    return _Clusters(cluster, members, member_order, representative, rep_of, contaminated, size, kept)


def _clusters_table(examples: Sequence[Conversation], c: _Clusters, rep_est: Any, rep_ver: Any) -> dict[str, list]:
    """dedup/clusters.parquet's columns: every member of a cluster, with its similarity to the
    representative (`rep_est`, `rep_ver`: estimated and verified Jaccard, in member_order)."""
    mo = c.member_order
    members = [examples[i] for i in mo.tolist()]
    return {
        "cluster_id": c.cluster[mo].tolist(),
        "cluster_size": c.size[c.cluster[mo]].tolist(),
        "example_id": [e.id for e in members],
        "source_file": [e.source.file for e in members],
        "source_line": [_line(e) for e in members],
        "representative": c.representative[mo].tolist(),
        "representative_id": [examples[i].id for i in c.rep_of[mo].tolist()],
        "estimated_jaccard": rep_est.tolist(),
        "verified_jaccard": rep_ver.tolist(),
        "contaminated": c.contaminated[mo].tolist(),
    }


def _counts(
    examples: Sequence[Conversation],
    n_train: int,
    uid: np.ndarray,
    n_texts: int,
    pairs: Any,
    c: _Clusters,
    dropped: Any,
) -> dict[str, Any]:
    """The example and cluster counts of the summary."""
    exact = uid[dropped] == uid[c.rep_of[dropped]]
    return {
        "examples": n_train,
        "against_examples": len(examples) - n_train,
        "empty_texts": int((uid[:n_train] < 0).sum()),
        "distinct_texts": n_texts,
        "exact_duplicates": pairs.count("exact"),
        "near_pairs": pairs.count("near"),
        "contamination_pairs": pairs.count("contamination"),
        "clusters": len(c.size),
        "examples_in_clusters": len(c.members),
        "largest_cluster": int(c.size.max()) if len(c.size) else 0,
        "contaminated": int(c.contaminated.sum()),
        "kept": len(c.kept),
        "removed": n_train - len(c.kept),
        # each dropped example counted once: contamination first, then exact or near (vs the kept representative)
        "dropped_by": {
            "dedup.exact": int((exact & ~c.contaminated[dropped]).sum()),
            "dedup.near": int((~exact & ~c.contaminated[dropped]).sum()),
            "dedup.contamination": int(c.contaminated.sum()),
        },
    }


def _settings(config: DedupConfig, spec: ShingleSpec, params: LshParams) -> dict[str, Any]:
    """The settings part of the summary."""
    return {
        "threshold": config.threshold,
        "bands": params.bands,
        "rows": params.rows,
        "recall_at_threshold": round(params.recall_at_threshold, 4),
        "fields": config.fields,
        "shingle": str(spec),
        "num_perm": config.num_perm,
        "seed": config.seed,
        "keep": config.keep,
    }


def _exact_groups(packed: minhash.Packed, hashes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Text id of every text (-1 for an empty one; equal normalised texts share one, numbered in
    order of first appearance) and the index of each id's first text. With each text's 64-bit
    hash (`Normalized.hashes`) it groups by hash and confirms every group byte for byte (10 ms on
    T0 instead of 180); a collision, never seen, sends it to the dict of texts below."""
    if hashes is not None:
        off = packed.off
        got = _exact_groups_hashed(np.diff(off), hashes, lambda i: packed.buf[off[i] : off[i + 1]])
        if got is not None:
            return got
    data = packed.buf.tobytes()
    off = packed.off.tolist()
    ids: dict[bytes, int] = {}
    uid = np.empty(len(packed), dtype=np.int64)
    for i in range(len(packed)):
        s, e = off[i], off[i + 1]
        uid[i] = ids.setdefault(data[s:e], len(ids)) if e > s else -1
    first = np.full(len(ids), -1, dtype=np.int64)
    has = np.flatnonzero(uid >= 0)[::-1]
    first[uid[has]] = has  # in reverse order: the first occurrence wins
    return uid, first


def _exact_groups_parts(signed: minhash.SignedParts) -> tuple[np.ndarray, np.ndarray]:
    """`_exact_groups` of a SignStream's batches, without joining their texts unless two
    different texts share a hash (never seen: then the dict path on the joined texts)."""
    if signed.hashes is not None:
        got = _exact_groups_hashed(signed.lengths, signed.hashes, signed.text)
        if got is not None:
            return got
    return _exact_groups(signed.normalized().packed)


def _exact_groups_hashed(
    lengths: np.ndarray, hashes: np.ndarray, text: Callable[[int], np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """`_exact_groups` by hash, of texts with byte `lengths` whose bytes `text(i)` gives: None
    when two different texts share one."""
    n = len(lengths)
    uid = np.full(n, -1, dtype=np.int64)
    nonempty = np.flatnonzero(lengths > 0)
    if len(nonempty) == 0:
        return uid, np.empty(0, dtype=np.int64)
    _, first_pos, inverse = np.unique(hashes[nonempty], return_index=True, return_inverse=True)
    order = np.argsort(first_pos, kind="stable")  # ids by first appearance
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    uid[nonempty] = rank[np.ravel(inverse)]
    first = nonempty[first_pos[order]]
    later = nonempty[first[uid[nonempty]] != nonempty]  # texts that repeat an earlier one
    for i, f in zip(later.tolist(), first[uid[later]].tolist()):
        if lengths[i] != lengths[f] or not np.array_equal(text(i), text(f)):
            return None
    return uid, first


@dataclass(frozen=True)
class _Clock:
    """Wall-clock seconds per stage (summary["seconds"]); tells `progress` when a stage begins."""

    progress: Callable[[str], None] | None = None
    laps: dict[str, float] = field(default_factory=dict)
    current: list[Any] = field(default_factory=lambda: [None, 0.0])

    def start(self, stage: str | None) -> None:
        now = time.perf_counter()
        if self.current[0] is not None:
            self.laps[self.current[0]] = round(now - self.current[1], 3)
        self.current[:] = [stage, now]
        if stage is not None and self.progress is not None:
            self.progress(stage)


def _first_member(uid: np.ndarray, n_texts: int, base: int) -> np.ndarray:
    """Per text id, the index (+ base) of its first example in `uid`, or -1."""
    first = np.full(n_texts, -1, dtype=np.int64)
    idx = np.flatnonzero(uid >= 0)[::-1]
    first[uid[idx]] = idx + base  # assignment in reverse order: the first occurrence wins
    return first


def _example_pairs(
    uid: np.ndarray,
    n_train: int,
    first_train: np.ndarray,
    first_against: np.ndarray,
    near: np.ndarray,
    near_est: np.ndarray,
    near_ver: np.ndarray,
) -> Pairs:
    """Example-level pairs from text-level ones: exact (a training example and the first earlier
    example with its text), near (between the first training examples of two texts) and
    contamination (every training example with a text that equals or near-duplicates an --against
    text; the other side is that text's first --against example)."""
    train = np.arange(n_train)
    ut = uid[:n_train]
    has = ut >= 0
    dup = has & (first_train[np.where(has, ut, 0)] != train)
    parts = [(first_train[ut[dup]], train[dup], 0, np.ones(int(dup.sum())), np.ones(int(dup.sum())))]
    u, v = near[:, 0], near[:, 1]
    both = (first_train[u] >= 0) & (first_train[v] >= 0)
    a, b = first_train[u[both]], first_train[v[both]]
    parts.append((np.minimum(a, b), np.maximum(a, b), 1, near_est[both], near_ver[both]))
    # contamination per text: (training text, against example, estimate, verified)
    exact_c = np.flatnonzero((first_train >= 0) & (first_against >= 0))
    fwd = (first_train[u] >= 0) & (first_against[v] >= 0)
    bwd = (first_train[v] >= 0) & (first_against[u] >= 0)
    c_text = np.concatenate([exact_c, u[fwd], v[bwd]])
    c_other = np.concatenate([first_against[exact_c], first_against[v[fwd]], first_against[u[bwd]]])
    c_est = np.concatenate([np.ones(len(exact_c)), near_est[fwd], near_est[bwd]])
    c_ver = np.concatenate([np.ones(len(exact_c)), near_ver[fwd], near_ver[bwd]])
    by_text = np.argsort(c_text, kind="stable")
    per_text = np.bincount(c_text, minlength=len(first_train))
    start = np.cumsum(per_text) - per_text
    k = np.where(has, per_text[np.where(has, ut, 0)], 0)  # contamination pairs of each training example
    sel = by_text[_ranges(start[np.where(has, ut, 0)], k)]
    parts.append((np.repeat(train, k), c_other[sel], 2, c_est[sel], c_ver[sel]))
    return Pairs(
        left=np.concatenate([p[0] for p in parts]).astype(np.int64),
        right=np.concatenate([p[1] for p in parts]).astype(np.int64),
        kind=np.concatenate([np.full(len(p[0]), p[2], dtype=np.int8) for p in parts]),
        estimated_jaccard=np.concatenate([p[3] for p in parts]).astype(np.float64),
        verified_jaccard=np.concatenate([p[4] for p in parts]).astype(np.float64),
    )


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes and edges (a, b): each node's label is the smallest node of
    its component (label propagation with pointer jumping)."""
    labels = np.arange(n)
    while len(a):
        low = np.minimum(labels[a], labels[b])
        np.minimum.at(labels, labels[a], low)
        np.minimum.at(labels, labels[b], low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels[a], labels[b]):
            break
    return labels


def _findings(
    examples: tuple[Conversation, ...],
    texts: list[str],
    pairs: Pairs,
    dropped: np.ndarray,
    rep_of: np.ndarray,
    uid: np.ndarray,
    cluster_size: np.ndarray,
    to_rep: dict[int, tuple[float, float]],
) -> list[Finding]:
    """One dedup.exact / dedup.near finding per example -o drops from a cluster with a kept
    representative (exact when its normalised text equals the representative's), naming the
    representative, the cluster size and the Jaccard to it; one dedup.contamination per
    contaminated training example, naming its most similar --against example."""
    findings: list[Finding] = []
    cont = np.flatnonzero(pairs.kind == 2)
    order = cont[np.lexsort((pairs.right[cont], -pairs.verified_jaccard[cont], pairs.left[cont]))]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pairs.left[order[1:]] != pairs.left[order[:-1]]
    for e in order[first]:
        findings.append(
            _contamination_finding(
                examples,
                texts,
                int(pairs.left[e]),
                int(pairs.right[e]),
                float(pairs.estimated_jaccard[e]),
                float(pairs.verified_jaccard[e]),
            )
        )
    xs = np.sort(dropped)
    reps = rep_of[xs]
    kept: dict[int, _Kept] = {}  # what the findings say about each representative, worked out once
    numbers = _Numbers()
    for x, rep, same, size in zip(
        xs.tolist(), reps.tolist(), (uid[xs] == uid[reps]).tolist(), cluster_size[xs].tolist(), strict=True
    ):
        est, ver = to_rep[x]
        k = kept.get(rep)
        if k is None:
            k = kept[rep] = _kept(examples[rep], texts[rep])
        findings.append(
            _duplicate_finding(examples[x], texts[x], k, "exact" if same else "near", est, ver, size, numbers)
        )
    return findings


def _line(conversation: Conversation) -> int | None:
    src = conversation.source
    return src.line if src.line is not None else src.row


def _lsh_key(conversation: Conversation) -> str:
    """Key of an example in a shared index: absolute file and line (or row), unique across workers."""
    where = _line(conversation)
    return f"{os.path.abspath(conversation.source.file)}:{where if where is not None else conversation.id}"


def _basename(config: DedupConfig, spec: ShingleSpec, params: LshParams) -> bytes:
    """Index name in Redis: the settings that make signatures comparable, so runs with different
    settings never share buckets."""
    tag = f"{config.fields}|{spec}|{config.num_perm}|{config.seed}|{params.bands}x{params.rows}"
    return b"sftdata-dedup-" + hashlib.sha1(tag.encode()).hexdigest()[:12].encode()


def snippet(text: str, width: int = 60) -> str:
    """The first `width` characters of text with its whitespace collapsed ("…" when cut)."""
    head = text[: width + 8]
    # usual prose: nothing to collapse at the start (isprintable() is False for every whitespace
    # character but " "), so the collapsed text starts with head less a trailing space
    if width > 0 and head[:1] != " " and "  " not in head and head.isprintable() and len(head.rstrip(" ")) > width:
        return head[: width - 1] + "…"
    flat = " ".join(text[: width * 2].split())  # enough unless the start is mostly whitespace
    if len(flat) <= width:
        flat = " ".join(text[: width * 4].split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _side(conversation: Conversation) -> dict[str, Any]:
    return {"example_id": conversation.id, "source": conversation.source.to_dict()}


EMITS = ("dedup.exact", "dedup.near", "dedup.contamination")


class _Kept(NamedTuple):
    """A representative as its cluster's findings name it."""

    conversation: Conversation
    where: str  # "{source} ({id})"
    snippet: str  # repr of its text's snippet
    hint: str
    side: dict[str, Any]  # data["other"] of the findings naming it (one dict, shared by them)


def _kept(kept: Conversation, text: str) -> _Kept:
    return _Kept(
        kept,
        f"{kept.source} ({kept.id})",
        repr(snippet(text)),
        f"drop it: `sftdata dedup ... -o KEPT` keeps {kept.source} for this cluster",
        _side(kept),
    )


class _Numbers:
    """round(v, 4) and f"{v:.3f}" of the Jaccards the findings print, each worked out once per
    value: MinHash estimates take only num_perm + 1 values, and T0's 23.6k findings hold a few
    thousand distinct verified ones (a tenth of the findings stage)."""

    def __init__(self) -> None:
        self._r4: dict[float, float] = {}
        self._f3: dict[float, str] = {}

    def round4(self, v: float) -> float:
        r = self._r4.get(v)
        if r is None:
            r = self._r4[v] = round(v, 4)
        return r

    def f3(self, v: float) -> str:
        r = self._f3.get(v)
        if r is None:
            r = self._f3[v] = f"{v:.3f}"
        return r


_EXACT, _NEAR = finding_of("dedup.exact"), finding_of("dedup.near")
_CHECK_THE_PAIR = " (check the pair in dedup/clusters.parquet if the texts should both stay)"


def _duplicate_finding(
    ex: Conversation,
    text: str,
    kept: _Kept,
    kind: str,
    estimate: float,
    verified: float,
    size: int,
    numbers: _Numbers,
) -> Finding:
    mine = snippet(text)
    if kind == "exact":
        message = (
            f"{ex.source} is an exact duplicate (after normalisation) of {kept.where}, which "
            f"-o keeps; cluster of {size} examples: {mine!r}"
        )
    else:
        message = (
            f"{ex.source} near-duplicates {kept.where}, which -o keeps: verified Jaccard "
            f"{numbers.f3(verified)} (MinHash estimate {numbers.f3(estimate)}); cluster of {size} examples: "
            f"{mine!r} vs {kept.snippet}"
        )
    return (_EXACT if kind == "exact" else _NEAR)(
        message,
        ex,
        kept.hint if verified >= 1.0 or kind == "exact" else kept.hint + _CHECK_THE_PAIR,
        {
            "other": kept.side,
            "cluster_size": size,
            "verified_jaccard": numbers.round4(verified),
            "estimated_jaccard": numbers.round4(estimate),
        },
    )


def _contamination_finding(
    examples: tuple[Conversation, ...], texts: list[str], x: int, y: int, estimate: float, verified: float
) -> Finding:
    ex, other = examples[x], examples[y]
    how = "an exact copy of" if verified >= 1.0 else f"a near-duplicate (Jaccard {verified:.3f}) of"
    return finding(
        "dedup.contamination",
        (
            f"training example {ex.source} is {how} evaluation example {other.source} ({other.id}): "
            f"{snippet(texts[x])!r}"
        ),
        ex,
        hint="remove it from the training data (`-o KEPT` drops it) or from the evaluation set; "
        "otherwise the evaluation measures memorisation",
        data={"other": _side(other), "verified_jaccard": round(verified, 4), "estimated_jaccard": round(estimate, 4)},
    )


_PY = {name: globals()[name] for name in _AOT_EXPORTS}  # the kernels as Python (for `_jit_numba`)
