"""Exact and MinHash near-duplicates, and eval-set contamination (checks `dedup.*`).

The pipeline, top to bottom:

1. `text_of` picks the text of a Conversation (`fields`: prompt = non-assistant messages, answer =
   assistant messages, or all) and `normalize` folds it (NFKC, casefold, punctuation to spaces,
   whitespace collapsed). Identical normalised texts are exact duplicates; one copy of each text
   goes on to step 2. Empty texts are skipped (counted, never paired).
2. `minhash_signatures` shingles every text and computes MinHash signatures bit-identical to
   datasketch 2.x `MinHash` (scheme "affine32": SHA-1 of each UTF-8 shingle, first 4 digest bytes
   read little-endian, MurmurHash3 fmix32, then `a * h + b mod 2**32` per permutation, with `a`/`b`
   drawn from `np.random.RandomState(seed)` exactly as datasketch draws them), so the signatures
   can go into datasketch's own LSH and storage. It runs compiled kernels (numba, imported on first
   use and cached on disk): per batch of texts, one call without the GIL finds the shingles' byte
   ranges in the concatenated UTF-8 buffer, hashes them with a SIMD SHA-1 (32 messages at a time)
   and takes the per-permutation minimum; batches run on several threads.
3. `lsh_params` turns the user's Jaccard threshold into bands x rows such that a pair at exactly
   the threshold becomes a candidate with probability >= 0.95, with the smallest false-positive
   area. Candidates come from in-memory banding, or from datasketch's `MinHashLSH` with Redis
   storage (`redis://HOST:PORT/DB`) so several workers share one index.
4. Every candidate pair is verified against the exact Jaccard similarity of its shingle sets
   (a shingle is identified by the first 8 bytes of its SHA-1, computed anyway); pairs below the
   threshold are dropped, so no false pair is reported.
5. Connected components of exact and verified pairs are the clusters; each keeps one
   representative (`first` or `longest`). Pairs with an `against` example are contamination.

Shingles: `words:N` are N consecutive words of the normalised text joined by single spaces;
`chars:N` are N consecutive characters. A text with fewer units than N is one shingle (the whole
text), so short texts still compare. Texts that are CJK-heavy (more than 30% of their non-space
characters Han, Hiragana or Katakana) use `chars:3` instead of `words:N`: Chinese and Japanese put
no spaces between words. (Korean does, so Hangul is not counted.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from sftdata.records import Conversation, Finding

log = logging.getLogger(__name__)

__all__ = [
    "DedupConfig", "DedupResult", "LshParams", "Pair", "Pairs", "ShingleSpec", "Signatures",
    "candidate_pairs", "candidate_probability", "dedup", "lsh_params", "minhash_signatures",
    "normalize", "parse_shingle", "permutations", "shingle_sets", "shingles", "text_of", "verified_jaccard",
]

FIELDS = ("prompt", "answer", "all")
KEEP = ("first", "longest")
MIN_RECALL = 0.95  # probability that a pair at exactly the threshold becomes an LSH candidate
CJK_SHARE = 0.30  # a text is CJK-heavy above this share of CJK characters
CJK_CHARS = 3  # character n-gram size used for CJK-heavy texts
THREADS = min(os.cpu_count() or 1, 8)  # signing and verification run on this many threads by default


# ---------------------------------------------------------------------------------------------
# 1. Text of an example
# ---------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]+")
_ASCII_PUNCT = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def text_of(conversation: Conversation, fields: str = "all") -> str:
    """The raw text dedup compares: prompt = every non-assistant message, answer = assistant ones."""
    if fields == "prompt":
        parts = [m.content for m in conversation.messages if m.role != "assistant"]
    elif fields == "answer":
        parts = [m.content for m in conversation.messages if m.role == "assistant"]
    else:
        parts = [m.content for m in conversation.messages]
    return "\n".join(p for p in parts if p)


def normalize(text: str) -> str:
    """NFKC, casefold, punctuation replaced by spaces, whitespace collapsed to single spaces."""
    if text.isascii():  # fast path, same result: NFKC and casefold are lower() on ASCII
        return " ".join(text.lower().translate(_ASCII_PUNCT).split())
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def is_cjk_heavy(normalized: str) -> bool:
    if normalized.isascii():
        return False
    chars = len(normalized) - normalized.count(" ")
    return chars > 0 and len(_CJK.findall(normalized)) > CJK_SHARE * chars


# ---------------------------------------------------------------------------------------------
# 2. Shingles and MinHash signatures
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShingleSpec:
    kind: str  # "words" or "chars"
    size: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.size}"


def parse_shingle(spec: str) -> ShingleSpec:
    """`words:5` or `chars:3`; raises ValueError naming the expected form."""
    kind, _, size = spec.partition(":")
    if kind not in ("words", "chars") or not size.isdigit() or int(size) < 1:
        raise ValueError(f"shingle spec {spec!r} is not words:N or chars:N with N >= 1 (e.g. words:5, chars:3)")
    return ShingleSpec(kind, int(size))


def spec_for(normalized: str, spec: ShingleSpec) -> ShingleSpec:
    """The spec a text actually uses: CJK-heavy texts switch from words to chars:3."""
    if spec.kind == "words" and is_cjk_heavy(normalized):
        return ShingleSpec("chars", CJK_CHARS)
    return spec


def shingles(normalized: str, spec: ShingleSpec) -> list[bytes]:
    """Reference (pure Python) shingles of a normalised text, as UTF-8 bytes. The kernel in
    `minhash_signatures` hashes exactly these byte strings; tests and the benchmark feed them to
    datasketch."""
    if not normalized:
        return []
    spec = spec_for(normalized, spec)
    units = normalized.split(" ") if spec.kind == "words" else list(normalized)
    joiner = " " if spec.kind == "words" else ""
    if len(units) < spec.size:
        return [normalized.encode("utf-8")]
    return [joiner.join(units[i:i + spec.size]).encode("utf-8") for i in range(len(units) - spec.size + 1)]


def permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """datasketch 2.x affine32 permutation parameters (`MinHash._init_permutations`)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


@dataclass(frozen=True)
class Signatures:
    """MinHash signatures of n texts plus their shingle fingerprints for exact verification.

    `hashvalues[i]` equals datasketch `MinHash(num_perm, seed).update(s)` over `shingles(text_i)`.
    A fingerprint is the first 8 SHA-1 digest bytes (big-endian) of a shingle; text i's shingles
    have theirs, in order and repeats included, in `fingerprints[offsets[i]:offsets[i + 1]]`.
    `shingle_set` and `shingle_sets` make sets of them."""

    hashvalues: np.ndarray  # (n, num_perm) uint32
    fingerprints: np.ndarray  # (m,) uint64, every shingle of every text
    offsets: np.ndarray  # (n + 1,) int64
    char_shingled: np.ndarray  # (n,) bool: text used character shingles
    num_perm: int
    seed: int

    def shingle_set(self, i: int) -> np.ndarray:
        """Sorted unique fingerprints of text i's shingles."""
        return np.unique(self.fingerprints[self.offsets[i]:self.offsets[i + 1]])


def minhash_signatures(normalized: Sequence[str], spec: ShingleSpec = ShingleSpec("words", 5), *,
                       num_perm: int = 128, seed: int = 1, threads: int = THREADS,
                       batch_bytes: int = 1 << 20) -> Signatures:
    """Signatures of normalised texts (see `normalize`), computed by compiled kernels (numba) in
    batches of about `batch_bytes` characters on `threads` threads (the kernels release the GIL).
    Empty texts get the empty signature (all 0xFFFFFFFF, as datasketch) and an empty set.

    The first call in a process loads the kernels from numba's on-disk cache; the first call after
    installing or editing this file compiles them (seconds, once)."""
    _jit()
    a, b = permutations(num_perm, seed)

    def sign(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # the Python part (specs, one encode per batch) holds the GIL while the other threads'
        # kernels run
        texts = normalized[lo:hi]
        specs = [spec_for(t, spec) for t in texts]
        is_chars = np.array([s.kind == "chars" for s in specs], dtype=bool)
        size = np.array([s.size for s in specs], dtype=np.int64)
        buf, off = _pack(texts)
        return (*_sign_batch(buf, off, is_chars, size, a, b), is_chars)

    parts = _map(threads, sign, _batches(normalized, batch_bytes))
    counts = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Signatures(
        hashvalues=np.concatenate([p[0] for p in parts]) if parts else np.empty((0, num_perm), np.uint32),
        fingerprints=np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.uint64),
        offsets=offsets, char_shingled=np.concatenate([p[3] for p in parts]) if parts else np.empty(0, bool),
        num_perm=num_perm, seed=seed)


def _batches(items: Sequence[str], batch_size: int) -> list[tuple[int, int]]:
    """(lo, hi) ranges of items, each about batch_size characters long in all."""
    out, start, size = [], 0, 0
    for i, e in enumerate(items):
        size += len(e)
        if size >= batch_size:
            out.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(items):
        out.append((start, len(items)))
    return out


def _map(threads: int, fn: Any, calls: list[tuple[int, ...]]) -> list[Any]:
    """[fn(*args) for args in calls], on `threads` threads."""
    if threads > 1 and len(calls) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(lambda args: fn(*args), calls))
    return [fn(*args) for args in calls]


_PAD = 128  # zero bytes after a batch: SHA-1 loads whole words of a message's last 64-byte block


def _pack(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts UTF-8 encoded and concatenated into one buffer (plus _PAD zero bytes), and their
    (n + 1,) byte offsets. One join and one encode per batch: a text's byte length is its length
    unless the batch has non-ASCII text."""
    joined = "".join(texts)
    data = joined.encode("utf-8")
    if len(data) == len(joined):
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:
        lengths = np.fromiter((len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts), dtype=np.int64,
                              count=len(texts))
    return _buffer(data), _offsets(lengths)


def _buffer(data: bytes) -> np.ndarray:
    buf = np.zeros(len(data) + _PAD, dtype=np.uint8)
    buf[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return buf


def _offsets(lengths: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


def _sha1_prefixes(messages: Sequence[bytes]) -> np.ndarray:
    """The first 8 SHA-1 digest bytes (big-endian uint64) of each message, computed by the kernel
    that signs shingles (equal to `hashlib.sha1(m).digest()[:8]`; the tests check it)."""
    _jit()
    off = _offsets(np.array([len(m) for m in messages], dtype=np.int64))
    return _sha1_batch(_buffer(b"".join(messages)), off[:-1].copy(), np.diff(off))


# ---------------------------------------------------------------------------------------------
# 2b. The compiled kernels (numba)
#
# Plain Python functions until `_jit` compiles them (or loads them from numba's cache) and puts the
# compiled versions in their place in this module, so `import sftdata.dedup` does not import numba.
# A batch is one uint8 buffer of UTF-8 texts with int64 offsets; `_sign_batch` does the whole batch
# in one call that releases the GIL:
#   1. shingles: byte ranges of the buffer. A word unit starts at a text start or after a space
#      (b" ", as `str.split(" ")`), a character unit at every byte that is not a UTF-8 continuation
#      byte; shingle j of a text spans units j .. j+N-1 (the whole text if it has fewer than N).
#   2. SHA-1 of every shingle, _LANES messages at a time with the same number of 64-byte blocks:
#      every step of the 80 rounds is a loop over the lanes, which LLVM turns into SIMD.
#   3. MinHash: per text, min over its shingles of (a * fmix32(h) + b) mod 2**32, where h is the
#      first 4 digest bytes read little-endian (datasketch `sha1_hash32`).
# ---------------------------------------------------------------------------------------------

_LANES = 32  # messages hashed together (SIMD lanes; two AVX-512 or four AVX2 vectors)
# scratch v: state word s of lane l at v[s*_LANES + l], message schedule word t at v[_SCHED + t*_LANES + l]
_SCHED = 5 * _LANES
_HEAD = np.array([0, 0xFF000000, 0xFFFF0000, 0xFFFFFF00], dtype=np.uint64)  # the first 0..3 bytes of a word
_MARK = np.array([0x80000000, 0x00800000, 0x00008000, 0x00000080], dtype=np.uint64)  # 0x80 at byte 0..3


def _rotl(x: Any, n: int) -> Any:
    """32-bit rotation of a uint64 holding a 32-bit value (bits above 32 are dropped on store)."""
    return (x << np.uint64(n)) | (x >> np.uint64(32 - n))


def _load_be(buf: np.ndarray, p: int) -> Any:
    """Big-endian uint32 at buf[p:p+4]; an unsigned index spares numba's negative-index check, so
    LLVM merges the four loads into one."""
    q = np.uint64(p)
    return ((np.uint64(buf[q]) << np.uint64(24)) | (np.uint64(buf[q + np.uint64(1)]) << np.uint64(16))
            | (np.uint64(buf[q + np.uint64(2)]) << np.uint64(8)) | np.uint64(buf[q + np.uint64(3)]))


def _round(v: np.ndarray, f: int, ia: int, ib: int, ic: int, id_: int, ie: int, t: int) -> None:
    """SHA-1 round t on every lane. State words rotate through the five slots instead of moving:
    the new a goes to e's slot and rotl(b, 30) (the new c) stays in b's."""
    a, b, c, d, e, w = ia * _LANES, ib * _LANES, ic * _LANES, id_ * _LANES, ie * _LANES, _SCHED + t * _LANES
    for lane in range(_LANES):
        x, y, z = np.uint64(v[b + lane]), np.uint64(v[c + lane]), np.uint64(v[d + lane])
        if f == 0:
            k = (z ^ (x & (y ^ z))) + np.uint64(0x5A827999)
        elif f == 1:
            k = (x ^ y ^ z) + np.uint64(0x6ED9EBA1)
        elif f == 2:
            k = ((x & y) | (z & (x | y))) + np.uint64(0x8F1BBCDC)
        else:
            k = (x ^ y ^ z) + np.uint64(0xCA62C1D6)
        v[e + lane] = np.uint64(v[e + lane]) + _rotl(np.uint64(v[a + lane]), 5) + k + np.uint64(v[w + lane])
        v[b + lane] = _rotl(x, 30)


def _sha1_lanes(buf: np.ndarray, start: np.ndarray, length: np.ndarray, nblocks: int, v: np.ndarray,
                h: np.ndarray) -> None:
    """SHA-1 of the _LANES messages buf[start[l]:start[l] + length[l]], each of `nblocks` blocks
    once padded; leaves digest word s of lane l in h[s*_LANES + l]."""
    for lane in range(_LANES):
        h[lane] = 0x67452301
        h[_LANES + lane] = 0xEFCDAB89
        h[2 * _LANES + lane] = 0x98BADCFE
        h[3 * _LANES + lane] = 0x10325476
        h[4 * _LANES + lane] = 0xC3D2E1F0
    for blk in range(nblocks):
        base = blk * 64
        for lane in range(_LANES):  # the block's 16 words: message bytes, 0x80, zeros, bit length
            p = start[lane] + base
            r = length[lane] - base
            for j in range(16):
                if r >= 4:
                    v[_SCHED + j * _LANES + lane] = _load_be(buf, p)
                elif r >= 0:
                    v[_SCHED + j * _LANES + lane] = (_load_be(buf, p) & _HEAD[r]) | _MARK[r]
                else:
                    v[_SCHED + j * _LANES + lane] = 0
                p += 4
                r -= 4
            if blk == nblocks - 1:
                bits = np.uint64(length[lane]) * np.uint64(8)
                v[_SCHED + 14 * _LANES + lane] = bits >> np.uint64(32)
                v[_SCHED + 15 * _LANES + lane] = bits
        for t in range(16, 80):
            w = _SCHED + t * _LANES
            for lane in range(_LANES):
                v[w + lane] = _rotl(np.uint64(v[w - 3 * _LANES + lane] ^ v[w - 8 * _LANES + lane]
                                              ^ v[w - 14 * _LANES + lane] ^ v[w - 16 * _LANES + lane]), 1)
        for k in range(5 * _LANES):
            v[k] = h[k]
        for f in range(4):
            for t in range(20 * f, 20 * f + 20, 5):
                _round(v, f, 0, 1, 2, 3, 4, t)
                _round(v, f, 4, 0, 1, 2, 3, t + 1)
                _round(v, f, 3, 4, 0, 1, 2, t + 2)
                _round(v, f, 2, 3, 4, 0, 1, t + 3)
                _round(v, f, 1, 2, 3, 4, 0, t + 4)
        for k in range(5 * _LANES):
            h[k] += v[k]


def _sha1_batch(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """First 8 SHA-1 digest bytes (big-endian) of each message buf[start[i]:start[i] + length[i]].
    Messages are grouped by block count (a counting sort) and hashed _LANES at a time; a group's
    spare lanes repeat its last message. buf needs _PAD readable bytes after every message."""
    m = len(start)
    nblocks = (length + 8) // 64 + 1
    top = 0
    for i in range(m):
        top = max(top, nblocks[i])
    first = np.zeros(top + 2, np.int64)
    for i in range(m):
        first[nblocks[i] + 1] += 1
    for q in range(top + 1):
        first[q + 1] += first[q]
    fill = first.copy()
    order = np.empty(m, np.int64)
    for i in range(m):
        order[fill[nblocks[i]]] = i
        fill[nblocks[i]] += 1
    out = np.empty(m, np.uint64)
    v = np.empty(85 * _LANES, np.uint32)
    h = np.empty(5 * _LANES, np.uint32)
    st = np.empty(_LANES, np.int64)
    ln = np.empty(_LANES, np.int64)
    for nb in range(1, top + 1):
        lo, hi = first[nb], first[nb + 1]
        for g in range(lo, hi, _LANES):
            for lane in range(_LANES):
                i = order[min(g + lane, hi - 1)]
                st[lane] = start[i]
                ln[lane] = length[i]
            _sha1_lanes(buf, st, ln, nb, v, h)
            for lane in range(min(_LANES, hi - g)):
                out[order[g + lane]] = (np.uint64(h[lane]) << np.uint64(32)) | np.uint64(h[_LANES + lane])
    return out


def _fmix32(x: Any) -> Any:
    """datasketch's hash of a shingle from the first digest word x (big-endian): the 4 bytes read
    little-endian (`sha1_hash32`), then the MurmurHash3 finalizer (`_fmix(hv, 32)`)."""
    x = (((x & np.uint64(0xFF)) << np.uint64(24)) | ((x & np.uint64(0xFF00)) << np.uint64(8))
         | ((x >> np.uint64(8)) & np.uint64(0xFF00)) | (x >> np.uint64(24)))
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return np.uint32(x)


def _sign_batch(buf: np.ndarray, off: np.ndarray, is_chars: np.ndarray, size: np.ndarray, a: np.ndarray,
                b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text i is buf[off[i]:off[i + 1]], shingled by characters if is_chars[i] else by words, size[i]
    units a shingle. Returns the (n, num_perm) uint32 signatures, every shingle's fingerprint (text
    by text, in order) and the number of shingles of each text."""
    n = len(off) - 1
    counts = np.zeros(n, np.int64)
    longest = 0
    for i in range(n):  # 1. count units (and so shingles)
        s, e = off[i], off[i + 1]
        if e == s:
            continue
        longest = max(longest, e - s)
        units = 0
        if is_chars[i]:
            for p in range(s, e):
                units += (buf[p] & 0xC0) != 0x80
        else:
            units = 1
            for p in range(s, e):
                units += buf[p] == 0x20
        counts[i] = units - size[i] + 1 if units >= size[i] else 1
    first = np.zeros(n + 1, np.int64)
    for i in range(n):
        first[i + 1] = first[i] + counts[i]
    start = np.empty(first[n], np.int64)
    length = np.empty(first[n], np.int64)
    pos = np.empty(longest + 2, np.int64)
    for i in range(n):  # 2. each shingle's byte range
        s, e, k = off[i], off[i + 1], first[i]
        if e == s:
            continue
        units = 0
        if is_chars[i]:  # unit starts, branch-free: write every position, advance past unit starts
            for p in range(s, e):
                pos[units] = p
                units += (buf[p] & 0xC0) != 0x80
            pos[units] = e
            sep = 0
        else:
            pos[0] = s
            units = 1
            for p in range(s, e):
                pos[units] = p + 1
                units += buf[p] == 0x20
            pos[units] = e + 1  # as if a space followed the text
            sep = 1
        if units < size[i]:  # one shingle: the whole text
            start[k] = s
            length[k] = e - s
            continue
        for j in range(counts[i]):
            start[k + j] = pos[j]
            length[k + j] = pos[j + size[i]] - sep - pos[j]
    fps = _sha1_batch(buf, start, length)  # 3. hash them
    num_perm = len(a)
    hashvalues = np.full((n, num_perm), 0xFFFFFFFF, np.uint32)
    mins = np.empty(num_perm, np.uint32)
    for i in range(n):  # 4. the minimum per permutation, four shingles at a time
        if counts[i] == 0:
            continue
        mins[:] = 0xFFFFFFFF
        k, end = first[i], first[i + 1]
        while k + 4 <= end:
            h0, h1 = _fmix32(fps[k] >> np.uint64(32)), _fmix32(fps[k + 1] >> np.uint64(32))
            h2, h3 = _fmix32(fps[k + 2] >> np.uint64(32)), _fmix32(fps[k + 3] >> np.uint64(32))
            for p in range(num_perm):
                ap, bp = a[p], b[p]
                low = min(min(np.uint32(ap * h0 + bp), np.uint32(ap * h1 + bp)),
                          min(np.uint32(ap * h2 + bp), np.uint32(ap * h3 + bp)))
                mins[p] = min(mins[p], low)
            k += 4
        while k < end:
            h0 = _fmix32(fps[k] >> np.uint64(32))
            for p in range(num_perm):
                mins[p] = min(mins[p], np.uint32(a[p] * h0 + b[p]))
            k += 1
        hashvalues[i] = mins
    return hashvalues, fps, counts


_JIT_LOCK = threading.Lock()
_jitted = False


def _jit() -> None:
    """Compile the kernels (or load them from numba's cache: `__pycache__` next to this file, or
    NUMBA_CACHE_DIR) and put them in place of the Python functions. Idempotent, thread-safe."""
    global _jitted
    with _JIT_LOCK:
        if _jitted:
            return
        try:
            import numba
        except ImportError as e:  # a dependency of sftlab; no slow fallback
            raise ImportError("sftdata dedup computes MinHash signatures with numba: pip install 'numba>=0.60'") from e

        g = globals()
        for name in ("_rotl", "_load_be", "_round", "_fmix32"):
            g[name] = numba.njit(inline="always")(g[name])
        g["_sha1_lanes"] = numba.njit(nogil=True, cache=True)(_sha1_lanes)
        g["_sha1_batch"] = numba.njit("uint64[::1](uint8[::1], int64[::1], int64[::1])",
                                      nogil=True, cache=True)(_sha1_batch)
        g["_sign_batch"] = numba.njit("Tuple((uint32[:, ::1], uint64[::1], int64[::1]))(uint8[::1], int64[::1], "
                                      "boolean[::1], int64[::1], uint32[::1], uint32[::1])",
                                      nogil=True, cache=True)(_sign_batch)
        _jitted = True


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
        cols = hashvalues[:, band * params.rows:(band + 1) * params.rows].astype(np.uint64)
        k = np.full(n, band, dtype=np.uint64)
        for r in range(params.rows):
            k ^= cols[:, r]
            k *= prime
            k ^= k >> np.uint64(29)
        keys[band] = k
    return keys


def candidate_pairs(hashvalues: np.ndarray, params: LshParams, max_bucket: int = 2000) -> np.ndarray:
    """In-memory banding: (m, 2) int64 pairs i < j sharing at least one band, each pair once.

    A bucket bigger than `max_bucket` (thousands of distinct texts agreeing on a band: templated
    data) links each member to its first `max_bucket` members only, to bound the pair count."""
    n = hashvalues.shape[0]
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    found = []
    for keys in _band_keys(hashvalues, params):
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        boundary = np.flatnonzero(np.diff(sorted_keys)) + 1
        run_start = np.concatenate([[0], boundary])
        run_len = np.diff(np.concatenate([run_start, [n]]))
        big = run_len > 1
        if not big.any():
            continue
        found.append(_pairs_in_runs(order, run_start[big], run_len[big], max_bucket))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    code = pairs[:, 0] * n + pairs[:, 1]
    code.sort()
    code = code[np.concatenate([[True], code[1:] != code[:-1]])]
    return np.stack([code // n, code % n], axis=1)


def _pairs_in_runs(order: np.ndarray, run_start: np.ndarray, run_len: np.ndarray, max_bucket: int) -> np.ndarray:
    """All pairs (i < j) within each run of `order`; in runs longer than max_bucket only pairs
    whose earlier member is among the run's first max_bucket."""
    if (run_len > max_bucket).any():
        log.warning("%d LSH buckets hold more than %d texts; pairing their members with the first %d only",
                    int((run_len > max_bucket).sum()), max_bucket, max_bucket)
    # element p (position within its run) pairs with every later element of the run
    member_run = np.repeat(np.arange(len(run_len)), run_len)
    pos = np.arange(int(run_len.sum())) - np.repeat(np.cumsum(run_len) - run_len, run_len)
    global_pos = np.repeat(run_start, run_len) + pos
    partners = np.where(pos < max_bucket, run_len[member_run] - 1 - pos, 0)
    left = np.repeat(global_pos, partners)
    step = np.arange(int(partners.sum())) - np.repeat(np.cumsum(partners) - partners, partners)
    right = left + 1 + step
    i, j = order[left], order[right]
    return np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)


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


def redis_candidate_pairs(hashvalues: np.ndarray, keys: Sequence[str], params: LshParams, url: str, *,
                          seed: int = 1, basename: bytes = b"sftdata-dedup") -> tuple[np.ndarray, int]:
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
    lsh = MinHashLSH(num_perm=num_perm, params=(params.bands, params.rows), storage_config=storage,
                     prepickle=False)
    bkeys = [k.encode("utf-8") for k in keys]
    index = {k: i for i, k in enumerate(bkeys)}
    with lsh.insertion_session(buffer_size=10000) as session:
        for key, hv in zip(bkeys, hashvalues):
            session.insert(key, LeanMinHash(seed=seed, hashvalues=hv, scheme="affine32"), check_duplication=False)
    pairs: set[tuple[int, int]] = set()
    remote = 0
    step = 2000
    for lo in range(0, len(bkeys), step):
        chunk = hashvalues[lo:lo + step]
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
    """Every text's shingle set, sorted and unique, in one array of keys
    `text << fp_bits | fingerprint >> (64 - fp_bits)` (fp_bits = 64 - bits needed for a text index:
    48 for 65k texts, 40 for 16M), with per-text offsets."""

    keys: np.ndarray  # uint64, sorted
    offsets: np.ndarray  # (n + 1,) int64
    fp_bits: int

    def size(self) -> np.ndarray:
        return np.diff(self.offsets)


def shingle_sets(signatures: Signatures, texts: np.ndarray | None = None) -> ShingleSets:
    """The shingle sets of `texts` (default: all); the others are left empty."""
    sig = signatures
    n = len(sig.hashvalues)
    counts = np.diff(sig.offsets)
    if texts is None:
        text, fp = np.repeat(np.arange(n), counts), sig.fingerprints
    else:
        chosen = np.unique(texts)
        text = np.repeat(chosen, counts[chosen])
        fp = sig.fingerprints[_ranges(sig.offsets[chosen], counts[chosen])]
    text_bits = max(1, (n - 1).bit_length())
    fp_bits = 64 - text_bits
    keys = (text.astype(np.uint64) << np.uint64(fp_bits)) | (fp >> np.uint64(text_bits))
    keys.sort()
    if len(keys):
        keep = np.empty(len(keys), dtype=bool)
        keep[0] = True
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        keys = keys[keep]
    counts = np.bincount((keys >> np.uint64(fp_bits)).astype(np.int64), minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ShingleSets(keys, offsets, fp_bits)


def verified_jaccard(sets: ShingleSets, pairs: np.ndarray, *, threads: int = THREADS,
                     chunk: int = 1 << 18) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair of texts. Vectorised: every element
    of the smaller set is looked up (binary search) in the larger set's range of `sets.keys`;
    chunks of pairs run on `threads` threads (numpy releases the GIL in the lookups)."""
    out = np.zeros(len(pairs), dtype=np.float64)
    if len(pairs) == 0 or len(sets.keys) == 0:
        return out
    size = sets.size()
    x, y = pairs[:, 0], pairs[:, 1]
    small = np.where(size[y] <= size[x], y, x)
    large = np.where(size[y] <= size[x], x, y)
    order = np.argsort(large, kind="stable")  # lookups into one set run together: cache-friendly
    x, y, small, large = x[order], y[order], small[order], large[order]
    ends = np.cumsum(size[small])
    cuts = np.searchsorted(ends, np.arange(chunk, int(ends[-1]), chunk))
    bounds = np.unique(np.concatenate([[0], cuts, [len(pairs)]]))
    shift, low = np.uint64(sets.fp_bits), np.uint64((1 << sets.fp_bits) - 1)

    def work(lo: int, hi: int) -> None:
        lens = size[small[lo:hi]]
        idx = _ranges(sets.offsets[small[lo:hi]], lens)
        query = (np.repeat(large[lo:hi].astype(np.uint64), lens) << shift) | (sets.keys[idx] & low)
        # the large sets of this chunk, copied together (still sorted: `large` is ascending), so the
        # binary searches run in a small array instead of the whole corpus
        targets = np.unique(large[lo:hi])
        local = sets.keys[_ranges(sets.offsets[targets], size[targets])]
        pos = np.searchsorted(local, query)
        np.minimum(pos, max(len(local) - 1, 0), out=pos)
        hit = local[pos] == query if len(local) else np.zeros(len(query), dtype=bool)
        inter = np.bincount(np.repeat(np.arange(hi - lo), lens), weights=hit, minlength=hi - lo)
        union = size[x[lo:hi]] + size[y[lo:hi]] - inter
        out[order[lo:hi]] = np.divide(inter, union, out=np.zeros(hi - lo), where=union > 0)

    _map(threads, work, list(zip(bounds[:-1].tolist(), bounds[1:].tolist())))
    return out


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated aranges [starts[k], starts[k] + lens[k])."""
    total = int(lens.sum())
    first = np.cumsum(lens) - lens
    return np.repeat(starts - first, lens) + np.arange(total)


def estimated_jaccard(hashvalues: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """MinHash estimate: the share of equal hash values (datasketch `MinHash.jaccard`)."""
    out = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), 65536):
        p = pairs[lo:lo + 65536]
        out[lo:lo + 65536] = (hashvalues[p[:, 0]] == hashvalues[p[:, 1]]).mean(axis=1)
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
        return [Pair(int(self.left[k]), int(self.right[k]), KINDS[self.kind[k]], float(self.estimated_jaccard[k]),
                     float(self.verified_jaccard[k])) for k in idx]


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
    clusters: dict[str, list[Any]] = field(default_factory=dict)  # columns of dedup/clusters.parquet


def dedup(train: Sequence[Conversation], against: Sequence[Conversation] = (),
          config: DedupConfig = DedupConfig()) -> DedupResult:
    """Find exact and near duplicates within `train` and contamination of `train` by `against`."""
    clock = _Clock()
    spec = parse_shingle(config.shingle)
    params = lsh_params(config.threshold, config.num_perm)
    examples = tuple(train) + tuple(against)
    n_train = len(train)
    # Exact duplicates share a text id; only one copy of each distinct text is signed.
    text_id: dict[str, int] = {}
    uid = np.empty(len(examples), dtype=np.int64)
    length = np.empty(len(examples), dtype=np.int64)  # normalised length, for --keep longest
    for i, c in enumerate(examples):
        t = normalize(text_of(c, config.fields))
        uid[i] = text_id.setdefault(t, len(text_id)) if t else -1
        length[i] = len(t)
    texts = list(text_id)
    del text_id
    clock.lap("normalize")
    first_train = _first_member(uid[:n_train], len(texts), 0)
    first_against = _first_member(uid[n_train:], len(texts), n_train)
    log.info("dedup: %d examples, %d distinct non-empty texts; %d bands x %d rows (P(candidate | J=%.2f) = %.3f)",
             len(examples), len(texts), params.bands, params.rows, config.threshold, params.recall_at_threshold)

    sigs = minhash_signatures(texts, spec, num_perm=config.num_perm, seed=config.seed, threads=config.threads)
    n_texts = len(texts)
    del texts  # the signatures and fingerprints are all that is needed from here on
    clock.lap("signatures")
    remote = 0
    if config.lsh_storage:
        first = np.where(first_train >= 0, first_train, first_against)
        keys = [_lsh_key(examples[int(i)]) for i in first]
        cand, remote = redis_candidate_pairs(sigs.hashvalues, keys, params, config.lsh_storage,
                                             seed=config.seed, basename=_basename(config, spec, params))
    else:
        cand = candidate_pairs(sigs.hashvalues, params)
    u, v = cand[:, 0], cand[:, 1]
    tu, tv, au, av = first_train[u] >= 0, first_train[v] >= 0, first_against[u] >= 0, first_against[v] >= 0
    cand = cand[(tu & tv) | (tu & av) | (tv & au)]  # pairs of two --against texts do not matter
    clock.lap("candidates")
    sets = shingle_sets(sigs, np.unique(cand))
    ver = verified_jaccard(sets, cand, threads=config.threads)
    clock.lap("verify")
    ok = ver >= config.threshold - 1e-12
    near, near_ver, near_est = cand[ok], ver[ok], estimated_jaccard(sigs.hashvalues, cand[ok])
    log.info("dedup: %d LSH candidate pairs, %d verified at Jaccard >= %.2f", len(cand), len(near), config.threshold)

    pairs = _example_pairs(uid, n_train, first_train, first_against, near, near_est, near_ver)
    contaminated = np.zeros(n_train, dtype=bool)
    is_cont = pairs.kind == 2
    contaminated[pairs.left[is_cont]] = True

    # clusters: connected components of exact and near pairs among training examples
    dup = ~is_cont
    labels = _components(n_train, pairs.left[dup], pairs.right[dup])
    in_cluster = np.bincount(labels, minlength=n_train)[labels] > 1 if n_train else np.zeros(0, dtype=bool)
    cluster = np.full(n_train, -1, dtype=np.int64)
    roots, inverse = np.unique(labels[in_cluster], return_inverse=True)
    cluster[in_cluster] = inverse
    members = np.flatnonzero(in_cluster)
    policy = -length[members] if config.keep == "longest" else np.zeros(len(members), dtype=np.int64)
    order = members[np.lexsort((members, policy, contaminated[members], cluster[members]))]
    is_first = np.ones(len(order), dtype=bool)
    is_first[1:] = cluster[order[1:]] != cluster[order[:-1]]
    reps = order[is_first]  # one per cluster, in cluster id order
    representative = np.zeros(n_train, dtype=bool)
    representative[reps] = True
    rep_of = np.arange(n_train)
    rep_of[members] = reps[cluster[members]]
    kept = tuple(int(i) for i in np.flatnonzero((~in_cluster | representative) & ~contaminated))

    clock.lap("clusters")
    findings = _findings(examples, config.fields, pairs, representative, rep_of)

    # dedup/clusters.parquet: every member of a cluster, with its similarity to the representative
    member_order = members[np.lexsort((members, cluster[members]))]
    to_rep = np.stack([uid[member_order], uid[rep_of[member_order]]], axis=1)
    clusters = {
        "cluster_id": cluster[member_order].tolist(),
        "example_id": [examples[i].id for i in member_order],
        "source_file": [examples[i].source.file for i in member_order],
        "source_line": [_line(examples[i]) for i in member_order],
        "representative": representative[member_order].tolist(),
        "representative_id": [examples[rep_of[i]].id for i in member_order],
        "estimated_jaccard": estimated_jaccard(sigs.hashvalues, to_rep).tolist(),
        "verified_jaccard": np.where(to_rep[:, 0] == to_rep[:, 1], 1.0, verified_jaccard(sets, to_rep)).tolist(),
        "contaminated": contaminated[member_order].tolist(),
    }
    clock.lap("findings")
    summary = {
        "examples": n_train,
        "against_examples": len(examples) - n_train,
        "empty_texts": int((uid[:n_train] < 0).sum()),
        "distinct_texts": n_texts,
        "exact_duplicates": pairs.count("exact"),
        "near_pairs": pairs.count("near"),
        "clusters": len(roots),
        "examples_in_clusters": len(members),
        "largest_cluster": int(np.bincount(cluster[members]).max()) if len(members) else 0,
        "contaminated": int(contaminated.sum()),
        "kept": len(kept),
        "removed": n_train - len(kept),
        "lsh_candidates": int(len(cand)),
        "lsh_unverified_remote_candidates": remote,
        "char_shingled_texts": int(sigs.char_shingled.sum()),
        "threshold": config.threshold,
        "bands": params.bands,
        "rows": params.rows,
        "recall_at_threshold": round(params.recall_at_threshold, 4),
        "fields": config.fields,
        "shingle": str(spec),
        "num_perm": config.num_perm,
        "seed": config.seed,
        "keep": config.keep,
        "seconds": clock.laps,
    }
    log.info("dedup: seconds per stage %s", clock.laps)
    return DedupResult(examples, n_train, pairs, cluster, representative, contaminated, kept, tuple(findings),
                       summary, params, clusters)


@dataclass(frozen=True)
class _Clock:
    """Wall-clock seconds per stage (summary["seconds"])."""

    laps: dict[str, float] = field(default_factory=dict)
    last: list[float] = field(default_factory=lambda: [time.perf_counter()])

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last[0], 3)
        self.last[0] = now


def _first_member(uid: np.ndarray, n_texts: int, base: int) -> np.ndarray:
    """Per text id, the index (+ base) of its first example in `uid`, or -1."""
    first = np.full(n_texts, -1, dtype=np.int64)
    idx = np.flatnonzero(uid >= 0)[::-1]
    first[uid[idx]] = idx + base  # assignment in reverse order: the first occurrence wins
    return first


def _example_pairs(uid: np.ndarray, n_train: int, first_train: np.ndarray, first_against: np.ndarray,
                   near: np.ndarray, near_est: np.ndarray, near_ver: np.ndarray) -> Pairs:
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


def _findings(examples: tuple[Conversation, ...], fields: str, pairs: Pairs, representative: np.ndarray,
              rep_of: np.ndarray) -> list[Finding]:
    """One dedup.exact / dedup.near finding per example a cluster drops, naming its most similar
    partner (the representative on ties); one dedup.contamination per contaminated example, naming
    its most similar --against example."""
    findings: list[Finding] = []
    dup = np.flatnonzero(pairs.kind != 2)
    src = np.concatenate([pairs.left[dup], pairs.right[dup]])
    dst = np.concatenate([pairs.right[dup], pairs.left[dup]])
    edge = np.concatenate([dup, dup])
    keep = ~representative[src] if len(src) else np.zeros(0, dtype=bool)
    src, dst, edge = src[keep], dst[keep], edge[keep]
    order = np.lexsort((dst, dst != rep_of[src], -pairs.verified_jaccard[edge], src))
    first = np.ones(len(order), dtype=bool)
    first[1:] = src[order[1:]] != src[order[:-1]]
    for k in order[first]:
        e = edge[k]
        findings.append(_duplicate_finding(examples, fields, int(src[k]), int(dst[k]), KINDS[pairs.kind[e]],
                                           float(pairs.estimated_jaccard[e]), float(pairs.verified_jaccard[e]),
                                           bool(representative[dst[k]])))
    cont = np.flatnonzero(pairs.kind == 2)
    order = cont[np.lexsort((pairs.right[cont], -pairs.verified_jaccard[cont], pairs.left[cont]))]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pairs.left[order[1:]] != pairs.left[order[:-1]]
    for e in order[first]:
        findings.append(_contamination_finding(examples, fields, int(pairs.left[e]), int(pairs.right[e]),
                                               float(pairs.estimated_jaccard[e]), float(pairs.verified_jaccard[e])))
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
    flat = " ".join(text[: width * 4].split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _side(conversation: Conversation) -> dict[str, Any]:
    return {"example_id": conversation.id, "source": conversation.source.to_dict()}


def _duplicate_finding(examples: tuple[Conversation, ...], fields: str, x: int, y: int, kind: str,
                       estimate: float, verified: float, y_is_rep: bool) -> Finding:
    ex, other = examples[x], examples[y]
    mine, theirs = snippet(text_of(ex, fields)), snippet(text_of(other, fields))
    if kind == "exact":
        message = f"{ex.source} is an exact duplicate (after normalisation) of {other.source} ({other.id}): {mine!r}"
    else:
        message = (f"{ex.source} near-duplicates {other.source} ({other.id}): verified Jaccard "
                   f"{verified:.3f} (MinHash estimate {estimate:.3f}): {mine!r} vs {theirs!r}")
    return Finding(
        check=f"dedup.{kind}", severity="warning", message=message,
        hint="drop it: `sftdata dedup ... -o KEPT` keeps one example per cluster"
             + ("" if y_is_rep else " (its cluster keeps another member)"),
        example_id=ex.id, source=ex.source,
        data={"other": _side(other), "verified_jaccard": round(verified, 4), "estimated_jaccard": round(estimate, 4)},
    )


def _contamination_finding(examples: tuple[Conversation, ...], fields: str, x: int, y: int, estimate: float,
                           verified: float) -> Finding:
    ex, other = examples[x], examples[y]
    how = "an exact copy of" if verified >= 1.0 else f"a near-duplicate (Jaccard {verified:.3f}) of"
    return Finding(
        check="dedup.contamination", severity="error",
        message=(f"training example {ex.source} is {how} evaluation example {other.source} ({other.id}): "
                 f"{snippet(text_of(ex, fields))!r}"),
        hint="remove it from the training data (`-o KEPT` drops it) or from the evaluation set; "
             "otherwise the evaluation measures memorisation",
        example_id=ex.id, source=ex.source,
        data={"other": _side(other), "verified_jaccard": round(verified, 4), "estimated_jaccard": round(estimate, 4)},
    )
