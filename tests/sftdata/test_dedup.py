"""sftdata.dedup and `sftdata dedup`: datasketch-identical signatures, LSH recall, planted exact /
near / contaminated pairs in real data, CJK shingles, Redis shared index, CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sftdata import dedup, minhash
from sftdata.cli import dedup as cmd_dedup
from sftdata.dedup import DedupConfig
from sftdata.minhash import ShingleSpec, minhash_signatures, normalize, shingles
from sftdata.records import Conversation, Message, Source

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SFTLAB_SHARED_DATA") or REPO.parent / "shared" / "data")  # a worktree elsewhere: set it
ALPACA_EN = SHARED / "llamafactory" / "alpaca_en_demo.json"
ALPACA_ZH = SHARED / "llamafactory" / "alpaca_zh_demo.json"
T0 = SHARED / "self_instruct" / "t0_train_50k_per_template.jsonl.gz"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
WORDS5 = ShingleSpec("words", 5)


def conv(i: int, user: str, assistant: str, file: str = "t.jsonl") -> Conversation:
    return Conversation(f"t/{i}", (Message("user", user), Message("assistant", assistant)), Source(file, i))


def alpaca_rows(path: Path = ALPACA_EN) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def as_messages(row: dict) -> dict:
    user = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def true_jaccard(a: str, b: str, spec: ShingleSpec = WORDS5) -> float:
    x, y = set(shingles(normalize(a), spec)), set(shingles(normalize(b), spec))
    return len(x & y) / len(x | y)


def change_words(text: str, every: int, start: int = 3) -> str:
    """Replace every `every`-th word (from `start`) by a new word: a near-duplicate."""
    words = text.split(" ")
    for k in range(start, len(words), every):
        words[k] = f"zq{k}x"
    return " ".join(words)


# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again!",
    "short one",
    "a",
    "",
    "word " * 3 + "x" * 150 + " tail words here now",  # a shingle longer than one SHA-1 block
    "é" * 70,
    "Ünïcödé text with ﬁ ligature and ＦＵＬＬＷＩＤＴＨ letters",
    "我们今天去公园散步，天气非常好。然后我们一起吃了午饭。",
    "日本語のテキストです。ひらがなとカタカナ。",
    "mixed English text with 一点中文 inside",
]


def datasketch_hashvalues(text: str, spec: ShingleSpec, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=seed)
    for s in shingles(text, spec):
        m.update(s)
    return m.hashvalues


@pytest.mark.parametrize("spec", [WORDS5, ShingleSpec("words", 1), ShingleSpec("chars", 3), ShingleSpec("chars", 9)])
def test_signatures_equal_datasketch_update(spec):
    texts = [normalize(t) for t in SAMPLE_TEXTS]
    sig = minhash_signatures(texts, spec)
    for i, t in enumerate(texts):
        assert np.array_equal(sig.hashvalues[i], datasketch_hashvalues(t, spec)), (spec, t)
        assert len(sig.shingle_set(i)) == len(set(shingles(t, spec)))


def test_signatures_other_seed_num_perm_and_bulk():
    from datasketch import MinHash

    texts = [normalize(t) for t in SAMPLE_TEXTS if t]
    sig = minhash_signatures(texts, WORDS5, num_perm=64, seed=7)
    bulk = MinHash.bulk([shingles(t, WORDS5) for t in texts], num_perm=64, seed=7)
    for i, m in enumerate(bulk):
        assert np.array_equal(sig.hashvalues[i], m.hashvalues)
        assert m.jaccard(m) == 1.0


def test_shingle_sets_equal_numpy_unique():
    """The sets kernel (a bucket pass on the top bits, then insertion sort; np.sort when that
    would move too much) gives np.unique of each chosen text's fingerprints, empty for the others:
    random fingerprints, texts of one shingle, repeats, and two distinct values in one bucket
    repeated alternately (the np.sort fallback)."""
    rng = np.random.default_rng(5)
    parts = [rng.integers(0, 2**64, size=int(k), dtype=np.uint64) for k in rng.integers(0, 400, size=300)]
    parts += [np.full(50, 7, np.uint64), np.array([3], np.uint64), np.empty(0, np.uint64)]
    base = np.uint64(0x8000_0000_0000_0000)
    parts.append(np.tile(np.array([base + np.uint64(1), base], np.uint64), 600))  # same bucket, interleaved
    parts.append(np.repeat(rng.integers(0, 2**64, size=20, dtype=np.uint64), 30)[::-1].copy())
    parts.append(np.arange(1000, 0, -1, dtype=np.uint64))  # small values: all in bucket 0, reversed
    fps = np.concatenate(parts)
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    chosen = rng.random(len(parts)) < 0.8
    chosen[-4:] = True
    dedup._jit()
    keys, off = dedup._sets_kernel(fps, offsets, chosen)
    for i, p in enumerate(parts):
        want = np.unique(p) if chosen[i] else np.empty(0, np.uint64)
        assert np.array_equal(keys[off[i] : off[i + 1]], want), i


@needs_shared
def test_signatures_equal_datasketch_on_real_data_batched_threaded():
    """Many small batches on two threads give datasketch's values for every text."""
    import hashlib

    from datasketch import MinHash

    texts = [
        normalize(r["instruction"] + "\n" + r["input"] + "\n" + r["output"])
        for r in alpaca_rows()[:150] + alpaca_rows(ALPACA_ZH)[:150]
    ]
    plain = minhash_signatures(texts, WORDS5, threads=1)
    batched = minhash_signatures(texts, WORDS5, threads=2, batch_bytes=4000)
    assert np.array_equal(plain.hashvalues, batched.hashvalues)
    a, b = dedup.shingle_sets(plain), dedup.shingle_sets(batched)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.offsets, b.offsets)
    bulk = MinHash.bulk([shingles(t, WORDS5) for t in texts], num_perm=128)
    assert np.array_equal(plain.hashvalues, np.stack([m.hashvalues for m in bulk]))
    # a few zh rows are mostly code: they keep word shingles
    assert plain.char_shingled[150:300].mean() > 0.9 and not plain.char_shingled[:150].any()
    for i in (0, 151):  # fingerprints: the first 8 bytes of each shingle's SHA-1
        want = {int.from_bytes(hashlib.sha1(s).digest()[:8], "big") for s in shingles(texts[i], WORDS5)}
        assert set(plain.shingle_set(i).tolist()) == want


def test_shared_passages_short_texts_and_cjk_equal_datasketch():
    """Texts built from one passage with different prefixes and suffixes (what T0 looks like),
    texts cut anywhere (even mid-word), CJK, a text of one repeated word, texts shorter than a
    shingle -- in small batches: all equal to datasketch, shingle sets included."""
    import random

    rng = random.Random(0)
    vocab = [f"w{k}" for k in range(400)] + ["a", "of", "the", "and"]
    passage = " ".join(rng.choice(vocab) for _ in range(600))
    texts = [
        " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 30)))
        + " "
        + passage
        + " "
        + " ".join(rng.choice(vocab) for _ in range(rng.randrange(0, 30)))
        for _ in range(12)
    ]
    texts += [passage[: rng.randrange(1, 200)] for _ in range(10)]  # cut anywhere, even mid-word
    texts += ["了" * 50 + "我们今天去公园散步天气非常好" * 3, "the " * 40, "a b", "x"]
    texts = [normalize(t) for t in texts]
    sig = minhash_signatures(texts, WORDS5, batch_bytes=3000)
    for i, t in enumerate(texts):
        assert np.array_equal(sig.hashvalues[i], datasketch_hashvalues(t, WORDS5)), t[:40]
        assert len(sig.shingle_set(i)) == len(set(shingles(t, WORDS5)))


def test_unnormalised_spaces_give_empty_units_like_str_split():
    """Texts that were not normalised (double, leading and trailing spaces) are shingled as
    `str.split(" ")` splits them (empty words included), still equal to datasketch."""
    texts = ["  two  spaces here and  there ", " ", "  ", "a  b", "tail space ", " lead space"]
    for spec in (WORDS5, ShingleSpec("words", 2), ShingleSpec("chars", 3)):
        sig = minhash_signatures(texts, spec)
        for i, t in enumerate(texts):
            assert np.array_equal(sig.hashvalues[i], datasketch_hashvalues(t, spec)), (spec, t)


def _sha1_edge_messages() -> list[bytes]:
    import random

    rng = random.Random(1)
    out = [b"", b"a", b"abc", b"abcd", b"abcde"]
    # every length around the padding boundaries: 55 (fits one block), 56..64 (the length field
    # spills into a second block), 119/120 (two vs three blocks), and several multi-block lengths
    for n in (3, 4, 5, 54, 55, 56, 57, 60, 63, 64, 65, 118, 119, 120, 127, 128, 129, 183, 184, 200, 1000, 4097):
        out.append(bytes(rng.randrange(256) for _ in range(n)))
        out.append(bytes(rng.randrange(32, 127) for _ in range(n)))
    out += [b"\x00" * 70, b"\xff" * 64, b"\x80" * 55]
    out += [
        s.encode("utf-8")
        for s in (
            "é",
            "é" * 28,
            "é" * 60,
            "我们今天去公园散步" * 3,
            "日本語のテキスト",
            "😀" * 14,
            "😀" * 16,
            "mixed ascii and 中文 and émojis 😀 here",
        )
    ]
    out += [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(500)]
    return out


@pytest.mark.parametrize("ni", [False, True], ids=["portable", "sha-ni"])
def test_sha1_kernel_equals_hashlib(ni):
    """Both SHA-1 kernels give hashlib's first 8 digest bytes on edge cases: empty, 55/56/64-byte
    padding boundaries, multi-block, non-ASCII, and messages of many lengths hashed together. The
    portable one runs 32 messages as SIMD lanes; the SHA-NI one (LLVM IR for the CPU's SHA
    instructions) runs where the CPU has them."""
    import hashlib

    if ni:
        minhash._jit()
        if not minhash._use_sha_ni():
            assert not _sha_ni_expected()  # else this test would pass without running the kernel
            pytest.skip("this CPU has no SHA extensions (or SFTDATA_SHA_NI=0): the SHA-NI kernel is not built")
    msgs = _sha1_edge_messages()
    got = minhash._sha1_prefixes(msgs, ni=ni)
    want = np.array([int.from_bytes(hashlib.sha1(m).digest()[:8], "big") for m in msgs], dtype=np.uint64)
    assert got.dtype == np.uint64 and np.array_equal(got, want)
    # one at a time (spare lanes) and in reverse order (other neighbours in the buffer)
    for m in msgs[:40]:
        assert int(minhash._sha1_prefixes([m], ni=ni)[0]) == int.from_bytes(hashlib.sha1(m).digest()[:8], "big"), m
    assert np.array_equal(minhash._sha1_prefixes(msgs[::-1], ni=ni), want[::-1])
    for n in range(0, 200):  # every padding case of one to four blocks, alone and two by two
        m = bytes(range(256))[:n]
        assert minhash._sha1_prefixes([m, m[::-1]], ni=ni).tolist() == [
            int.from_bytes(hashlib.sha1(x).digest()[:8], "big") for x in (m, m[::-1])
        ], n


def _sha_ni_expected() -> bool:
    """/proc/cpuinfo lists sha_ni (Linux x86-64) and nothing in the environment turns the SHA-NI
    kernel off: then it must be in use."""
    off = ("SFTDATA_SHA_NI", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_DISABLE_JIT")
    if any(os.environ.get(k) for k in off):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return {"sha_ni", "ssse3", "sse4_1"} <= set(flags)


_SIGN_PROBE = """
import sys, numpy as np
from sftdata import minhash
texts = [line.rstrip("\\n") for line in open(sys.argv[1], encoding="utf-8")]
sigs = minhash.minhash_signatures([minhash.normalize(t) for t in texts], threads=1)
print(minhash._use_sha_ni(), sigs.hashvalues.tobytes().hex(), sigs.fingerprints.tobytes().hex())
"""


def test_portable_and_sha_ni_signatures_agree(tmp_path):
    """SFTDATA_SHA_NI=0 signs with the portable kernel; on a CPU with SHA extensions the default
    signs with SHA-NI. Both give the same signatures and fingerprints (and datasketch's: the other
    tests check the default one)."""
    texts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(3 + i % 40)) for i in range(300)]
    texts += ["ünïcode words ñ " * 9, "x" * 500, "", "a b c d e f g"]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = {}
    for flag in ("0", "1"):
        env = {**os.environ, "SFTDATA_SHA_NI": flag}
        proc = subprocess.run(
            [sys.executable, "-c", _SIGN_PROBE, str(src)], env=env, capture_output=True, text=True, check=True
        )
        out[flag] = proc.stdout.split()
    assert out["0"][0] == "False"
    if _sha_ni_expected():
        assert out["1"][0] == "True"  # else the SHA-NI tests would pass without running the kernel
    assert out["0"][1:] == out["1"][1:]
    ref = minhash.minhash_signatures([minhash.normalize(t) for t in texts], threads=1)
    assert out["1"][1] == ref.hashvalues.tobytes().hex()


def test_long_shingles_equal_datasketch():
    """Shingles of one to many SHA-1 blocks (long words, a text shorter than one shingle) in one
    batch, word and character shingles."""
    import random

    rng = random.Random(2)
    texts = [
        " ".join(
            "".join(rng.choice("abcdé中") for _ in range(rng.choice([1, 5, 11, 12, 13, 14, 30, 60])))
            for _ in range(rng.randrange(1, 40))
        )
        for _ in range(60)
    ]
    for spec in (WORDS5, ShingleSpec("chars", 20)):
        sig = minhash_signatures(texts, spec, batch_bytes=2000)
        bulk = np.stack([datasketch_hashvalues(t, spec) for t in texts])
        assert np.array_equal(sig.hashvalues, bulk), spec


def test_import_does_not_import_numba():
    """numba is imported when signatures are first computed, not by `import sftdata.dedup`."""
    code = "import sys, sftdata.dedup, sftdata.cli.dedup; assert 'numba' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_compiling_never_swaps_the_callers_stdout_and_stderr():
    """Numba colours its messages through colorama, whose init()/deinit() replace sys.stdout and
    sys.stderr and put back the streams they saw. The CLI compiles on a thread while the caller
    goes on; a caller that redirects its streams meanwhile (pytest's capsys, a notebook, the pytest
    fixture) had its output sent to a stale stream. So numba must format without colorama.
    (With numba's JIT: the ahead-of-time kernels, sftdata/aot.py, do not import numba at all.)"""
    code = (
        "import colorama.initialise as ci\n"
        "calls = []\n"
        "ci.init = lambda *a, **k: calls.append('init')\n"
        "ci.reinit = lambda: calls.append('reinit')\n"
        "ci.deinit = lambda: calls.append('deinit')\n"
        "import colorama\n"
        "colorama.init, colorama.reinit, colorama.deinit = ci.init, ci.reinit, ci.deinit\n"
        "from sftdata import dedup\n"
        "dedup.load_kernels()\n"
        "import numba.core.errors as errors\n"
        "errors.TypingError('a message numba formats')\n"
        "print(len(calls))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING"}
    env["SFTDATA_AOT"] = "0"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "0", out.stdout + out.stderr


def test_empty_text_gets_empty_signature_and_is_never_paired():
    sig = minhash_signatures(["", "hello world"], WORDS5)
    assert (sig.hashvalues[0] == 0xFFFFFFFF).all() and len(sig.shingle_set(0)) == 0
    r = dedup.dedup([conv(1, "", ""), conv(2, "", ""), conv(3, "x", "y")])
    assert r.summary["empty_texts"] == 2 and not r.findings


def test_normalize_and_short_texts_are_one_shingle():
    assert normalize("  Hello,\tWORLD!!  ﬁne\n") == "hello world fine"
    assert shingles("two words", WORDS5) == [b"two words"]
    assert shingles("a b c d e f", WORDS5) == [b"a b c d e", b"b c d e f"]
    assert shingles("我们今天去公园", WORDS5)[:2] == ["我们今".encode(), "们今天".encode()]  # CJK: chars:3


# --------------------------------------------------------------------------------------------
# LSH parameters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
@pytest.mark.parametrize("num_perm", [64, 128, 256])
def test_bands_rows_find_pairs_at_threshold(threshold, num_perm):
    p = dedup.lsh_params(threshold, num_perm)
    assert p.bands * p.rows <= num_perm
    assert dedup.candidate_probability(threshold, p.bands, p.rows) >= 0.95
    assert dedup.candidate_probability(min(1.0, threshold + 0.05), p.bands, p.rows) >= 0.98


def test_default_bands_rows_at_08_and_datasketch_default_is_worse():
    from datasketch import MinHashLSH

    p = dedup.lsh_params(0.8, 128)
    assert (p.bands, p.rows) == (13, 7)
    ds = MinHashLSH(threshold=0.8, num_perm=128)
    assert dedup.candidate_probability(0.8, ds.b, ds.r) < 0.6  # why we derive our own


def test_candidate_pairs_banding_matches_brute_force():
    rng = np.random.default_rng(0)
    hv = rng.integers(0, 40, size=(150, 128)).astype(np.uint32)  # few distinct values: many collisions
    p = dedup.LshParams(16, 2, 0.5, 0.0, 0.0)
    got = {tuple(x) for x in dedup.candidate_pairs(hv, p).tolist()}
    want = set()
    for i in range(150):
        for j in range(i + 1, 150):
            if any((hv[i, k * 2 : (k + 1) * 2] == hv[j, k * 2 : (k + 1) * 2]).all() for k in range(16)):
                want.add((i, j))
    assert got == want
    # buckets past max_bucket: each member pairs only with the bucket's first max_bucket (by index)
    hv = np.zeros((40, 4), np.uint32)
    hv[::2, 2:] = 1  # band 1: evens and odds in two buckets of 20; band 0: one bucket of 40
    p = dedup.LshParams(2, 2, 0.5, 0.0, 0.0)
    for threads in (1, 2):
        got = dedup.candidate_pairs(hv, p, max_bucket=5, threads=threads)
        want = {(i, j) for i in range(5) for j in range(i + 1, 40)}  # band 0
        want |= {(i, j) for par in (0, 1) for i in range(par, 10, 2) for j in range(i + 2, 40, 2)}  # band 1
        assert got.tolist() == sorted(map(list, want))


# --------------------------------------------------------------------------------------------
# Planted pairs in real data
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """300 alpaca_en rows (messages JSONL) with planted duplicates, and an eval set."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    rows = [as_messages(r) for r in alpaca_rows()[:300]]
    long_rows = [i for i, r in enumerate(rows) if len(r["messages"][1]["content"].split()) > 150]
    a, b, c = long_rows[:3]
    exact = json.loads(json.dumps(rows[a]))
    exact["messages"][1]["content"] = exact["messages"][1]["content"].upper().replace(".", " . ")
    near = json.loads(json.dumps(rows[b]))
    near["messages"][1]["content"] = change_words(near["messages"][1]["content"], 60)
    train = rows + [exact, near]
    contaminated = json.loads(json.dumps(rows[c]))
    contaminated["messages"][1]["content"] = change_words(contaminated["messages"][1]["content"], 80, start=7)
    seen = {json.dumps(r, sort_keys=True) for r in rows}  # alpaca_en repeats some rows: keep eval clean
    other = [m for m in (as_messages(r) for r in alpaca_rows()[600:700]) if json.dumps(m, sort_keys=True) not in seen]
    other = other[:20]
    d = tmp_path_factory.mktemp("planted")
    return {
        "train": write_jsonl(d / "train.jsonl", train),
        "eval": write_jsonl(d / "eval.jsonl", other + [contaminated]),
        "a": a,
        "b": b,
        "c": c,
        "n": len(train),
        "rows": train,
        "dir": d,
    }


@needs_shared
def test_planted_exact_near_and_contaminated_pairs_are_found(planted, capsys):
    code = cmd_dedup.main([str(planted["train"]), "--against", str(planted["eval"]), "--json"])
    obj = json.loads(capsys.readouterr().out)
    assert code == 1 and obj["command"] == "dedup" and obj["schema_version"] == 1
    by_check: dict[str, list[dict]] = {}
    for f in obj["findings"]:
        by_check.setdefault(f["check"], []).append(f)
    n = planted["n"]
    # exact: the upper-cased copy (line n-1) names its original (line a+1)
    exact = [f for f in by_check["dedup.exact"] if f["source"]["line"] == n - 1]
    assert exact and exact[0]["data"]["other"]["source"]["line"] == planted["a"] + 1
    assert exact[0]["severity"] == "warning" and f"train.jsonl:{planted['a'] + 1}" in exact[0]["message"]
    # near: the copy with a few words changed (line n) names its original with the verified Jaccard
    near = [f for f in by_check["dedup.near"] if f["source"]["line"] == n]
    assert near and near[0]["data"]["other"]["source"]["line"] == planted["b"] + 1
    j = near[0]["data"]["verified_jaccard"]
    rows = planted["rows"]
    want = true_jaccard(dedup.text_of(_to_conv(rows[planted["b"]])), dedup.text_of(_to_conv(rows[n - 1])))
    assert 0.8 <= j < 1.0 and j == pytest.approx(want, abs=1e-4)
    assert f"{j:.3f}" in near[0]["message"]
    # contamination: training example c is a near copy of the last eval example
    cont = by_check["dedup.contamination"]
    assert [f["source"]["line"] for f in cont] == [planted["c"] + 1]
    assert cont[0]["severity"] == "error" and cont[0]["data"]["other"]["source"]["line"] == 21
    assert "eval.jsonl:21" in cont[0]["message"]
    s = obj["summary"]
    assert s["contaminated"] == 1 and s["near_pairs"] >= 1 and s["exact_duplicates"] >= 1


def _to_conv(row: dict) -> Conversation:
    return Conversation("x", tuple(Message(m["role"], m["content"]) for m in row["messages"]), Source("x"))


@needs_shared
def test_every_reported_pair_is_similar_and_unrelated_examples_never_pair(planted):
    from sftdata import formats

    train = [c for c in formats.read(str(planted["train"])) if isinstance(c, Conversation)]
    r = dedup.dedup(train)
    reported = {(p.left, p.right) for p in r.pairs.top()}
    for p in r.pairs.top():
        a, b = dedup.text_of(r.examples[p.left]), dedup.text_of(r.examples[p.right])
        truth = true_jaccard(a, b)
        assert truth >= 0.8 and p.verified_jaccard == pytest.approx(truth, abs=1e-9), (p, truth)
    # brute force over all pairs: every pair at J >= 0.85 is reported (nothing at J < 0.8 is)
    sets = [set(shingles(normalize(dedup.text_of(c)), WORDS5)) for c in train]
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            jac = len(sets[i] & sets[j]) / max(1, len(sets[i] | sets[j]))
            if jac >= 0.85:
                assert r.cluster[i] == r.cluster[j] >= 0, (i, j, jac)
            if jac < 0.8:
                assert (i, j) not in reported
    assert r.summary["clusters"] >= 2


# --------------------------------------------------------------------------------------------
# CJK
# --------------------------------------------------------------------------------------------


@needs_shared
def test_cjk_rows_use_char_shingles_and_near_duplicates_are_found():
    rows = alpaca_rows(ALPACA_ZH)[:200]
    convs = [conv(i + 1, r["instruction"] + r["input"], r["output"], "zh.jsonl") for i, r in enumerate(rows)]
    chinese = [i for i, r in enumerate(rows) if len(minhash._CJK.findall(r["output"])) > 0.8 * len(r["output"])]
    k = max(chinese, key=lambda i: len(rows[i]["output"]))
    text = rows[k]["output"]
    changed = text[:20] + "很" + text[21:60] + "的" + text[61:]  # two characters changed
    convs.append(conv(len(convs) + 1, rows[k]["instruction"] + rows[k]["input"], changed, "zh.jsonl"))
    r = dedup.dedup(convs)
    near = [f for f in r.findings if f.check == "dedup.near"]
    assert [f.source.line for f in near] == [len(convs)]
    assert near[0].data["other"]["source"]["line"] == k + 1 and near[0].data["verified_jaccard"] >= 0.8
    assert r.summary["char_shingled_texts"] >= 180
    # word shingles (spaces only between clauses) would have missed the pair
    a, b = (normalize(rows[k]["instruction"] + rows[k]["input"] + "\n" + t).split(" ") for t in (text, changed))
    wa, wb = ({" ".join(w[i : i + 5]) for i in range(max(1, len(w) - 4))} for w in (a, b))
    assert len(wa & wb) / len(wa | wb) < 0.8


# --------------------------------------------------------------------------------------------
# Clusters, keep policy, run directory, -o
# --------------------------------------------------------------------------------------------


def _rows(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def test_clusters_representatives_and_keep_longest():
    base = " ".join(f"w{k}" for k in range(60))
    convs = [
        conv(1, "q", base),
        conv(2, "unrelated question", "an answer about something else entirely, with its own words and facts"),
        conv(3, "q", base + " extra words at the end"),
        conv(4, "Q!", base.upper()),  # exact duplicate of 1 after normalisation
    ]
    first = dedup.dedup(convs, config=DedupConfig(keep="first"))
    assert first.kept == (0, 1)
    assert first.cluster[0] == first.cluster[2] == first.cluster[3] >= 0 and first.cluster[1] == -1
    checks = sorted((f.check, f.source.line, f.data["other"]["source"]["line"]) for f in first.findings)
    assert checks == [("dedup.exact", 4, 1), ("dedup.near", 3, 1)]
    longest = dedup.dedup(convs, config=DedupConfig(keep="longest"))
    assert longest.kept == (1, 2)
    rows = {row["example_id"]: row for row in _rows(longest.clusters)}
    assert rows["t/3"]["representative"] and not rows["t/1"]["representative"]
    want = true_jaccard("q\n" + base, "q\n" + base + " extra words at the end")
    assert rows["t/1"]["verified_jaccard"] == pytest.approx(want)


@needs_shared
def test_cli_writes_kept_in_input_format_and_run_dir(tmp_path, capsys):
    import pyarrow.parquet as pq

    rows = alpaca_rows()[:120]
    dup = dict(rows[5])
    dup["output"] = dup["output"] + "!"
    src = tmp_path / "alpaca.json"
    src.write_text(json.dumps(rows + [dup], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "kept.json"
    run = tmp_path / "run"
    code = cmd_dedup.main([str(src), "-o", str(out), "--run-dir", str(run)])
    text = capsys.readouterr().out
    assert code == 1
    assert "exact duplicates" in text and "alpaca.json:" in text
    kept = json.loads(out.read_text(encoding="utf-8"))
    assert len(kept) == 120 and set(kept[0]) >= {"instruction", "input", "output"}  # alpaca, like the input
    table = pq.read_table(run / "dedup" / "clusters.parquet")
    assert {
        "cluster_id",
        "example_id",
        "source_file",
        "source_line",
        "representative",
        "estimated_jaccard",
        "verified_jaccard",
    } <= set(table.column_names)
    assert table.num_rows == 2 and sum(table.column("representative").to_pylist()) == 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert "dedup" in manifest["stages_present"] and manifest["stages"]["dedup"]["config"]["threshold"] == 0.8
    assert len((run / "dedup" / "findings.jsonl").read_text().splitlines()) == 1


def test_cli_clean_input_exits_0_and_bad_records_pass_through(tmp_path, capsys):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question number {i} about topic {i * 7}"},
                {"role": "assistant", "content": f"answer {i}: " + " ".join(f"w{i}_{k}" for k in range(30))},
            ]
        }
        for i in range(20)
    ]
    clean = write_jsonl(tmp_path / "clean.jsonl", rows)
    assert cmd_dedup.main([str(clean)]) == 0
    assert "no duplicates found" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(clean.read_text() + "{not json\n", encoding="utf-8")
    assert cmd_dedup.main([str(bad), "--json"]) == 1
    obj = json.loads(capsys.readouterr().out)
    assert [f["check"] for f in obj["findings"]] == ["format.parse-error"]
    assert obj["summary"]["unreadable_records"] == 1 and obj["summary"]["examples"] == 20


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--threshold", "1.5"], "--threshold"),
        (["--shingle", "tokens:5"], "--shingle"),
        (["--fields", "body"], "--fields"),
        (["--lsh-storage", "http://x"], "redis://"),
        (["--num-perm", "1"], "--num-perm"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, capsys, argv, needle):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
    )
    assert cmd_dedup.main([str(data), *argv]) == 2
    assert needle in capsys.readouterr().err


def test_cli_missing_input_exits_2(tmp_path, capsys):
    assert cmd_dedup.main([str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Redis shared index
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not found (apt-get install redis-server)")
    pytest.importorskip("redis", reason="the redis Python client is not installed (pip install redis)")
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(100):
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server on port {port} did not answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def _redis_corpus() -> list[Conversation]:
    rows = alpaca_rows()[:200] if SHARED.is_dir() else []
    convs = [conv(i + 1, r["instruction"], r["output"], "r.jsonl") for i, r in enumerate(rows)]
    base = " ".join(f"token{k}" for k in range(400))
    for k in range(6):  # six near-duplicates of one text (J ~ 0.9), plus the alpaca rows' own duplicates
        convs.append(conv(len(convs) + 1, "prompt", change_words(base, 200, start=k + 1), "r.jsonl"))
    return convs


@pytest.mark.redis
def test_redis_index_finds_the_same_pairs_as_memory(redis_url):
    convs = _redis_corpus()
    mem = dedup.dedup(convs)
    red = dedup.dedup(convs, config=DedupConfig(lsh_storage=redis_url + "?basename=t1"))
    assert {(p.left, p.right, p.kind) for p in red.pairs.top()} == {(p.left, p.right, p.kind) for p in mem.pairs.top()}
    assert red.summary["near_pairs"] >= 5 and red.summary["lsh_unverified_remote_candidates"] == 0
    assert [f.to_dict() for f in red.findings] == [f.to_dict() for f in mem.findings]


@pytest.mark.redis
def test_redis_candidates_equal_datasketch_query(redis_url):
    """Our pipelined bucket lookups return what datasketch's own MinHashLSH.query returns."""
    from datasketch import LeanMinHash, MinHashLSH

    texts = [normalize(dedup.text_of(c)) for c in _redis_corpus()]
    sig = minhash_signatures(texts, WORDS5)
    params = dedup.lsh_params(0.8)
    keys = [f"k{i}" for i in range(len(texts))]
    pairs, remote = dedup.redis_candidate_pairs(sig.hashvalues, keys, params, redis_url + "?basename=t2")
    assert remote == 0
    cfg, _ = dedup.parse_redis_url(redis_url)
    lsh = MinHashLSH(
        num_perm=128,
        params=(params.bands, params.rows),
        prepickle=False,
        storage_config={"type": "redis", "basename": b"t2", "redis": cfg},
    )
    want = set()
    for i, hv in enumerate(sig.hashvalues):
        for key in lsh.query(LeanMinHash(seed=1, hashvalues=hv, scheme="affine32")):
            j = int(key.decode()[1:])
            if j != i:
                want.add((min(i, j), max(i, j)))
    assert {tuple(p) for p in pairs.tolist()} == want
    assert want  # the corpus has candidates


@pytest.mark.redis
def test_redis_two_workers_share_one_index(redis_url, tmp_path, capsys):
    convs = _redis_corpus()
    half = len(convs) - 3  # worker 1 holds three of the chain's members, worker 2 the other three
    url = redis_url + "?basename=t3"
    one = dedup.dedup(convs[:half], config=DedupConfig(lsh_storage=url))
    two = dedup.dedup(convs[half:], config=DedupConfig(lsh_storage=url))
    assert one.summary["lsh_unverified_remote_candidates"] == 0  # it ran first
    assert two.summary["lsh_unverified_remote_candidates"] > 0  # sees worker 1's examples
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
    )
    assert cmd_dedup.main([str(data), "--lsh-storage", redis_url.rsplit(":", 1)[0] + ":1/0"]) == 2
    assert "--lsh-storage" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A slice of the T0 corpus (the same passages under several templates)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not T0.is_file(), reason="../shared/data not present")
def test_t0_slice_templates_of_one_passage_cluster():
    from sftdata import formats

    convs = []
    for item in formats.read(str(T0), limit=4000):
        if isinstance(item, Conversation):
            convs.append(item)
    r = dedup.dedup(convs, config=DedupConfig(fields="prompt", threshold=0.7))
    assert r.summary["near_pairs"] > 50 and r.summary["clusters"] > 20
    for p in r.pairs.top("near", 200):
        a, b = (dedup.text_of(r.examples[x], "prompt") for x in (p.left, p.right))
        assert true_jaccard(a, b) >= 0.7 - 1e-9
    templates = {r.examples[i].meta["columns"]["template"] for i in np.flatnonzero(r.cluster >= 0)}
    assert len(templates) >= 2


@pytest.mark.slow
@pytest.mark.skipif(not T0.is_file(), reason="../shared/data not present")
def test_t0_slice_verified_jaccard_is_exact_for_every_candidate():
    """The vectorised verification equals Python set arithmetic on the shingles, for every LSH
    candidate (similar and dissimilar) of 3,000 T0 documents."""
    from sftdata import formats

    texts = list(
        dict.fromkeys(
            normalize(dedup.text_of(c)) for c in formats.read(str(T0), limit=3000) if isinstance(c, Conversation)
        )
    )
    sig = minhash_signatures(texts, WORDS5)
    cand = dedup.candidate_pairs(sig.hashvalues, dedup.lsh_params(0.8))
    got = dedup.verified_jaccard(dedup.shingle_sets(sig), cand, threads=2, chunk=1 << 14)
    sets = [set(shingles(t, WORDS5)) for t in texts]
    want = np.array([len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in cand.tolist()])
    assert len(cand) > 1000 and (want < 0.8).any() and (want >= 0.8).any()
    assert np.array_equal(got, want)


# --------------------------------------------------------------------------------------------
# Findings per example (issue 13)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted_cluster(tmp_path_factory):
    """200 alpaca_en rows plus: an exact and a near copy of row a (a cluster of three), a near copy
    of an eval example (row c) and an exact copy of that row (a cluster with nothing clean to keep)."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    rows = [as_messages(r) for r in alpaca_rows()[:200]]
    long_rows = [i for i, r in enumerate(rows) if len(r["messages"][1]["content"].split()) > 150]
    a, c = long_rows[0], long_rows[1]
    exact = json.loads(json.dumps(rows[a]))
    exact["messages"][0]["content"] = "  " + exact["messages"][0]["content"].upper() + " !!"
    near = json.loads(json.dumps(rows[a]))
    near["messages"][1]["content"] = change_words(near["messages"][1]["content"], 50)
    copy_c = json.loads(json.dumps(rows[c]))
    train = rows + [exact, near, copy_c]
    ev = json.loads(json.dumps(rows[c]))
    ev["messages"][1]["content"] = change_words(ev["messages"][1]["content"], 80, start=7)
    d = tmp_path_factory.mktemp("cluster")
    return {
        "train": write_jsonl(d / "train.jsonl", train),
        "eval": write_jsonl(d / "eval.jsonl", [ev]),
        "a": a,
        "c": c,
        "n": len(rows),
        "rows": train,
    }


@needs_shared
def test_one_finding_per_dropped_example_names_kept_representative_and_cluster_size(planted_cluster, capsys, tmp_path):
    p = planted_cluster
    code = cmd_dedup.main([str(p["train"]), "--against", str(p["eval"]), "--json", "--run-dir", str(tmp_path)])
    obj = json.loads(capsys.readouterr().out)
    assert code == 1
    found = {(f["check"], f["source"]["line"]): f for f in obj["findings"]}
    n, a, c = p["n"], p["a"], p["c"]
    # lines: row k is line k + 1; the exact copy of a is line n + 1, the near copy n + 2, the copy of c n + 3
    exact, near = found[("dedup.exact", n + 1)], found[("dedup.near", n + 2)]
    for f in (exact, near):
        assert f["data"]["other"]["source"]["line"] == a + 1  # the kept representative: the first of the cluster
        assert f["data"]["cluster_size"] == 3 and "cluster of 3" in f["message"]
        assert f"train.jsonl:{a + 1}" in f["message"] and "-o keeps" in f["message"]
    assert exact["data"]["verified_jaccard"] == 1.0
    want = true_jaccard(dedup.text_of(_to_conv(p["rows"][a])), dedup.text_of(_to_conv(p["rows"][n + 1])))
    assert near["data"]["verified_jaccard"] == pytest.approx(want, abs=1e-4) and 0.8 <= want < 1.0
    # the kept representative itself is never reported; nothing else in the cluster is reported twice
    dup_lines = [f["source"]["line"] for f in obj["findings"] if f["check"] in ("dedup.exact", "dedup.near")]
    assert a + 1 not in dup_lines and len(dup_lines) == len(set(dup_lines))
    # row c and its exact copy both near-copy the eval example: one contamination finding each, naming
    # eval.jsonl:1; their cluster keeps nothing, so neither gets a dedup.exact finding
    cont = sorted(f["source"]["line"] for f in obj["findings"] if f["check"] == "dedup.contamination")
    assert cont == [c + 1, n + 3]
    assert all("eval.jsonl:1" in found[("dedup.contamination", line)]["message"] for line in cont)
    assert ("dedup.exact", n + 3) not in found
    s = obj["summary"]
    assert s["dropped_by"]["dedup.contamination"] == 2 and s["dropped_by"]["dedup.near"] >= 1
    assert s["dropped_by"]["dedup.exact"] >= 1 and sum(s["dropped_by"].values()) == s["removed"]
    import pyarrow.parquet as pq

    pairs = pq.read_table(tmp_path / "dedup" / "pairs.parquet").to_pylist()
    kinds = {(r["kind"], r["source_line"], r["other_line"]) for r in pairs}
    assert ("exact", a + 1, n + 1) in kinds and ("contamination", c + 1, 1) in kinds
    assert ("near", a + 1, n + 2) in kinds
    clusters = pq.read_table(tmp_path / "dedup" / "clusters.parquet").to_pylist()
    assert {r["cluster_size"] for r in clusters if r["source_line"] in (a + 1, n + 1, n + 2)} == {3}


# Kept sets of the code before the compiled normalisation/verification (commit efcfa90), on T0:
# sha1 of the JSON list of kept line numbers, and its length.
KEPT_BEFORE = {
    ("head3000", "first"): (737, "4ec0e52d17cea061992b8de8c2f26ef356442bcb"),
    ("head3000", "longest"): (737, "71fe1816bba4ded84a54d3334bf7b8f79f95ef55"),
    ("all", "first"): (31587, "e7349f7dc27092664e9b4905213c16cb57e24e43"),
    ("all", "longest"): (31587, "dfe7e57fc79ee4b9e5843b5a90ba2a25e18cbde1"),
}


def _kept_lines(result: dedup.DedupResult) -> tuple[int, str]:
    import hashlib

    lines = [result.examples[i].source.line for i in result.kept]
    return len(lines), hashlib.sha1(json.dumps(lines).encode()).hexdigest()


@pytest.mark.skipif(not T0.is_file(), reason="../shared/data not present")
def test_kept_sets_identical_to_before_the_speed_work_t0_head():
    from sftdata import formats

    convs = [c for c in formats.read(str(T0), limit=3500) if isinstance(c, Conversation)]
    for keep in ("first", "longest"):
        assert _kept_lines(dedup.dedup(convs[:3000], config=DedupConfig(keep=keep))) == KEPT_BEFORE[("head3000", keep)]
    r = dedup.dedup(convs[:3000], convs[2500:3500])
    assert _kept_lines(r) == (563, "cd821c33719d744b8994677f0120153ea18a7f8b") and int(r.contaminated.sum()) == 820


@pytest.mark.slow
@pytest.mark.skipif(not T0.is_file(), reason="../shared/data not present")
def test_kept_sets_identical_to_before_the_speed_work_whole_t0():
    from sftdata import formats

    convs = [c for c in formats.read(str(T0)) if isinstance(c, Conversation)]
    r = dedup.dedup(convs, config=DedupConfig(keep="longest"))
    assert _kept_lines(r) == KEPT_BEFORE[("all", "longest")]
    assert len(r.findings) == r.summary["removed"] == 23598  # one finding per dropped example


EDGE_TEXTS = [
    "Straße ＦＵＬＬ ﬁne 😀 x_y",
    "",
    "  ,, ",
    "İstanbul ΣΑΣ ς",
    "a\x1cb\u00a0c\u2028d",
    "日本語のテキストです。",
    "Ⱥ ⱥ ǅ ǈ Ω K Å",
    "tab\tand\nnewline -- dash—em",
    "١٢٣ ٤٥ arabic digits",
    "\u00e9 vs e\u0301",
]


@needs_shared
def test_normalize_many_equals_normalize_on_real_data():
    """The compiled normalisation equals the Python reference (NFKC, casefold, non-word runs to one
    space) byte for byte, with each text's length in characters and its CJK flag."""
    texts = EDGE_TEXTS[:]
    for path in (ALPACA_ZH, SHARED / "llamafactory" / "glaive_toolcall_en_demo.json", ALPACA_EN):
        for r in json.loads(path.read_text(encoding="utf-8"))[:400]:
            texts.append("\n".join(str(v) for v in r.values()))
    got = minhash.normalize_many(texts, threads=2, batch_chars=1 << 16)
    for i, t in enumerate(texts):
        want = normalize(t)
        assert got.packed.text(i) == want.encode("utf-8"), (i, t[:80])
        assert got.chars[i] == len(want) and got.cjk[i] == minhash.is_cjk_heavy(want), i
    assert got.cjk.sum() > 300


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sign_stream_equals_normalize_many_then_sign_packed(threads):
    """dedup's streaming path (texts handed over one at a time, the kernels on worker threads,
    the caller taking unstarted batches at the end) gives exactly normalize_many + sign_packed of
    all the texts: the same bytes, lengths, CJK flags, signatures and fingerprints, in order. Small
    batches so there are many of them; the edge texts include ones the kernel leaves to Python."""
    texts = [t for k in range(40) for t in EDGE_TEXTS] + [
        " ".join(f"w{i}" for i in range(k, k + 30)) for k in range(200)
    ]
    before = sys.getswitchinterval()
    with minhash.SignStream(WORDS5, num_perm=64, seed=3, threads=threads, batch_chars=700) as stream:
        assert sys.getswitchinterval() == (min(before, 0.001) if threads > 1 else before)
        for t in texts:
            stream.add(t)
        norm, sigs, seconds = stream.result()
        with pytest.raises(RuntimeError):
            stream.result()  # once: the stream keeps nothing of it
        with pytest.raises(RuntimeError):
            stream.add("late")
    assert sys.getswitchinterval() == before  # put back when the stream closes
    want = minhash.normalize_many(texts, threads=1)
    assert np.array_equal(norm.packed.off, want.packed.off)
    assert norm.packed.buf[: norm.packed.off[-1]].tobytes() == want.packed.buf[: want.packed.off[-1]].tobytes()
    assert np.array_equal(norm.chars, want.chars) and np.array_equal(norm.cjk, want.cjk)
    ref = minhash.sign_packed(want.packed, want.cjk, WORDS5, num_perm=64, seed=3, threads=1)
    assert np.array_equal(sigs.hashvalues, ref.hashvalues)
    assert np.array_equal(sigs.fingerprints, ref.fingerprints) and np.array_equal(sigs.offsets, ref.offsets)
    assert np.array_equal(sigs.char_shingled, ref.char_shingled)
    assert set(seconds) == {"normalize", "signatures"}
    rows = np.array([0, 5, 17, len(texts) - 1])
    part = sigs.take(rows)
    for k, i in enumerate(rows):
        assert np.array_equal(part.hashvalues[k], ref.hashvalues[i])
        assert np.array_equal(part.shingle_set(k), ref.shingle_set(i))


def test_dedup_takes_iterators_and_stops_its_workers_when_the_input_fails():
    """The CLI hands dedup its readers: an error while reading (raised by the iterator) leaves no
    signing thread behind."""
    import threading

    def failing():
        yield conv(1, "a b c d e f", "g h i j")
        raise ValueError("unreadable")

    with pytest.raises(ValueError, match="unreadable"):
        dedup.dedup(failing(), iter(()), DedupConfig(threads=2))
    assert not [t for t in threading.enumerate() if t.name.startswith("sftdata-sign")]
    r = dedup.dedup(iter([conv(1, "a b c d e f", "g"), conv(2, "a b c d e f", "g")]), iter([conv(3, "x", "y")]))
    assert r.n_train == 2 and len(r.examples) == 3 and r.summary["exact_duplicates"] == 1


# --------------------------------------------------------------------------------------------
# Progress bars: on stderr under a terminal, nothing otherwise
# --------------------------------------------------------------------------------------------


def _run_with_tty_stderr(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run argv with stderr on a pseudo-terminal and stdout on a pipe: (exit code, stdout, what the
    terminal received)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # 30 rows, 100 columns
    env = dict(os.environ)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()))
    reader.start()
    chunks = []
    # the slave stays open here until the child is gone and everything is read (Linux drops unread
    # terminal output once every slave descriptor is closed)
    while True:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            chunks.append(os.read(master, 65536))
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=300)
    reader.join()
    os.close(slave)
    os.close(master)
    out = b"".join(out_chunks).decode()
    return code, out, b"".join(chunks).decode("utf-8", "replace")


def _sftdata() -> str:
    return str(Path(sys.executable).parent / "sftdata")


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "examples/sharegpt.jsonl", "-o", "{tmp}/out.jsonl"],
        ["dedup", "examples/messages.jsonl", "examples/sharegpt.jsonl"],
    ],
)
def test_progress_bar_on_a_terminal_and_absent_otherwise(argv, tmp_path):
    argv = [_sftdata()] + [a.format(tmp=tmp_path) for a in argv]
    code, out, tty = _run_with_tty_stderr(argv, REPO)
    assert code in (0, 1), tty
    assert "ex/s" in tty or "stage/s" in tty or "s/stage" in tty or "ex [" in tty, tty
    assert "\r" in tty and "ex/s" not in out and "\r" not in out  # the bar redraws on stderr, never on stdout
    if argv[1] == "dedup":
        assert "dedup: " in tty and "reading" in tty
    piped = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert piped.returncode == code
    assert "\r" not in piped.stderr and "ex/s" not in piped.stderr and "it/s" not in piped.stderr


@pytest.mark.slow
def test_audit_progress_bar_on_a_terminal_only(tmp_path):
    argv = [
        _sftdata(),
        "audit",
        "examples/messages.jsonl",
        "--model",
        "smollm2-135m-instruct",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    code, _, tty = _run_with_tty_stderr(argv, REPO)
    assert code in (0, 1), tty
    assert "audit" in tty and "\r" in tty and "ex" in tty, tty
    piped = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert "\r" not in piped.stderr and "ex/s" not in piped.stderr


def test_snippet_is_the_first_characters_with_whitespace_collapsed():
    """The findings' snippet: what collapsing the whitespace of the first 4 x width characters
    gives, cut to width (the shortcuts through the first width + 8 and 2 x width characters must
    not change it)."""

    def reference(text: str, width: int = 60) -> str:
        flat = " ".join(text[: width * 4].split())
        return flat if len(flat) <= width else flat[: width - 1] + "…"

    texts = ["", "short", "x" * 500, " " * 130 + "late start " * 20, "a\n\n\tb " * 40, "word " * 24, "w " * 70]
    texts += [" " * k + "abc def " * 30 for k in range(0, 240, 7)]
    # around the shortcut for text with nothing to collapse in its first width + 8 characters:
    # a space, a double space, a newline, a no-break space or a line separator at every place
    import random

    rng = random.Random(5)
    for k in range(0, 70):
        for ws in (" ", "  ", "\n", "\xa0", "\u2028", "\t "):
            t = "".join(rng.choice("abcdefgh") for _ in range(130))
            texts.append(t[:k] + ws + t[k:])
            texts.append(t[:k] + ws)
            texts.append(t[:k] + " " * 200 + t)
    for t in texts:
        for width in (0, 1, 10, 60):
            assert dedup.snippet(t, width) == reference(t, width), (t[:30], width)


def test_exact_groups_by_hash_equal_the_dict_of_texts():
    """dedup groups exact duplicates by each normalised text's 64-bit hash (computed by the signing
    workers) and confirms every group byte for byte: the same ids and first members as grouping
    the texts themselves, and a hash collision (forced here) falls back to that."""
    texts = ["a b c", "", "x y", "a b c", "z", "x y", "", "a b c", "q", "z"] * 3 + [f"t{i}" for i in range(50)]
    with minhash.SignStream(WORDS5, threads=2, batch_chars=8) as stream:
        for t in texts:
            stream.add(t)
        signed = stream.parts()  # many batches of a few texts
    norm = signed.normalized()
    assert norm.hashes is not None and len(norm.hashes) == len(texts) == len(signed)
    assert all(signed.text(i).tobytes() == norm.packed.text(i) for i in range(len(texts)))
    want_uid, want_first = dedup._exact_groups(norm.packed)
    for uid, first in (dedup._exact_groups(norm.packed, norm.hashes), dedup._exact_groups_parts(signed)):
        assert np.array_equal(uid, want_uid) and np.array_equal(first, want_first)
    collide = np.zeros(len(texts), np.uint64)  # every text "shares" one hash
    assert dedup._exact_groups_hashed(signed.lengths, collide, signed.text) is None
    uid, first = dedup._exact_groups(norm.packed, collide)
    assert np.array_equal(uid, want_uid) and np.array_equal(first, want_first)
    # the signatures of some rows, taken batch by batch, equal Signatures.take of the whole
    whole = signed.signatures()
    for rows in (want_first, np.array([], np.int64), np.arange(len(texts)), np.array([0, len(texts) - 1])):
        got, want = signed.signatures(rows), whole.take(rows)
        for field in ("hashvalues", "fingerprints", "offsets", "char_shingled"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), field
    with pytest.raises(ValueError):
        signed.signatures(np.array([3, 1]))


def test_nfkc_by_decomposing_compatibility_characters_first_equals_unicodedata():
    """Texts that are not NFKC get their compatibility characters replaced by their NFKD before
    NFKC (often leaving nothing for NFKC to do): the result must be unicodedata's NFKC exactly,
    including next to combining marks, Hangul jamo and characters that compose."""
    import random
    import unicodedata

    table = minhash._nfkd_table()
    assert {0xA0, 0x2026, 0xB2, 0xBC, 0x2122} <= set(table)
    tricky = ["\u0301", "\u0304", "\u0338", "\u0327", "e", "M", "\u1100", "\u1161", "\u11a8", "\u0bc6", "\u0bbe", "가"]
    tricky += [" ", "\U0001d400", "😀", "ß", "İ", "\u00e9", "e\u0301", "\ud800"]
    pool = [chr(c) for c in table] + tricky * 50
    for c in table:  # every replaced character alone and before a combining mark
        for t in (chr(c), chr(c) + "\u0301", "a" + chr(c) + "\u0327\u0301"):
            assert minhash._nfkc(t) == unicodedata.normalize("NFKC", t), hex(c)
    rng = random.Random(7)
    for _ in range(20_000):
        t = "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
        assert minhash._nfkc(t) == unicodedata.normalize("NFKC", t), ascii(t)


_FAST_LOAD_PROBE = """
import json, sys
from sftdata.cli import main
rc = main(["dedup", sys.argv[1], "--json", "--threshold", "0.7"])
print(json.dumps({"rc": rc, "registries": "numba.np.linalg" in sys.modules}), file=sys.stderr)
"""


def test_cli_kernel_loading_without_registries_gives_the_same_result(tmp_path):
    """The CLI loads its cached kernels without numba's compile-time registries (only on tested
    numba versions; SFTDATA_NUMBA_FAST_LOAD=0 turns it off): the kernels run and the run reports
    exactly what numba's own loading gives. Each side in a fresh process."""
    import numba

    from sftdata.cli import dedup as cli_dedup

    rows = [{"instruction": f"say {w} {w} and then stop", "output": f"{w} {w} now"} for w in "abcdefgh"]
    rows += rows[:3] + [{"instruction": "say a a and then stop please", "output": "a a now"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = {}
    for flag in ("0", "1"):
        proc = subprocess.run(
            [sys.executable, "-c", _FAST_LOAD_PROBE, str(path)],
            env={**os.environ, "SFTDATA_NUMBA_FAST_LOAD": flag, "SFTDATA_AOT": "0"},  # numba's loading
            capture_output=True,
            text=True,
            check=False,
        )
        status = json.loads(proc.stderr.strip().splitlines()[-1])
        result = json.loads(proc.stdout)
        result["summary"].pop("seconds")
        result["summary"].pop("kernel_seconds")
        out[flag] = (status, result)
    assert out["0"][1] == out["1"][1]
    assert out["1"][0]["rc"] == 1 and out["1"][1]["summary"]["removed"] >= 3
    assert out["0"][0]["registries"]  # numba's own loading installs them
    if numba.__version__.startswith(cli_dedup._FAST_LOAD_NUMBA):
        assert not out["1"][0]["registries"]


_PANDAS_PROBE = """
import sys
from sftdata import rundir
import_ok = rundir.pyarrow_without_pandas()
import pyarrow as pa
table = pa.table({"a": pa.array([1, 2]), "b": pa.array(["x", None])})
before = "pandas" in sys.modules
frame = table.to_pandas()  # an explicit conversion still imports pandas
print(import_ok, before, type(frame).__module__.split(".")[0], frame["a"].tolist(), "pandas" in sys.modules)
"""


def test_run_dir_without_importing_pandas_writes_the_same_files(tmp_path):
    """The `sftdata` command (a process of its own) lets pyarrow settle that pandas is absent
    before writing dedup/*.parquet, so no pandas import (0.4 s) happens; the files equal those a
    caller's in-process `main([...])` writes (pyarrow's pandas checks left as they are). In that
    process pyarrow's explicit pandas conversion still works."""
    import pyarrow.parquet as pq

    probe = subprocess.run([sys.executable, "-c", _PANDAS_PROBE], capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["True", "False", "pandas", "[1,", "2]", "True"], probe.stdout + probe.stderr

    rows = [{"instruction": f"say {w} {w} and then stop", "output": f"{w} {w} now"} for w in "abcdefgh"]
    rows += rows[:3] + [{"instruction": "say a a and then stop please", "output": "a a now"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code = (
        "import sys\n"
        "from sftdata.cli import main\n"
        "main()\n"  # the console script's path: this process is the command's (kit.WHOLE_PROCESS)
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "dedup", str(data), "--threshold", "0.7", "--run-dir", str(tmp_path / "cmd")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert cmd_dedup.main([str(data), "--threshold", "0.7", "--run-dir", str(tmp_path / "lib")]) == 1
    for name in ("clusters.parquet", "pairs.parquet"):
        a, b = (pq.read_table(tmp_path / d / "dedup" / name) for d in ("cmd", "lib"))
        assert a.num_rows > 0 and a.equals(b) and a.schema.metadata == b.schema.metadata, name
    a, b = ((tmp_path / d / "dedup" / "findings.jsonl").read_text(encoding="utf-8") for d in ("cmd", "lib"))
    assert a == b and a.count("\n") >= 3
