"""MinHash signatures bit-identical to datasketch 2.x, and the text normalisation they start from.

1. `normalize` folds a text (NFKC, casefold, every run of non-word characters to one space,
   stripped); `normalize_many` does the same for a whole corpus with a compiled kernel and returns
   the results packed into one UTF-8 buffer (`Packed`), plus which texts are CJK-heavy.
2. `minhash_signatures` shingles every text and computes MinHash signatures bit-identical to
   datasketch 2.x `MinHash` (scheme "affine32": SHA-1 of each UTF-8 shingle, first 4 digest bytes
   read little-endian, MurmurHash3 fmix32, then `a * h + b mod 2**32` per permutation, with `a`/`b`
   drawn from `np.random.RandomState(seed)` exactly as datasketch draws them), so the signatures
   can go into datasketch's own LSH and storage. It runs compiled kernels (compiled ahead of time
   by `python -m sftdata.aot` where that module is built, else numba's JIT, imported on first use
   and cached on disk): per batch of texts, one call without the GIL finds the shingles' byte
   ranges in the UTF-8 buffer, hashes them with SHA-1 and takes the per-permutation minimum;
   batches run on several threads. SHA-1 runs on the CPU's SHA instructions where it has them
   (section 2c: AMD Zen, recent Intel), else as SIMD lanes, 32 messages at a time.

Shingles: `words:N` are N consecutive words of the normalised text joined by single spaces;
`chars:N` are N consecutive characters. A text with fewer units than N is one shingle (the whole
text), so short texts still compare. Texts that are CJK-heavy (more than 30% of their non-space
characters Han, Hiragana or Katakana) use `chars:3` instead of `words:N`: Chinese and Japanese put
no spaces between words. (Korean does, so Hangul is not counted.)
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
import threading
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Packed",
    "ShingleSpec",
    "SignStream",
    "SignedParts",
    "Signatures",
    "is_cjk_heavy",
    "minhash_signatures",
    "normalize",
    "normalize_many",
    "parse_shingle",
    "permutations",
    "shingles",
    "sign_packed",
]

CJK_SHARE = 0.30  # a text is CJK-heavy above this share of CJK characters
CJK_CHARS = 3  # character n-gram size used for CJK-heavy texts
THREADS = min(os.cpu_count() or 1, 8)  # normalising and signing run on this many threads by default
_SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # as imported: keys the AOT module

# ---------------------------------------------------------------------------------------------
# 1. Normalisation (reference functions; `normalize_many` is the compiled version)
# ---------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]+")
_ASCII_PUNCT = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())}
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


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
# 1b. Normalising a corpus at once
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packed:
    """n texts as one UTF-8 buffer: text i is bytes buf[off[i]:off[i + 1]]; _PAD zero bytes follow
    the last one (the SHA-1 kernel reads whole words past a message's end)."""

    buf: np.ndarray  # uint8
    off: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.off) - 1

    def text(self, i: int) -> bytes:
        return self.buf[self.off[i] : self.off[i + 1]].tobytes()


def pack(texts: Sequence[bytes]) -> Packed:
    """UTF-8 byte strings packed into one buffer."""
    return Packed(_buffer(b"".join(texts)), _offsets(np.fromiter(map(len, texts), np.int64, len(texts))))


@dataclass(frozen=True)
class Normalized:
    """`normalize_many`'s result: the normalised texts packed, each text's length in characters
    and whether it is CJK-heavy (`is_cjk_heavy`)."""

    packed: Packed
    chars: np.ndarray  # (n,) int64
    cjk: np.ndarray  # (n,) bool
    hashes: np.ndarray | None = None  # (n,) uint64 hash of each normalised text, where computed (SignStream)


def normalize_many(texts: Sequence[str], *, threads: int = THREADS, batch_chars: int = 4 << 20) -> Normalized:
    """`normalize(t)` of every text, UTF-8 packed (equal to `normalize(t).encode()`; a test checks
    it on real data in many scripts). Python applies NFKC to the few non-ASCII texts that are not
    already NFKC; a compiled kernel decodes the UTF-8, casefolds (the single-character folds of the
    Basic Multilingual Plane, from a table built from `str.casefold`) and folds non-word
    characters (`str.isalnum` and `_` are word characters, as `re`'s `\\w`) to single spaces.
    Texts the table cannot fold (characters outside the BMP, folds to several characters such as
    ß -> ss) go through `normalize` in Python, batch by batch."""
    _jit()
    parts = _map(threads, lambda lo, hi: _normalize_part(texts[lo:hi]), _batches(texts, batch_chars))
    return _concat_normalized(parts)


def _normalize_part(texts: Sequence[str]) -> Normalized:
    """`normalize_many` of one batch, on the calling thread (the kernel releases the GIL)."""
    return _normalize_prepared(texts, *_prepare(texts))


def _prepare(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The Python half of normalising a batch (it holds the GIL): NFKC where a text needs it, then
    the UTF-8 buffer and each text's length in characters, for `_normalize_prepared`."""
    part = [t if t.isascii() or unicodedata.is_normalized("NFKC", t) else _nfkc(t) for t in texts]
    return _buffer("".join(part).encode("utf-8", "surrogatepass")), np.fromiter(map(len, part), np.int64, len(part))


def _nfkc(text: str) -> str:
    """unicodedata.normalize("NFKC", text), faster for the usual reason a text is not NFKC: a few
    compatibility characters (no-break space, ellipsis, superscripts, fractions, ...). Each BMP
    character that NFKC changes is first replaced by its full decomposition (NFKD): NFKC starts by
    decomposing every character on its own, so this changes nothing in the result, and it often
    leaves a text that is already NFKC. T0 has 1,548 such texts, 6,500 characters long on average:
    unicodedata's NFKC takes 0.29 s, this 0.09 s. The text's distinct non-ASCII characters come from
    numpy (set(text) costs 20 ns a character); then one str.replace per character the table has
    (str.translate would look up every character)."""
    table = _nfkd_table()
    replaced = text
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    for c in np.unique(codes[codes >= 0x80]).tolist():
        if c in table:
            replaced = replaced.replace(chr(c), table[c])
    return replaced if unicodedata.is_normalized("NFKC", replaced) else unicodedata.normalize("NFKC", replaced)


_NFKD: dict[int, str] | None = None


def _nfkd_table() -> dict[int, str]:
    """Each BMP character whose NFKC is not itself -> its NFKD (built on first use, ~15 ms)."""
    global _NFKD
    if _NFKD is None:
        table = {}
        for c in range(0x80, 0x10000):
            ch = chr(c)
            if unicodedata.normalize("NFKC", ch) != ch:
                table[c] = unicodedata.normalize("NFKD", ch)
        _NFKD = table
    return _NFKD


def _normalize_prepared(texts: Sequence[str], buf: np.ndarray, nchars: np.ndarray) -> Normalized:
    """The kernel half: casefold and fold non-word characters (no GIL), and, for the rare texts
    the kernel leaves to Python, `normalize` and a re-pack of this batch."""
    fold, word = _tables()
    out, off, chars, cjk, redo = _normalize_batch(buf, nchars, fold, word)
    if not redo.any():
        end = int(off[-1])
        body = np.zeros(end + _PAD, np.uint8)
        body[:end] = out[:end]
        return Normalized(Packed(body, off), chars, cjk)
    # some texts need Python: splice their results into the kernel's output (work per such text,
    # not per text of the batch: a batch of T0 has about three of them among 1,000)
    lengths = np.diff(off)
    pieces: list[np.ndarray] = []
    done = 0
    for i in np.flatnonzero(redo).tolist():
        t = normalize(texts[i])
        fixed = np.frombuffer(t.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        pieces += [out[off[done] : off[i]], fixed]
        lengths[i], chars[i], cjk[i] = len(fixed), len(t), is_cjk_heavy(t)
        done = i + 1
    pieces += [out[off[done] : off[len(texts)]], np.zeros(_PAD, np.uint8)]
    return Normalized(Packed(np.concatenate(pieces), _offsets(lengths)), chars, cjk)


def _concat_normalized(parts: Sequence[Normalized]) -> Normalized:
    if not parts:
        return Normalized(pack([]), np.empty(0, np.int64), np.empty(0, bool))
    lengths = np.concatenate([np.diff(p.packed.off) for p in parts])
    body = np.concatenate([p.packed.buf[: p.packed.off[-1]] for p in parts] + [np.zeros(_PAD, np.uint8)])
    hashes = [p.hashes for p in parts]
    return Normalized(
        Packed(body, _offsets(lengths)),
        np.concatenate([p.chars for p in parts]),
        np.concatenate([p.cjk for p in parts]),
        np.concatenate(hashes) if all(h is not None for h in hashes) else None,
    )


_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """For each BMP code point: its casefold if that is one character (else 0: the text goes to
    Python), and whether it is a word character (`str.isalnum()` or `_`)."""
    global _TABLES
    if _TABLES is None:
        chars = [chr(c) for c in range(0x10000)]
        folded = [c.casefold() for c in chars]
        fold = np.array([ord(f) if len(f) == 1 else 0 for f in folded], dtype=np.uint32)
        word = np.array([c.isalnum() or c == "_" for c in chars], dtype=np.bool_)
        _TABLES = fold, word
    return _TABLES


def _is_cjk(c: int) -> bool:
    return 0x3040 <= c <= 0x30FF or 0x3400 <= c <= 0x4DBF or 0x4E00 <= c <= 0x9FFF or 0xF900 <= c <= 0xFAFF


def _normalize_batch(
    buf: np.ndarray, nchars: np.ndarray, fold: np.ndarray, word: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kernel of `normalize_many` over texts of nchars[i] characters, UTF-8 in buf one after the
    other. Returns the output buffer, its (n + 1,) offsets, each output's length in characters,
    CJK-heavy flags and the texts left to Python (characters outside the BMP or without a
    one-character fold). Casefolding never more than doubles a UTF-8 length. One long loop nest on
    purpose: numba compiles it as one kernel, with no call or array hand-off per character."""
    n = len(nchars)
    out = np.empty(2 * len(buf) + 8, np.uint8)
    off = np.zeros(n + 1, np.int64)
    chars = np.zeros(n, np.int64)
    cjk = np.zeros(n, np.bool_)
    redo = np.zeros(n, np.bool_)
    p = 0
    q = 0
    for i in range(n):
        start = q
        pending = False  # a separator is owed before the next word character
        count = 0
        kanji = 0
        letters = 0
        bad = False
        for _ in range(nchars[i]):
            b0 = np.int64(buf[p])
            if b0 < 0x80:
                p += 1
                c = b0
                if 0x41 <= c <= 0x5A:
                    c += 32
                is_word = (0x61 <= c <= 0x7A) or (0x30 <= c <= 0x39) or c == 0x5F
                if not is_word:
                    pending = q > start
                    continue
                if pending:
                    out[q] = 0x20
                    q += 1
                    count += 1
                    pending = False
                out[q] = c
                q += 1
                count += 1
                letters += 1
                continue
            if b0 < 0xE0:
                c = ((b0 & 0x1F) << 6) | (np.int64(buf[p + 1]) & 0x3F)
                p += 2
            elif b0 < 0xF0:
                c = ((b0 & 0x0F) << 12) | ((np.int64(buf[p + 1]) & 0x3F) << 6) | (np.int64(buf[p + 2]) & 0x3F)
                p += 3
            else:  # outside the BMP: Python
                p += 4
                bad = True
                continue
            f = np.int64(fold[c])
            if f == 0:
                bad = True
                continue
            if not word[f]:
                pending = q > start
                continue
            if pending:
                out[q] = 0x20
                q += 1
                count += 1
                pending = False
            if f < 0x80:
                out[q] = f
                q += 1
            elif f < 0x800:
                out[q] = 0xC0 | (f >> 6)
                out[q + 1] = 0x80 | (f & 0x3F)
                q += 2
            else:
                out[q] = 0xE0 | (f >> 12)
                out[q + 1] = 0x80 | ((f >> 6) & 0x3F)
                out[q + 2] = 0x80 | (f & 0x3F)
                q += 3
            count += 1
            letters += 1
            kanji += _is_cjk(f)
        off[i + 1] = q
        chars[i] = count
        cjk[i] = kanji > CJK_SHARE * letters
        redo[i] = bad
    return out, off, chars, cjk, redo


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
    return [joiner.join(units[i : i + spec.size]).encode("utf-8") for i in range(len(units) - spec.size + 1)]


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
        return np.unique(self.fingerprints[self.offsets[i] : self.offsets[i + 1]])

    def take(self, rows: np.ndarray) -> Signatures:
        """The signatures of texts `rows` (ascending), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and not (np.diff(rows) > 0).all():
            raise ValueError("Signatures.take: rows must be ascending and distinct")
        keep = np.zeros(len(self.hashvalues), dtype=bool)
        keep[rows] = True
        counts = np.diff(self.offsets)
        return Signatures(
            hashvalues=self.hashvalues[rows],
            fingerprints=self.fingerprints[np.repeat(keep, counts)],
            offsets=_offsets(counts[rows]),
            char_shingled=self.char_shingled[rows],
            num_perm=self.num_perm,
            seed=self.seed,
        )


def minhash_signatures(
    normalized: Sequence[str],
    spec: ShingleSpec = ShingleSpec("words", 5),
    *,
    num_perm: int = 128,
    seed: int = 1,
    threads: int = THREADS,
    batch_bytes: int = 1 << 20,
) -> Signatures:
    """Signatures of normalised texts (see `normalize`), computed by compiled kernels (numba) in
    batches of about `batch_bytes` characters on `threads` threads (the kernels release the GIL).
    Empty texts get the empty signature (all 0xFFFFFFFF, as datasketch) and an empty set.

    The first call in a process loads the kernels: the ahead-of-time module (sftdata/aot.py) where
    it is built, else numba's on-disk cache; with neither (after installing or editing this file)
    numba compiles them (seconds, once)."""
    packed = pack([t.encode("utf-8") for t in normalized])
    cjk = np.array([spec.kind == "words" and is_cjk_heavy(t) for t in normalized], dtype=bool)
    return sign_packed(packed, cjk, spec, num_perm=num_perm, seed=seed, threads=threads, batch_bytes=batch_bytes)


def sign_packed(
    packed: Packed,
    cjk: np.ndarray,
    spec: ShingleSpec = ShingleSpec("words", 5),
    *,
    num_perm: int = 128,
    seed: int = 1,
    threads: int = THREADS,
    batch_bytes: int = 1 << 20,
) -> Signatures:
    """`minhash_signatures` of texts already normalised and packed (`normalize_many`); `cjk[i]`:
    text i is CJK-heavy, so a `words` spec shingles it as chars:3."""
    _jit()
    a, b = permutations(num_perm, seed)
    n = len(packed)
    is_chars, size = _shingling(cjk, spec)
    bounds = _byte_batches(packed.off, batch_bytes)

    def sign(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _sign_batch(packed.buf, packed.off[lo : hi + 1], is_chars[lo:hi], size[lo:hi], a, b)

    parts = _map(threads, sign, bounds)
    counts = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int64)
    return Signatures(
        hashvalues=np.concatenate([p[0] for p in parts]) if parts else np.empty((0, num_perm), np.uint32),
        fingerprints=np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.uint64),
        offsets=_offsets(counts),
        char_shingled=is_chars[:n].copy(),
        num_perm=num_perm,
        seed=seed,
    )


def _shingling(cjk: np.ndarray, spec: ShingleSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per text: whether it is shingled by characters, and the shingle size in units."""
    switch = np.asarray(cjk, dtype=bool) & (spec.kind == "words")
    return switch | (spec.kind == "chars"), np.where(switch, CJK_CHARS, spec.size).astype(np.int64)


class SignStream:
    """`normalize_many` and `sign_packed` of texts handed over one at a time (`add`), so the
    kernels run on worker threads while the caller produces the next texts (`sftdata dedup` reads
    and parses its input meanwhile: on T0 that hides most of the normalising and signing behind the
    reading). Every text is signed, empty and repeated ones too. `result()` returns what
    normalize_many of all the texts and sign_packed of those return (a test checks it), and how
    many seconds the workers spent in each. A context manager: leaving it stops the workers.

    With `threads` = t, t - 1 workers take batches of about `batch_chars` characters as they fill
    up; `result()` has the calling thread take the batches no worker has started, from the last
    one back, so at the end all t threads sign. With t = 1 each batch is done at once by `add`."""

    def __init__(
        self,
        spec: ShingleSpec = ShingleSpec("words", 5),
        *,
        num_perm: int = 128,
        seed: int = 1,
        threads: int = THREADS,
        batch_chars: int = 1 << 20,
    ) -> None:
        self._spec, self._num_perm, self._seed = spec, num_perm, seed
        self._perm = permutations(num_perm, seed)
        self._batch_chars = batch_chars
        self._pool = (
            ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="sftdata-sign") if threads > 1 else None
        )
        self._pending: list[str] = []
        self._chars = 0
        # per batch: (a slot holding _work's arguments until a worker or `result` takes them, so
        # the UTF-8 copy of a signed batch is freed at once; its Future, or its result)
        self._batches: list[tuple[list[tuple[Any, ...]], Any]] = []
        self._done = False  # result() was called
        # A worker gives up the GIL at every kernel call and waits for it back up to the switch
        # interval (5 ms) while the caller parses: 1 ms while the stream is open (T0: 0.3 s sooner).
        self._switch: tuple[float, float] | None = None  # (the interval before, the one set)
        if self._pool is not None:
            before = sys.getswitchinterval()
            sys.setswitchinterval(min(before, 0.001))
            self._switch = (before, sys.getswitchinterval())

    def __enter__(self) -> SignStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (batches not started are dropped) and put the switch interval back,
        unless someone changed it since. Idempotent."""
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if self._switch is not None:
                before, mine = self._switch
                self._switch = None
                if sys.getswitchinterval() == mine:
                    sys.setswitchinterval(before)

    def add(self, text: str) -> None:
        if self._done:
            raise RuntimeError("SignStream.add() after result()")
        self._pending.append(text)
        self._chars += len(text)
        if self._chars >= self._batch_chars:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        texts, self._pending, self._chars = self._pending, [], 0
        args = (texts, *_prepare(texts))  # the Python half here: a worker holding the GIL would stall the caller
        if self._pool is None:
            self._batches.append(([], self._work(*args)))
        else:
            slot = [args]
            self._batches.append((slot, self._pool.submit(self._take, slot)))

    def _take(self, slot: list[tuple[Any, ...]]) -> tuple[Normalized, tuple[np.ndarray, ...], tuple[float, float]]:
        return self._work(*slot.pop())

    def _work(
        self, texts: list[str], buf: np.ndarray, nchars: np.ndarray
    ) -> tuple[Normalized, tuple[np.ndarray, ...], tuple[float, float]]:
        _jit()
        t0 = time.perf_counter()
        norm = _normalize_prepared(texts, buf, nchars)
        norm = Normalized(norm.packed, norm.chars, norm.cjk, _hash_texts(norm.packed.buf, norm.packed.off))
        t1 = time.perf_counter()
        is_chars, size = _shingling(norm.cjk, self._spec)
        signed = _sign_batch(norm.packed.buf, norm.packed.off, is_chars, size, *self._perm)
        return norm, (*signed, is_chars), (t1 - t0, time.perf_counter() - t1)

    def result(self) -> tuple[Normalized, Signatures, dict[str, float]]:
        """Waits for every batch (taking part in the work); (normalised texts, their signatures,
        worker seconds {"normalize": ..., "signatures": ...}). Once: the stream keeps nothing of
        it (on T0 that is 170 MB the caller frees as soon as it has what it needs)."""
        signed = self.parts()
        return signed.normalized(), signed.signatures(), signed.seconds

    def parts(self) -> SignedParts:
        """What `result` returns, still in the batches the workers made (`SignedParts`): a caller
        that keeps only some texts' signatures (dedup keeps one per distinct text) copies them
        once instead of concatenating everything first. Once, like `result`."""
        if self._done:
            raise RuntimeError("SignStream.result() was already called")
        self._done = True
        self._flush()
        parts: list[Any] = [done if self._pool is None else None for _, done in self._batches]
        for k in range(len(self._batches) - 1, -1, -1):  # the batches no worker started, from the back
            slot, future = self._batches[k]
            if parts[k] is None and future.cancel():  # no worker took it: its arguments are still there
                parts[k] = self._take(slot)
        parts = [p if p is not None else future.result() for p, (_, future) in zip(parts, self._batches)]
        self._batches = []
        return SignedParts(parts, self._num_perm, self._seed)


class SignedParts:
    """A `SignStream`'s batches as the workers made them: per batch (Normalized, (hashvalues,
    fingerprints, counts, char_shingled), (seconds normalising, seconds signing)). The small
    per-text arrays are joined at once; the big ones (normalised texts, fingerprints) only on
    request, and only for the rows asked for."""

    def __init__(self, parts: list[Any], num_perm: int, seed: int) -> None:
        self._parts = parts
        self._num_perm, self._seed = num_perm, seed
        sizes = [len(p[0].chars) for p in parts]
        self.start = _offsets(np.array(sizes, dtype=np.int64))  # first text of each batch, and n
        self.chars = np.concatenate([p[0].chars for p in parts]) if parts else np.empty(0, np.int64)
        self.cjk = np.concatenate([p[0].cjk for p in parts]) if parts else np.empty(0, bool)
        hashes = [p[0].hashes for p in parts]
        self.hashes = np.concatenate(hashes) if parts and all(h is not None for h in hashes) else None
        self.lengths = (  # bytes of each normalised text
            np.concatenate([np.diff(p[0].packed.off) for p in parts]) if parts else np.empty(0, np.int64)
        )
        self.seconds = {"normalize": sum(p[2][0] for p in parts), "signatures": sum(p[2][1] for p in parts)}

    def __len__(self) -> int:
        return int(self.start[-1])

    def text(self, i: int) -> np.ndarray:
        """Text i's normalised UTF-8 bytes (a view)."""
        k = int(np.searchsorted(self.start, i, side="right")) - 1
        packed = self._parts[k][0].packed
        j = i - int(self.start[k])
        return packed.buf[packed.off[j] : packed.off[j + 1]]

    def normalized(self) -> Normalized:
        """All the normalised texts as `normalize_many` returns them."""
        return _concat_normalized([p[0] for p in self._parts])

    def signatures(self, rows: np.ndarray | None = None) -> Signatures:
        """The signatures of texts `rows` (ascending and distinct; default all), in that order:
        `Signatures.take` of the whole, each fingerprint copied once."""
        parts = self._parts
        if rows is None:
            pick = [None] * len(parts)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) > 1 and not (np.diff(rows) > 0).all():
                raise ValueError("SignedParts.signatures: rows must be ascending and distinct")
            cut = np.searchsorted(rows, self.start)
            pick = [rows[cut[k] : cut[k + 1]] - self.start[k] for k in range(len(parts))]
        hv, fps, counts, chars = [], [], [], []
        for (_, (h, f, c, ch), _), local in zip(parts, pick):
            if local is not None:
                keep = np.zeros(len(c), dtype=bool)
                keep[local] = True
                h, f, c, ch = h[local], f[np.repeat(keep, c)], c[local], ch[local]
            hv.append(h)
            fps.append(f)
            counts.append(c)
            chars.append(ch)
        if not parts:
            return Signatures(
                np.empty((0, self._num_perm), np.uint32),
                np.empty(0, np.uint64),
                np.zeros(1, np.int64),
                np.empty(0, bool),
                self._num_perm,
                self._seed,
            )
        return Signatures(
            hashvalues=np.concatenate(hv),
            fingerprints=np.concatenate(fps),
            offsets=_offsets(np.concatenate(counts)),
            char_shingled=np.concatenate(chars),
            num_perm=self._num_perm,
            seed=self._seed,
        )


def _byte_batches(off: np.ndarray, batch_bytes: int) -> list[tuple[int, int]]:
    """(lo, hi) ranges of the texts with offsets `off`, each about batch_bytes long in all."""
    n = len(off) - 1
    if n <= 0:
        return []
    cuts = np.searchsorted(off, np.arange(batch_bytes, int(off[-1]), batch_bytes), side="right")
    edges = np.unique(np.concatenate([[0], np.clip(cuts, 1, n), [n]]))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


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


def _buffer(data: bytes) -> np.ndarray:
    buf = np.zeros(len(data) + _PAD, dtype=np.uint8)
    buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return buf


def _offsets(lengths: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


def _sha1_prefixes(messages: Sequence[bytes], *, ni: bool = False) -> np.ndarray:
    """The first 8 SHA-1 digest bytes (big-endian uint64) of each message, computed by the portable
    kernel that signs shingles, or with `ni` by the SHA-NI one (both equal to
    `hashlib.sha1(m).digest()[:8]`; the tests check it)."""
    _jit_numba()
    off = _offsets(np.array([len(m) for m in messages], dtype=np.int64))
    kernel = _sha1_batch_ni if ni else _sha1_batch
    return kernel(_buffer(b"".join(messages)), off[:-1].copy(), np.diff(off))


# ---------------------------------------------------------------------------------------------
# 2b. The compiled kernels (numba)
#
# Plain Python functions until `_jit` puts compiled versions in their place in this module: the entry
# points (`_AOT_EXPORTS`) from the ahead-of-time module (sftdata/aot.py) where it is built, else
# everything from numba (`_jit_numba`: compiled, or loaded from numba's cache). So `import
# sftdata.dedup` does not import numba, and with the ahead-of-time module nothing does.
# A batch is one uint8 buffer of UTF-8 texts with int64 offsets; `_sign_batch` does the whole batch
# in one call that releases the GIL:
#   1. shingles: byte ranges of the buffer. A word unit starts at a text start or after a space
#      (b" ", as `str.split(" ")`), a character unit at every byte that is not a UTF-8 continuation
#      byte; shingle j of a text spans units j .. j+N-1 (the whole text if it has fewer than N).
#   2. SHA-1 of every shingle, _LANES messages at a time with the same number of 64-byte blocks:
#      every step of the 80 rounds is a loop over the lanes, which LLVM turns into SIMD. Where the
#      CPU has SHA instructions, `_sign_batch_ni` takes `_sign_batch`'s place and hashes two
#      messages at a time with them (section 2c: 2.6x faster on T0).
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
    return (
        (np.uint64(buf[q]) << np.uint64(24))
        | (np.uint64(buf[q + np.uint64(1)]) << np.uint64(16))
        | (np.uint64(buf[q + np.uint64(2)]) << np.uint64(8))
        | np.uint64(buf[q + np.uint64(3)])
    )


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


def _sha1_lanes(
    buf: np.ndarray, start: np.ndarray, length: np.ndarray, nblocks: int, v: np.ndarray, h: np.ndarray
) -> None:
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
                v[w + lane] = _rotl(
                    np.uint64(
                        v[w - 3 * _LANES + lane]
                        ^ v[w - 8 * _LANES + lane]
                        ^ v[w - 14 * _LANES + lane]
                        ^ v[w - 16 * _LANES + lane]
                    ),
                    1,
                )
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


def _block_order(length: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The messages of each padded block count together (a counting sort): messages order[first[nb]
    : first[nb + 1]] have nb 64-byte blocks, 1 <= nb <= top."""
    m = len(length)
    top = 0
    for i in range(m):
        top = max(top, (length[i] + 8) // 64 + 1)
    first = np.zeros(top + 3, np.int64)  # counted at nb + 2, summed, then filled at nb + 1
    for i in range(m):
        first[(length[i] + 8) // 64 + 3] += 1
    for q in range(top + 2):
        first[q + 1] += first[q]
    order = np.empty(m, np.int64)
    for i in range(m):
        nb = (length[i] + 8) // 64 + 1
        order[first[nb + 1]] = i
        first[nb + 1] += 1
    return first, order, top


def _sha1_batch(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """First 8 SHA-1 digest bytes (big-endian) of each message buf[start[i]:start[i] + length[i]]:
    the portable kernel. Messages are grouped by block count and hashed _LANES at a time; a group's
    spare lanes repeat its last message. buf needs _PAD readable bytes after every message."""
    m = len(start)
    first, order, top = _block_order(length)
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


def _sha1_batch_ni(buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """`_sha1_batch` with the CPU's SHA instructions (`_sha1ni`, section 2c; compiled only where
    `_use_sha_ni()`): messages of the same block count go _NI_WAYS at a time."""
    m = len(start)
    first, order, top = _block_order(length)
    out = np.empty(m, np.uint64)
    st = np.empty(_NI_WAYS, np.int64)
    ln = np.empty(_NI_WAYS, np.int64)
    got = np.empty(_NI_WAYS, np.uint64)
    for nb in range(1, top + 1):
        lo, hi = first[nb], first[nb + 1]
        for g in range(lo, hi, _NI_WAYS):
            for lane in range(_NI_WAYS):
                i = order[min(g + lane, hi - 1)]
                st[lane] = start[i]
                ln[lane] = length[i]
            _sha1ni(buf, st, ln, nb, got)
            for lane in range(min(_NI_WAYS, hi - g)):
                out[order[g + lane]] = got[lane]
    return out


def _bytes_hash(buf: np.ndarray, s: int, n: int) -> Any:
    """A fast 64-bit hash of buf[s:s+n], 8 bytes at a time (multiply-xorshift)."""
    h = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(n)
    p = np.uint64(s)
    e = np.uint64(s + n)
    while p + np.uint64(8) <= e:
        w = np.uint64(0)
        for i in range(8):
            w |= np.uint64(buf[p + np.uint64(i)]) << np.uint64(8 * i)
        h = (h ^ w) * np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(32)
        p += np.uint64(8)
    w = np.uint64(0)
    shift = np.uint64(0)
    while p < e:
        w |= np.uint64(buf[p]) << shift
        shift += np.uint64(8)
        p += np.uint64(1)
    h = (h ^ w) * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(29))


def _hash_texts(buf: np.ndarray, off: np.ndarray) -> np.ndarray:
    """`_bytes_hash` of each text buf[off[i]:off[i + 1]]: dedup finds exact duplicates by it
    (equal hashes are confirmed byte for byte there)."""
    n = len(off) - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        out[i] = _bytes_hash(buf, off[i], off[i + 1] - off[i])
    return out


def _fmix32(x: Any) -> Any:
    """datasketch's hash of a shingle from the first digest word x (big-endian): the 4 bytes read
    little-endian (`sha1_hash32`), then the MurmurHash3 finalizer (`_fmix(hv, 32)`)."""
    x = (
        ((x & np.uint64(0xFF)) << np.uint64(24))
        | ((x & np.uint64(0xFF00)) << np.uint64(8))
        | ((x >> np.uint64(8)) & np.uint64(0xFF00))
        | (x >> np.uint64(24))
    )
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return np.uint32(x)


def _shingle_ranges(
    buf: np.ndarray, off: np.ndarray, is_chars: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Text i is buf[off[i]:off[i + 1]], shingled by characters if is_chars[i] else by words, size[i]
    units a shingle. Returns every shingle's byte range (start, length; text by text, in order),
    the number of shingles of each text and where each text's shingles start (n + 1 offsets)."""
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
    return start, length, counts, first


def _permute(fps: np.ndarray, counts: np.ndarray, first: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The (n, num_perm) uint32 signatures: per text i, the minimum per permutation over its
    shingles' fingerprints fps[first[i]:first[i + 1]]."""
    n = len(counts)
    num_perm = len(a)
    hashvalues = np.full((n, num_perm), 0xFFFFFFFF, np.uint32)
    mins = np.empty(num_perm, np.uint32)
    for i in range(n):  # four shingles at a time
        if counts[i] == 0:
            continue
        mins[:] = 0xFFFFFFFF
        k, end = first[i], first[i + 1]
        while k + 4 <= end:
            h0, h1 = _fmix32(fps[k] >> np.uint64(32)), _fmix32(fps[k + 1] >> np.uint64(32))
            h2, h3 = _fmix32(fps[k + 2] >> np.uint64(32)), _fmix32(fps[k + 3] >> np.uint64(32))
            for p in range(num_perm):
                ap, bp = a[p], b[p]
                low = min(
                    min(np.uint32(ap * h0 + bp), np.uint32(ap * h1 + bp)),
                    min(np.uint32(ap * h2 + bp), np.uint32(ap * h3 + bp)),
                )
                mins[p] = min(mins[p], low)
            k += 4
        while k < end:
            h0 = _fmix32(fps[k] >> np.uint64(32))
            for p in range(num_perm):
                mins[p] = min(mins[p], np.uint32(a[p] * h0 + b[p]))
            k += 1
        hashvalues[i] = mins
    return hashvalues


def _sign_batch(
    buf: np.ndarray, off: np.ndarray, is_chars: np.ndarray, size: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signs the texts buf[off[i]:off[i + 1]] (shingled as `_shingle_ranges` says): returns the
    (n, num_perm) uint32 signatures, every shingle's fingerprint (text by text, in order) and the
    number of shingles of each text. One compiled call per batch, without the GIL."""
    start, length, counts, first = _shingle_ranges(buf, off, is_chars, size)
    fps = _sha1_batch(buf, start, length)
    return _permute(fps, counts, first, a, b), fps, counts


def _sign_batch_ni(
    buf: np.ndarray, off: np.ndarray, is_chars: np.ndarray, size: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_sign_batch` hashing with the CPU's SHA instructions; `_jit` puts it in `_sign_batch`'s
    place where `_use_sha_ni()`."""
    start, length, counts, first = _shingle_ranges(buf, off, is_chars, size)
    fps = _sha1_batch_ni(buf, start, length)
    return _permute(fps, counts, first, a, b), fps, counts


# ---------------------------------------------------------------------------------------------
# 2c. SHA-1 on the CPU's SHA instructions (SHA-NI)
#
# On CPUs with the x86 SHA extensions (AMD Zen and later, Intel Goldmont, Ice Lake and later)
# sha1rnds4 does four rounds in one instruction. numba cannot emit it, so `_ir_sha1ni` writes the
# LLVM IR and `_sha1ni_intrinsic` hands it to numba as an intrinsic. It lives in this file so that
# numba's cache, which checks this file's time stamp, is rebuilt whenever it changes. On T0's
# 9.9M shingles (one 64-byte block each): 0.54 s against the SIMD kernel's 1.42 s on an AMD EPYC
# (znver1). llvmlite and numba are imported inside the functions, as everywhere in this module.
# ---------------------------------------------------------------------------------------------

_NI_WAYS = 2  # messages hashed together: two independent round chains hide sha1rnds4's latency
_NI_FEATURES = ("sha", "ssse3", "sse4.1")


def _use_sha_ni() -> bool:
    """Whether `_sign_batch` hashes with the CPU's SHA instructions (SHA-NI): an x86-64 CPU with
    the SHA, SSSE3 and SSE4.1 extensions, numba compiling for the host CPU (not NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES, which build for other machines) and compiling at all (not
    NUMBA_DISABLE_JIT), and SFTDATA_SHA_NI not set to 0 (the portable kernel then)."""
    if os.environ.get("SFTDATA_SHA_NI", "1").strip() == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    from numba.core import config

    if config.CPU_NAME or config.CPU_FEATURES or config.DISABLE_JIT:
        return False
    try:
        import llvmlite.binding as llb

        features = llb.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - no feature list on this host: use the portable kernel
        return False
    return all(features.get(f, False) for f in _NI_FEATURES)


def _ir_sha1ni(module: Any) -> Any:
    """Defines (once per LLVM module) `void sftdata_sha1ni(i8* buf, i64* start, i64* length, i64
    nblocks, i64* out)`: SHA-1 of the _NI_WAYS messages buf[start[j]:start[j] + length[j]], each
    `nblocks` 64-byte blocks once padded; out[j] = the first 8 digest bytes, big-endian. Reads whole
    blocks: buf needs 72 readable bytes after every message. The padded blocks are built in
    registers from the loaded bytes: message bytes below the remaining length, 0x80 at it, zeros
    after, the bit length in the last block."""
    from llvmlite import ir
    from numba.core import cgutils

    name = "sftdata_sha1ni"
    try:
        return module.get_global(name)
    except KeyError:
        pass
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v16, v4 = ir.VectorType(i8, 16), ir.VectorType(i32, 4)

    def declare(fname: str, ret: Any, args: list[Any]) -> Any:
        try:
            return module.get_global(fname)
        except KeyError:
            return ir.Function(module, ir.FunctionType(ret, args), name=fname)

    def splat(b: Any, x: Any) -> Any:
        v = b.insert_element(ir.Constant(v16, None), x, ir.Constant(i32, 0))
        return b.shuffle_vector(v, ir.Constant(v16, None), ir.Constant(ir.VectorType(i32, 16), [0] * 16))

    i64p = i64.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i8.as_pointer(), i64p, i64p, i64, i64p]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    buf, starts, lens, nblocks, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rnds4 = declare("llvm.x86.sha1rnds4", v4, [v4, v4, i8])
    nexte = declare("llvm.x86.sha1nexte", v4, [v4, v4])
    msg1 = declare("llvm.x86.sha1msg1", v4, [v4, v4])
    msg2 = declare("llvm.x86.sha1msg2", v4, [v4, v4])
    c64 = ir.Constant(i64, 64)
    # state as the instructions want it: A B C D in lanes 3..0, E in lane 3 of its own vector
    start = [b.load(b.gep(starts, [ir.Constant(i64, j)])) for j in range(_NI_WAYS)]
    length = [b.load(b.gep(lens, [ir.Constant(i64, j)])) for j in range(_NI_WAYS)]
    abcd_at = [b.alloca(v4) for _ in range(_NI_WAYS)]
    e_at = [b.alloca(v4) for _ in range(_NI_WAYS)]
    for j in range(_NI_WAYS):
        b.store(ir.Constant(v4, [0x10325476, 0x98BADCFE, 0xEFCDAB89, 0x67452301]), abcd_at[j])
        b.store(ir.Constant(v4, [0, 0, 0, 0xC3D2E1F0]), e_at[j])
    reverse = ir.Constant(ir.VectorType(i32, 16), list(range(15, -1, -1)))  # 16 bytes -> 4 big-endian words
    with cgutils.for_range(b, nblocks) as loop:
        base = b.mul(loop.index, c64)
        last = b.icmp_unsigned("==", loop.index, b.sub(nblocks, ir.Constant(i64, 1)))
        words: list[list[Any]] = []
        for j in range(_NI_WAYS):
            left = b.sub(length[j], base)  # message bytes from this block on: clamped to -1 .. 64
            left = b.select(b.icmp_signed("<", left, ir.Constant(i64, -1)), ir.Constant(i64, -1), left)
            left = b.select(b.icmp_signed(">", left, c64), c64, left)
            left = splat(b, b.trunc(left, i8))
            at = b.gep(buf, [b.add(start[j], base)])
            w = []
            for c in range(4):
                data = b.load(b.bitcast(b.gep(at, [ir.Constant(i64, 16 * c)]), v16.as_pointer()), align=1)
                index = ir.Constant(v16, [16 * c + i for i in range(16)])
                pad = b.select(
                    b.icmp_signed("==", index, left), ir.Constant(v16, [0x80] * 16), ir.Constant(v16, [0] * 16)
                )
                data = b.select(b.icmp_signed("<", index, left), data, pad)
                word = b.bitcast(b.shuffle_vector(data, ir.Constant(v16, None), reverse), v4)
                if c == 3:  # words 14 and 15 (lanes 1 and 0) of the last block: the length in bits
                    bits = b.mul(length[j], ir.Constant(i64, 8))
                    tail = b.insert_element(word, b.trunc(bits, i32), ir.Constant(i32, 0))
                    tail = b.insert_element(tail, b.trunc(b.lshr(bits, ir.Constant(i64, 32)), i32), ir.Constant(i32, 1))
                    word = b.select(last, tail, word)
                w.append(word)
            words.append(w)
        # 80 rounds, four per sha1rnds4; the _NI_WAYS messages interleaved step by step
        abcd = [b.load(abcd_at[j]) for j in range(_NI_WAYS)]
        e0 = [b.load(e_at[j]) for j in range(_NI_WAYS)]
        prev = list(abcd)
        for j in range(_NI_WAYS):
            abcd[j] = b.call(rnds4, [abcd[j], b.add(e0[j], words[j][0]), ir.Constant(i8, 0)])
        for g in range(1, 20):
            for j in range(_NI_WAYS):
                w = words[j]
                if g >= 4:  # schedule words 4g .. 4g+3 from the 16 before them
                    w.append(b.call(msg2, [b.xor(b.call(msg1, [w[g - 4], w[g - 3]]), w[g - 2]), w[g - 1]]))
                e = b.call(nexte, [prev[j], w[g]])
                prev[j] = abcd[j]
                abcd[j] = b.call(rnds4, [abcd[j], e, ir.Constant(i8, g // 5)])
        for j in range(_NI_WAYS):
            b.store(b.call(nexte, [prev[j], e0[j]]), e_at[j])
            b.store(b.add(abcd[j], b.load(abcd_at[j])), abcd_at[j])
    for j in range(_NI_WAYS):
        v = b.load(abcd_at[j])
        h0 = b.zext(b.extract_element(v, ir.Constant(i32, 3)), i64)
        h1 = b.zext(b.extract_element(v, ir.Constant(i32, 2)), i64)
        b.store(b.or_(b.shl(h0, ir.Constant(i64, 32)), h1), b.gep(out, [ir.Constant(i64, j)]))
    b.ret_void()
    return fn


def _sha1ni_intrinsic() -> Any:
    """The numba intrinsic `_sha1ni(buf, start, length, nblocks, out)`: a C-contiguous uint8
    buffer, int64 arrays start/length of _NI_WAYS messages, all of `nblocks` padded blocks (int64),
    and a uint64 array `out` for the digests. Any other argument types fail to compile (the IR
    reads the arrays' data pointers as contiguous)."""
    from numba import types
    from numba.extending import intrinsic

    def typer(typingctx: Any, buf: Any, start: Any, length: Any, nblocks: Any, out: Any) -> Any:
        def contiguous(t: Any, dtype: Any) -> bool:
            return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == dtype

        if not (
            contiguous(buf, types.uint8)
            and contiguous(start, types.int64)
            and contiguous(length, types.int64)
            and contiguous(out, types.uint64)
            and nblocks == types.int64
        ):
            return None
        sig = types.void(buf, start, length, nblocks, out)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            fn = _ir_sha1ni(builder.module)
            ptrs = [
                context.make_array(t)(context, builder, v).data if isinstance(t, types.Array) else v
                for t, v in zip(sig.args, args)
            ]
            builder.call(fn, ptrs)
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = "_sha1ni"
    return intrinsic(typer)


def _sha1ni(buf: np.ndarray, start: np.ndarray, length: np.ndarray, nblocks: int, out: np.ndarray) -> None:
    """Replaced by `_sha1ni_intrinsic()` in `_jit` (where `_use_sha_ni()`); never called as Python."""
    raise RuntimeError("the SHA-NI kernel runs only compiled")


_JIT_LOCK = threading.Lock()
_jitted = False  # the entry points are compiled (ahead of time or by numba)
_numba_bound = False  # everything is compiled by numba (`_jit_numba`)

# The compiled entry points and their signatures: `_jit` binds them from the ahead-of-time module
# (sftdata/aot.py) where it is built, else compiles them with numba; `aot.build` compiles these.
_AOT_EXPORTS = {
    "_sign_batch": "Tuple((uint32[:, ::1], uint64[::1], int64[::1]))(uint8[::1], int64[::1], "
    "boolean[::1], int64[::1], uint32[::1], uint32[::1])",
    "_normalize_batch": "Tuple((uint8[::1], int64[::1], int64[::1], boolean[::1], boolean[::1]))"
    "(uint8[::1], int64[::1], uint32[::1], boolean[::1])",
    "_hash_texts": "uint64[::1](uint8[::1], int64[::1])",
}


def import_numba() -> Any:
    """`import numba`, with its error-message colouring off. Numba colours the messages it formats
    while compiling through colorama's `init()`/`deinit()`, which replace `sys.stdout` and
    `sys.stderr` and then restore the streams of the moment colorama was imported: in a program
    (or a test) that redirected them since, output silently goes to the wrong place, from whatever
    thread compiles. The switch is read once, when numba is first imported."""
    os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
    try:
        import numba
    except ImportError as e:  # a dependency of sftlab; no slow fallback
        raise ImportError("sftdata dedup computes MinHash signatures with numba: pip install 'numba>=0.60'") from e
    return numba


def compiled_by() -> str:
    """Who compiled the signing kernels this process runs: "aot" (the module `python -m
    sftdata.aot` built), "numba" (its JIT), or "" (not compiled yet)."""
    return "numba" if _numba_bound else "aot" if _jitted else ""


def _jit() -> None:
    """Put the compiled entry points (`_AOT_EXPORTS`) in place of the Python functions: from the
    ahead-of-time module where it is built for this machine (no numba import), else numba's
    (`_jit_numba`). Idempotent, thread-safe."""
    global _jitted
    with _JIT_LOCK:
        if _jitted:
            return
        from sftdata import aot

        if aot.bind(globals(), "minhash", _AOT_EXPORTS):
            _jitted = True
            return
    _jit_numba()


def _jit_numba() -> None:
    """Compile every kernel with numba (or load it from numba's cache: `__pycache__` next to this
    file, or NUMBA_CACHE_DIR) and put it in place of its Python function, the entry points too
    (those last, once compiled: a thread running the ahead-of-time ones meanwhile keeps them).
    Idempotent, thread-safe."""
    global _jitted, _numba_bound
    with _JIT_LOCK:
        if _numba_bound:
            return
        numba = import_numba()
        g = globals()
        for name in ("_rotl", "_load_be", "_round", "_fmix32", "_is_cjk"):
            g[name] = numba.njit(inline="always")(_PY[name])
        for name in ("_block_order", "_shingle_ranges", "_permute"):  # compiled into their callers
            g[name] = numba.njit(nogil=True)(_PY[name])
        g["_sha1_lanes"] = numba.njit(nogil=True, cache=True)(_PY["_sha1_lanes"])
        g["_sha1_batch"] = numba.njit(nogil=True, cache=True)(_PY["_sha1_batch"])  # lazy: tests, `_sha1_prefixes`
        g["_bytes_hash"] = numba.njit(inline="always")(_PY["_bytes_hash"])
        sign = _PY["_sign_batch"]
        if _use_sha_ni():
            g["_sha1ni"] = _sha1ni_intrinsic()
            g["_sha1_batch_ni"] = numba.njit(nogil=True, cache=True)(_PY["_sha1_batch_ni"])
            sign = _PY["_sign_batch_ni"]
        entry = {  # compiled (or loaded) now, before any worker needs them
            "_hash_texts": _PY["_hash_texts"],
            "_sign_batch": sign,
            "_normalize_batch": _PY["_normalize_batch"],
        }
        compiled = {name: numba.njit(_AOT_EXPORTS[name], nogil=True, cache=True)(fn) for name, fn in entry.items()}
        g.update(compiled)
        _numba_bound = _jitted = True


# the functions `_jit_numba` compiles, as Python (the entry points may be rebound ahead of time first)
_PY = {
    name: globals()[name]
    for name in (
        "_rotl",
        "_load_be",
        "_round",
        "_fmix32",
        "_is_cjk",
        "_block_order",
        "_shingle_ranges",
        "_permute",
        "_sha1_lanes",
        "_sha1_batch",
        "_bytes_hash",
        "_hash_texts",
        "_sha1_batch_ni",
        "_sign_batch",
        "_sign_batch_ni",
        "_normalize_batch",
    )
}
