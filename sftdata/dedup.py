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
   can go into datasketch's own LSH and storage. It is computed for the whole corpus with numpy:
   shingles are byte ranges of one concatenated buffer, SHA-1 runs vectorised over all shingles
   (80 rounds of uint32 array operations), and the per-permutation minimum runs over
   length-bucketed matrices, in batches on several threads (numpy releases the GIL in its loops).
   Repeated passages are signed once: texts are cut into content-defined segments, each distinct
   segment is signed once, and a text's signature is the minimum of its segments' signatures
   and of the few shingles that cross a segment boundary (a MinHash is a minimum).
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
THREADS = min(os.cpu_count() or 1, 8)  # numpy work runs on this many threads by default

_U32 = np.uint32
_MAX_HASH = np.uint32(0xFFFFFFFF)


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
    """Reference (pure Python) shingles of a normalised text, as UTF-8 bytes. The vectorised path
    in `minhash_signatures` produces exactly these byte strings; tests and the benchmark feed them
    to datasketch."""
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
    A fingerprint is the first 8 SHA-1 digest bytes (big-endian) of a shingle. Text i's shingles
    are its crossing shingles (`cross_fp` where `cross_text == i`) and the shingles of its
    segments (`occ_seg` where `occ_text == i`; segment s's are `seg_fp[seg_off[s]:][:seg_size[s]]`);
    `shingle_set` and `shingle_sets` put them together."""

    hashvalues: np.ndarray  # (n, num_perm) uint32
    cross_fp: np.ndarray  # uint64
    cross_text: np.ndarray  # int64
    seg_fp: np.ndarray  # uint64
    seg_off: np.ndarray  # int64, per distinct segment
    seg_size: np.ndarray  # int64, per distinct segment
    occ_text: np.ndarray  # int64, per segment occurrence
    occ_seg: np.ndarray  # int64, per segment occurrence
    char_shingled: np.ndarray  # (n,) bool: text used character shingles
    num_perm: int
    seed: int

    def shingle_set(self, i: int) -> np.ndarray:
        """Sorted unique fingerprints of text i's shingles."""
        sid = self.occ_seg[self.occ_text == i]
        return np.unique(np.concatenate([self.cross_fp[self.cross_text == i],
                                         self.seg_fp[_ranges(self.seg_off[sid], self.seg_size[sid])]]))


def minhash_signatures(normalized: Sequence[str], spec: ShingleSpec = ShingleSpec("words", 5), *,
                       num_perm: int = 128, seed: int = 1, threads: int = THREADS,
                       batch_bytes: int = 1 << 20) -> Signatures:
    """Signatures of normalised texts (see `normalize`), computed in batches of about
    `batch_bytes` on `threads` threads. Empty texts get the empty signature (all 0xFFFFFFFF, as
    datasketch) and an empty set.

    Corpora repeat passages (one document under several prompt templates, boilerplate), so each
    text is cut into segments at content-defined points (after a unit whose first bytes hash to
    1 in 32: the same passage is cut the same way wherever it appears). A MinHash is a minimum,
    so a text's signature is the minimum of the signatures of its segments (each distinct segment
    signed once) and of the shingles that cross a segment boundary (signed with the text)."""
    a, b = permutations(num_perm, seed)
    specs = [spec_for(t, spec) for t in normalized]
    encoded = [t.encode("utf-8") for t in normalized]
    parts = _map(threads, lambda lo, hi: _text_part(encoded[lo:hi], specs[lo:hi], a, b),
                 _batches(encoded, batch_bytes))

    # one signature per distinct segment: its bytes after "w" (word shingles) or "c" (character
    # shingles; a run uses one word spec and one char spec at most)
    index: dict[bytes, int] = {}
    seg_ids = [np.array([index.setdefault(key, len(index)) for key in part.seg_keys], dtype=np.int64)
               for part in parts]
    char_spec = spec if spec.kind == "chars" else ShingleSpec("chars", CJK_CHARS)
    seg_specs = [char_spec if key[:1] == b"c" else spec for key in index]
    seg_texts = [key[1:] for key in index]
    del index
    signed = _map(threads, lambda lo, hi: _sign_texts(seg_texts[lo:hi], seg_specs[lo:hi], a, b),
                  _batches(seg_texts, batch_bytes))
    seg_hv = np.concatenate([h for h, _, _ in signed]) if signed else np.empty((0, num_perm), _U32)
    seg_fp = np.concatenate([f for _, f, _ in signed]) if signed else np.empty(0, np.uint64)
    seg_size = np.concatenate([c for _, _, c in signed]) if signed else np.empty(0, np.int64)
    seg_off = np.cumsum(seg_size) - seg_size

    # each text: the minimum over its crossing shingles (in part.hashvalues, updated in place) and
    # its segments
    def combine(k: int) -> np.ndarray:
        part, ids = parts[k], seg_ids[k]
        if len(ids):
            texts, first = np.unique(part.seg_text, return_index=True)
            part.hashvalues[texts] = np.minimum(part.hashvalues[texts],
                                                np.minimum.reduceat(seg_hv[ids], first, axis=0))
        return part.hashvalues

    hashvalues = _map(threads, combine, [(k,) for k in range(len(parts))])
    first_text = np.cumsum([len(p.hashvalues) for p in parts]) - [len(p.hashvalues) for p in parts]
    return Signatures(
        hashvalues=np.concatenate(hashvalues) if hashvalues else np.empty((0, num_perm), _U32),
        cross_fp=np.concatenate([p.cross_fp for p in parts]) if parts else np.empty(0, np.uint64),
        cross_text=np.concatenate([np.repeat(np.arange(len(p.cross_counts)), p.cross_counts) + t
                                   for p, t in zip(parts, first_text)]) if parts else np.empty(0, np.int64),
        seg_fp=seg_fp, seg_off=seg_off, seg_size=seg_size,
        occ_text=(np.concatenate([p.seg_text + t for p, t in zip(parts, first_text)]) if parts
                  else np.empty(0, np.int64)),
        occ_seg=np.concatenate(seg_ids) if seg_ids else np.empty(0, np.int64),
        char_shingled=np.array([s.kind == "chars" for s in specs], dtype=bool), num_perm=num_perm, seed=seed)


def _batches(items: Sequence[bytes], batch_bytes: int) -> list[tuple[int, int]]:
    out, start, size = [], 0, 0
    for i, e in enumerate(items):
        size += len(e)
        if size >= batch_bytes:
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


@dataclass(frozen=True)
class _TextPart:
    """One batch of texts: signatures over the shingles that cross segment boundaries, their
    fingerprints, and the segments (each with enough units for a shingle of its own)."""

    hashvalues: np.ndarray  # (n, num_perm), all 0xFFFFFFFF where a text has no crossing shingle
    cross_fp: np.ndarray  # fingerprints of the crossing shingles, text by text
    cross_counts: np.ndarray  # (n,)
    seg_text: np.ndarray  # (s,) the text (index in the batch) each segment belongs to, ascending
    seg_keys: list[bytes]  # (s,) the segment's bytes after b"w" (word shingles) or b"c" (characters)


_CUT_SHIFT = np.uint32(27)  # a unit ends a segment when the top 5 bits of its hash are 0: 1 in 32


def _text_part(encoded: list[bytes], specs: list[ShingleSpec], a: np.ndarray, b: np.ndarray) -> _TextPart:
    n = len(encoded)
    hashvalues = np.full((n, len(a)), _MAX_HASH, dtype=_U32)
    nonempty = np.flatnonzero(np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n) > 0)
    cross_counts = np.zeros(n, dtype=np.int64)
    if len(nonempty) == 0:
        return _TextPart(hashvalues, np.empty(0, np.uint64), cross_counts, np.empty(0, np.int64), [])
    ne_specs = [specs[i] for i in nonempty]
    w = _windows([encoded[i] for i in nonempty], ne_specs)
    # content-defined cuts: after a unit whose first 4 bytes hash to 0 in the top 5 bits, and at text ends
    first4 = np.ndarray((len(w.buf) - 3,), dtype="<u4", buffer=w.buf, strides=(1,))[w.unit_pos]
    cut = (first4 * np.uint32(0x9E3779B1)) >> _CUT_SHIFT == 0
    cut[w.text_first_unit + w.units - 1] = True
    segment = np.cumsum(cut) - cut  # segment index of every unit
    crossing = (segment[w.first] != segment[w.last]) | (w.units < w.size)[w.text]
    counts = np.bincount(w.text[crossing], minlength=len(nonempty))
    hv, fp = _sign(w.buf, w.start[crossing], w.length[crossing], counts, a, b)
    hashvalues[nonempty] = hv
    cross_counts[nonempty] = counts
    # segments with at least N units: their own shingles are signed once per distinct segment
    seg_first = np.concatenate([[0], np.flatnonzero(cut[:-1]) + 1])
    seg_last = np.flatnonzero(cut)
    seg_text = w.unit_text[seg_first]
    keep = seg_last - seg_first + 1 >= w.size[seg_text]
    raw = w.buf.tobytes()
    text_of_seg = seg_text[keep]
    bounds = zip(w.unit_pos[seg_first[keep]].tolist(), w.unit_end[seg_last[keep]].tolist())
    keys = [b"w" + raw[s:e] for s, e in bounds]
    for k in np.flatnonzero(w.is_chars[text_of_seg]).tolist():
        keys[k] = b"c" + keys[k][1:]
    return _TextPart(hashvalues, fp, cross_counts, nonempty[text_of_seg], keys)


def _sign_texts(encoded: list[bytes], specs: list[ShingleSpec], a: np.ndarray,
                b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signatures, fingerprints and shingle counts of non-empty texts, every shingle signed."""
    w = _windows(encoded, specs)
    counts = np.bincount(w.text, minlength=len(encoded))
    hv, fp = _sign(w.buf, w.start, w.length, counts, a, b)
    return hv, fp, counts


def _sign(buf: np.ndarray, start: np.ndarray, length: np.ndarray, counts: np.ndarray, a: np.ndarray,
          b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MinHash of groups of shingles (byte ranges of buf; `counts` per group, in order): returns
    (groups, num_perm) hash values (all 0xFFFFFFFF for an empty group) and every shingle's
    fingerprint (the first 8 bytes of its SHA-1)."""
    hashvalues = np.full((len(counts), len(a)), _MAX_HASH, dtype=_U32)
    if len(start) == 0:
        return hashvalues, np.empty(0, np.uint64)
    h0, h1 = _sha1_prefix(buf, start, length)
    hv = _fmix32(h0.byteswap())  # sha1_hash32 reads the first 4 digest bytes little-endian
    filled = counts > 0
    hashvalues[filled] = _min_per_text(hv, counts[filled], a, b)
    return hashvalues, (h0.astype(np.uint64) << np.uint64(32)) | h1


@dataclass(frozen=True)
class _Windows:
    """Every shingle of a batch of non-empty texts as a byte range of one buffer, with the units
    (words or characters) it spans."""

    buf: np.ndarray  # uint8: the texts, concatenated, and a zero tail
    unit_pos: np.ndarray  # (u,) byte offset of each unit
    unit_end: np.ndarray  # (u,) byte offset just past it
    unit_text: np.ndarray  # (u,) its text
    units: np.ndarray  # (n,) units per text
    text_first_unit: np.ndarray  # (n,)
    size: np.ndarray  # (n,) the text's shingle size N
    is_chars: np.ndarray  # (n,) the text uses character shingles
    text: np.ndarray  # (m,) each shingle's text, ascending
    first: np.ndarray  # (m,) its first unit
    last: np.ndarray  # (m,) its last unit
    start: np.ndarray  # (m,) byte offset
    length: np.ndarray  # (m,) byte length


def _windows(encoded: list[bytes], specs: list[ShingleSpec]) -> _Windows:
    """A word unit starts at a text start or after a space; a char unit at any byte that is not a
    UTF-8 continuation byte. Shingle i of a text spans units i .. i+N-1 (or the whole text if it
    has fewer than N units)."""
    n = len(encoded)
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    total = int(lengths.sum())
    buf = np.zeros(total + 128, dtype=np.uint8)  # zero tail: windows past the end stay in bounds
    buf[:total] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    body = buf[:total]
    is_chars = np.array([s.kind == "chars" for s in specs], dtype=bool)
    size = np.array([s.size for s in specs], dtype=np.int64)

    text_start = np.zeros(total, dtype=bool)
    text_start[starts] = True
    word_start = text_start.copy()
    word_start[1:] |= body[:-1] == 0x20
    char_start = (body & 0xC0) != 0x80
    unit_start = np.where(np.repeat(is_chars, lengths), char_start, word_start)
    unit_pos = np.flatnonzero(unit_start)
    units = np.add.reduceat(unit_start.astype(np.int64), starts)  # every text has >= 1 unit
    first_unit = np.zeros(n, dtype=np.int64)
    np.cumsum(units[:-1], out=first_unit[1:])
    unit_text = np.repeat(np.arange(n), units)
    # A unit ends where the next unit of its text starts (minus the space for words) or at text end.
    next_pos = np.append(unit_pos[1:], total)
    last_of_text = np.zeros(len(unit_pos), dtype=bool)
    last_of_text[first_unit + units - 1] = True
    unit_end = np.where(last_of_text, (starts + lengths)[unit_text],
                        next_pos - (~is_chars[unit_text]).astype(np.int64))

    counts = np.where(units >= size, units - size + 1, 1)
    text = np.repeat(np.arange(n), counts)
    first_shingle = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=first_shingle[1:])
    i = np.arange(int(counts.sum()), dtype=np.int64) - first_shingle[text]
    first = first_unit[text] + i
    last = first_unit[text] + np.minimum(i + size[text] - 1, units[text] - 1)
    start = unit_pos[first]
    return _Windows(buf, unit_pos, unit_end, unit_text, units, first_unit, size, is_chars, text, first, last, start,
                    unit_end[last] - start)


_SHA1_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
_SHA1_K = (np.uint32(0x5A827999), np.uint32(0x6ED9EBA1), np.uint32(0x8F1BBCDC), np.uint32(0xCA62C1D6))
_SHA1_CHUNK = 65536  # messages per vectorised pass: big enough that numpy call overhead is small


def _sha1_prefix(buf: np.ndarray, span_start: np.ndarray, span_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two 32-bit words (big-endian) of SHA-1 of each byte range buf[s:s+len], equal to
    `hashlib.sha1(...).digest()[:8]`. Messages are grouped by their number of 64-byte blocks."""
    m = len(span_start)
    h0 = np.empty(m, dtype=_U32)
    h1 = np.empty(m, dtype=_U32)
    n_blocks = (span_len + 8) // 64 + 1
    for nb in np.unique(n_blocks):
        group = np.flatnonzero(n_blocks == nb)
        width = int(nb) * 64
        if len(buf) < width + int(span_start.max(initial=0)) + 1:
            buf = np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
        windows = np.lib.stride_tricks.sliding_window_view(buf, width)
        for lo in range(0, len(group), _SHA1_CHUNK):
            idx = group[lo:lo + _SHA1_CHUNK]
            words = _sha1_pad(windows, span_start[idx], span_len[idx], width)
            h0[idx], h1[idx] = _sha1_compress(words, int(nb))
    return h0, h1


_HEAD = np.array([0, 0xFF000000, 0xFFFF0000, 0xFFFFFF00], dtype=_U32)  # the first 0..3 bytes of a word
_MARK = np.array([0x80000000, 0x00800000, 0x00008000, 0x00000080], dtype=_U32)  # 0x80 at byte 0..3


def _sha1_pad(windows: np.ndarray, start: np.ndarray, length: np.ndarray, width: int) -> np.ndarray:
    """SHA-1 padded messages as (16 * blocks, m) big-endian words, one column per message: the
    message, a 0x80 byte, zeros, and the bit length in the last word (messages < 512 MiB)."""
    m = len(start)
    words = np.ascontiguousarray(windows[start].view(">u4").T, dtype=_U32)  # bytes from each start
    full, rem = length >> 2, length & 3  # the word holding the 0x80 byte, and its position there
    words *= np.arange(width // 4)[:, None] <= full  # zero the words past the message
    col = np.arange(m)
    words[full, col] = (words[full, col] & _HEAD[rem]) | _MARK[rem]
    words[-1] = (length * 8).astype(_U32)
    return words


def _sha1_compress(words: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """SHA-1 over columns of `words` (16 * n_blocks, m); returns digest words 0 and 1."""
    m = words.shape[1]
    state = [np.full(m, v, dtype=_U32) for v in _SHA1_INIT]
    t1 = np.empty(m, dtype=_U32)
    t2 = np.empty(m, dtype=_U32)
    for blk in range(n_blocks):
        w = [words[16 * blk + i].copy() for i in range(16)]
        a, b, c, d, e = (s.copy() for s in state)
        spare = np.empty(m, dtype=_U32)
        for t in range(80):
            wt = w[t & 15]
            if t >= 16:  # message schedule, in place: w[t] = rotl1(w[t-3] ^ w[t-8] ^ w[t-14] ^ w[t-16])
                wt ^= w[(t - 3) & 15]
                wt ^= w[(t - 8) & 15]
                wt ^= w[(t - 14) & 15]
                np.left_shift(wt, 1, out=t2)
                wt >>= 31
                wt |= t2
            f = spare
            if t < 20:  # choose: d ^ (b & (c ^ d))
                np.bitwise_xor(c, d, out=f)
                f &= b
                f ^= d
            elif 40 <= t < 60:  # majority: (b & c) | (d & (b | c))
                np.bitwise_or(b, c, out=f)
                f &= d
                np.bitwise_and(b, c, out=t2)
                f |= t2
            else:  # parity
                np.bitwise_xor(b, c, out=f)
                f ^= d
            f += e
            f += wt
            f += _SHA1_K[t // 20]
            np.left_shift(a, 5, out=t2)
            f += t2
            np.right_shift(a, 27, out=t2)
            f += t2  # rotl(a, 5) as a sum: the two halves have no bits in common
            # new c = rotl(b, 30), written over e (no longer needed)
            np.left_shift(b, 30, out=e)
            np.right_shift(b, 2, out=t2)
            e |= t2
            a, b, c, d, e, spare = f, a, e, c, d, b
        for s, v in zip(state, (a, b, c, d, e)):
            s += v
    return state[0], state[1]


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 32-bit finalizer, as datasketch `_fmix(hv, 32)`."""
    h = h ^ (h >> _U32(16))
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h


_MIN_TILE = 1 << 15  # elements per (length x texts) tile in the per-permutation minimum
_MIN_WORK = 1 << 15  # elements per numpy call there: short tiles take several permutations at once


def _min_per_text(hv: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min over each text's shingles of (a_k * h + b_k) mod 2**32 for every permutation k.

    Texts are sorted by shingle count and tiled into (length, texts) matrices; a shorter text's
    column is filled by repeating its own hashes, which leaves its minimum unchanged. The minimum
    then runs down the columns (element-wise, SIMD) instead of over ragged segments, for a block
    of permutations per numpy call."""
    n, num_perm = len(counts), len(a)
    out = np.empty((num_perm, n), dtype=_U32)
    offsets = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    order = np.argsort(counts, kind="stable")
    i = 0
    while i < n:
        # a tile: texts of similar length (padding under 1/2), at most _MIN_TILE elements
        cap = int(counts[order[i]]) + max(8, int(counts[order[i]]) // 2)
        j = i + 1
        while j < n and counts[order[j]] <= cap and (j + 1 - i) * counts[order[j]] <= _MIN_TILE:
            j += 1
        texts = order[i:j]
        length = int(counts[texts].max())
        rows = np.arange(length)[:, None] % counts[texts][None, :]
        tile = hv[offsets[texts][None, :] + rows]  # (length, texts)
        block = max(1, min(num_perm, _MIN_WORK // tile.size))
        work = np.empty((block,) + tile.shape, dtype=_U32)
        col = np.empty((block, len(texts)), dtype=_U32)
        for k in range(0, num_perm, block):
            m = min(block, num_perm - k)
            np.multiply(tile[None], a[k:k + m, None, None], out=work[:m])
            work[:m] += b[k:k + m, None, None]
            np.minimum.reduce(work[:m], axis=1, out=col[:m])
            out[k:k + m, texts] = col[:m]
        i = j
    return np.ascontiguousarray(out.T)


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
    need = np.ones(n, dtype=bool)
    if texts is not None:
        need[:] = False
        need[texts] = True
    cross = need[sig.cross_text]
    occ = need[sig.occ_text]
    sid = sig.occ_seg[occ]
    text = np.concatenate([sig.cross_text[cross], np.repeat(sig.occ_text[occ], sig.seg_size[sid])])
    fp = np.concatenate([sig.cross_fp[cross], sig.seg_fp[_ranges(sig.seg_off[sid], sig.seg_size[sid])]])
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
