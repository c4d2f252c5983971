"""The ahead-of-time kernels (sftdata/aot.py): built with numba's pycc for this machine, loaded
without numba, equal to numba's JIT kernel by kernel and on a whole dedup run, refusing wrong
argument types, releasing the GIL, and never used when stale or turned off."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sftdata import aot, dedup, minhash

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SFTLAB_SHARED_DATA") or REPO.parent / "shared" / "data")


def _texts() -> list[str]:
    """Real texts: the shared LLaMA-Factory English and Chinese demos where present (CJK texts
    take the character-shingle path), else the bundled examples; plus near and exact copies,
    empty and one-word texts."""
    texts: list[str] = []
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        path = SHARED / "llamafactory" / name
        if path.is_file():
            rows = json.loads(path.read_text(encoding="utf-8"))[:400]
            texts += [f"{r.get('instruction', '')} {r.get('input', '')} {r.get('output', '')}" for r in rows]
    if not texts:
        for path in sorted((REPO / "examples").glob("*.json*")):
            texts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    variants = [t.replace(" the ", " a ", 1) for t in texts[::3]]
    return texts + variants + texts[:20] + ["", "word", "Ünïcödé ß straße ﬁne …", "中文 文本 " * 30]


_PROBE = r"""
import json, sys, threading, time
import numpy as np
from sftdata import aot, dedup, minhash

texts = json.load(open(sys.argv[1], encoding="utf-8"))
report = {}
dedup.load_kernels()
report["numba_imported"] = "numba" in sys.modules
report["compiled_by"] = minhash.compiled_by()


def kernels():
    return {n: getattr(minhash, n) for n in minhash._AOT_EXPORTS} | {n: getattr(dedup, n) for n in dedup._AOT_EXPORTS}


def run(k):
    buf, nchars = minhash._prepare(texts)
    fold, word = minhash._tables()
    norm = k["_normalize_batch"](buf, nchars, fold, word)
    out, off = norm[0], norm[1]
    end = int(off[-1])  # the kernel's buffer is longer: bytes past the end are not written
    body = np.zeros(end + 128, np.uint8)
    body[:end] = out[:end]
    hashes = k["_hash_texts"](body, off)
    is_chars, size = minhash._shingling(norm[3], minhash.ShingleSpec("words", 5))
    hv, fps, counts = k["_sign_batch"](body, off, is_chars, size, *minhash.permutations(128, 1))
    offsets = minhash._offsets(counts)
    keys, koff = k["_sets_kernel"](fps, offsets, np.arange(len(counts)) % 3 != 1)
    band = dedup._band_keys(hv, dedup.lsh_params(0.5))[0]
    order = np.argsort(band, kind="stable")
    codes, big = k["_band_pairs_kernel"](order, band[order], 3)
    n = min(len(counts), 300)
    left, right = (np.ascontiguousarray(a.ravel()) for a in np.triu_indices(n, 1))
    est = k["_estimate_kernel"](hv, left, right)
    jac = k["_jaccard_kernel"](keys, koff, left, right)
    return [out[:end], *norm[1:], hashes, hv, fps, counts, keys, koff, codes, np.array([big]), est, jac], (keys, koff, left, right)


got, (keys, koff, left, right) = run(kernels())
aot_kernels = kernels()

# the GIL: the main thread runs while a worker is inside a kernel (its steps time-stamped inside
# the kernel's window; with the GIL held there are none: the main thread waits for the return)
reps = max(10, 3_000_000 // len(left))  # a long call (~0.3 s and more), whatever the texts
many_l, many_r = np.tile(left, reps), np.tile(right, reps)
started, window, stamps = threading.Event(), [], []
def work():
    started.set()
    t0 = time.perf_counter()
    aot_kernels["_jaccard_kernel"](keys, koff, many_l, many_r)
    window[:] = [t0, time.perf_counter()]
worker = threading.Thread(target=work)
worker.start()
started.wait()
while worker.is_alive():
    stamps.append(time.perf_counter())
t0, t1 = window
report["kernel_seconds"] = t1 - t0
report["main_thread_steps_during_kernel"] = sum(t0 + 0.01 < s < t1 - 0.01 for s in stamps)

# wrong argument types are refused, not read as raw memory
refused = []
for bad in (
    lambda: aot_kernels["_jaccard_kernel"](keys, koff.astype(np.int32), left, right),
    lambda: aot_kernels["_jaccard_kernel"](keys, koff, np.repeat(left, 2)[::2], right),
    lambda: aot_kernels["_jaccard_kernel"](keys, koff, left),
    lambda: aot_kernels["_band_pairs_kernel"](left, keys[: len(left)], "2"),
):
    try:
        bad()
        refused.append(False)
    except TypeError:
        refused.append(True)
report["refused"] = refused

minhash._jit_numba()
dedup._jit_numba()
report["after_numba"] = minhash.compiled_by()
want, _ = run(kernels())
report["equal"] = [bool(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)) for a, b in zip(got, want)]
report["sizes"] = [int(a.size) for a in got]
print(json.dumps(report))
"""

_CLI = r"""
import json, sys
from sftdata.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "numba_imported": "numba" in sys.modules}), file=sys.stderr)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SFTDATA_AOT", "SFTDATA_KERNEL_DIR", "SFTDATA_SHA_NI")}
    return {**env, **extra}


def test_build_load_and_agree_with_numba(tmp_path):
    """`python -m sftdata.aot --dir D` builds the module named by this machine's key (and removes
    this environment's builds beyond the 3 most recent); loaded from D, no numba is imported, every kernel gives numba's JIT
    results bit for bit on real texts, a worker inside a kernel lets the main thread run, wrong
    argument types raise TypeError; and `sftdata dedup` reports exactly what it reports with
    numba's JIT."""
    kdir = tmp_path / "kernels"
    kdir.mkdir()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    env_digest = hashlib.sha256(aot.environment().encode()).hexdigest()[:16]

    # four older builds of this environment (the oldest is deleted by the build: the 3 most
    # recent stay, for worktrees sharing a folder) and one of another environment sharing the
    # folder, e.g. another Python or CPU (kept)
    def files(k: str) -> list[Path]:
        return [kdir / (f"sftdata_kernels_{k}" + suffix), kdir / f"sftdata_kernels_{k}.json"]

    olds = [files(f"{i:016x}") for i in range(4)]
    other = files("fedcba9876543210")
    for age, (module, manifest) in enumerate(olds):
        module.write_bytes(b"old")
        manifest.write_text(json.dumps({"environment": env_digest}))
        os.utime(manifest, (1e9 + age, 1e9 + age))  # olds[0] is the oldest
    other[0].write_bytes(b"old")
    other[1].write_text(json.dumps({"environment": "another"}))
    stale, recent = olds[0], [p for f in olds[1:] for p in f]
    build = subprocess.run(
        [sys.executable, "-m", "sftdata.aot", "--dir", str(kdir)], env=_env(), capture_output=True, text=True
    )
    if build.returncode != 0 and "could not build" in build.stderr and not _can_build():
        pytest.skip(f"no C compiler or Python headers to build with: {build.stderr.strip()}")
    assert build.returncode == 0, build.stdout + build.stderr
    assert "built" in build.stdout
    env = _env(SFTDATA_KERNEL_DIR=str(kdir))
    key = subprocess.run(
        [sys.executable, "-c", "from sftdata import aot; print(aot.path())"], env=env, capture_output=True, text=True
    ).stdout.strip()
    assert Path(key).is_file() and Path(key).parent == kdir
    assert not any(p.exists() for p in stale) and all(p.exists() for p in other + recent)
    manifest = json.loads(Path(key).with_name(Path(key).name.split(".")[0] + ".json").read_text())
    assert set(manifest["exports"]["minhash"]) == set(minhash._AOT_EXPORTS)
    again = subprocess.run(
        [sys.executable, "-m", "sftdata.aot", "--dir", str(kdir)], env=_env(), capture_output=True, text=True
    )
    assert again.returncode == 0 and "up to date" in again.stdout

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(_texts(), ensure_ascii=False), encoding="utf-8")
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(texts)], env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)
    assert report["compiled_by"] == "aot" and not report["numba_imported"]
    assert report["after_numba"] == "numba"
    assert all(report["equal"]), report
    assert min(report["sizes"][:-3]) > 0  # every kernel produced something to compare
    assert all(report["refused"]), report["refused"]
    # the worker holds no GIL in the kernel: the main thread stepped on meanwhile (a module built
    # without the release gave 0 steps inside a 0.6 s kernel)
    assert report["kernel_seconds"] > 0.05, report
    assert report["main_thread_steps_during_kernel"] > 100, report

    # the module is there and up to date, and each switch turns it off
    probe_use = "from sftdata import aot; print(aot.in_use())"
    for name, value in (("", ""), ("SFTDATA_AOT", "0"), ("NUMBA_DISABLE_JIT", "1"), ("NUMBA_CPU_NAME", "generic")):
        use = subprocess.run(
            [sys.executable, "-c", probe_use],
            env={**env, **({name: value} if name else {})},
            capture_output=True,
            text=True,
        )
        assert use.stdout.strip() == ("True" if not name else "False"), (name, use.stdout, use.stderr)

    data = tmp_path / "train.jsonl"
    rows = [{"instruction": t[: len(t) // 2], "output": t[len(t) // 2 :]} for t in _texts() if t]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = {}
    for mode, run_env in (("aot", env), ("numba", _env(SFTDATA_KERNEL_DIR=str(kdir), SFTDATA_AOT="0"))):
        cli = subprocess.run(
            [sys.executable, "-c", _CLI, "dedup", str(data), "--json", "--threshold", "0.7"],
            env=run_env,
            capture_output=True,
            text=True,
        )
        status = json.loads(cli.stderr.strip().splitlines()[-1])
        result = json.loads(cli.stdout)
        assert status["rc"] == 1 and status["numba_imported"] == (mode == "numba"), (mode, status)
        assert result["summary"].pop("kernels") == mode
        for k in ("seconds", "kernel_seconds"):
            result["summary"].pop(k)
        out[mode] = result
    assert out["aot"] == out["numba"]
    assert out["aot"]["summary"]["removed"] >= 20


def _can_build() -> bool:
    import importlib.util
    import shutil
    import sysconfig

    return (
        bool(shutil.which("cc") or shutil.which("gcc"))
        and Path(sysconfig.get_paths()["include"], "Python.h").is_file()
        and importlib.util.find_spec("setuptools") is not None  # numba's pycc builds with it
    )


def test_stale_or_disabled_module_is_never_loaded(monkeypatch, tmp_path):
    """The key changes with SFTDATA_SHA_NI (and the sources, the CPU, the versions); a module
    under another key is not loaded; SFTDATA_AOT=0 and numba's own debugging/cross-compiling
    switches turn it off, and `build` refuses to build under them (NUMBA_CPU_NAME would compile
    for another CPU under this one's key). (That a real, current module is then not loaded: the
    build test.)"""
    monkeypatch.delenv("SFTDATA_SHA_NI", raising=False)
    k = aot.key()
    monkeypatch.setenv("SFTDATA_SHA_NI", "0")
    assert aot.key() != k
    monkeypatch.delenv("SFTDATA_SHA_NI")
    assert aot.key() == k
    monkeypatch.setenv("SFTDATA_KERNEL_DIR", str(tmp_path))
    (tmp_path / ("sftdata_kernels_0000000000000000" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"x")
    assert not aot.path().exists() and aot._load() is None
    monkeypatch.setenv("NUMBA_BOUNDSCHECK", "0")  # off, as unset
    assert aot.disabled_by() is None
    for name, value in (
        ("SFTDATA_AOT", "0"),
        ("NUMBA_CPU_NAME", "generic"),
        ("NUMBA_BOUNDSCHECK", "1"),
        ("NUMBA_OPT", "0"),
    ):
        monkeypatch.setenv(name, value)
        assert aot.disabled_by() is not None
        with pytest.raises(RuntimeError, match="not built"):
            aot.build(tmp_path)
        monkeypatch.delenv(name)
    assert aot.disabled_by() is None


def test_the_key_is_of_the_sources_as_imported():
    """A process that imported minhash.py before it changed on disk keeps the key of what it
    runs: it would never load a module built from the newer file."""
    assert aot.source_digests()[0] == minhash._SOURCE_DIGEST
    import hashlib as h

    assert minhash._SOURCE_DIGEST == h.sha256(Path(minhash.__file__).read_bytes()).hexdigest()
    before = aot.key()
    saved = minhash._SOURCE_DIGEST
    try:
        minhash._SOURCE_DIGEST = "0" * 64  # as if the file had changed since
        assert aot.key() != before
    finally:
        minhash._SOURCE_DIGEST = saved


def test_a_module_that_fails_to_import_falls_back(monkeypatch, tmp_path, caplog):
    """A file under the right name that is not a loadable module (a truncated copy, another
    platform's build) gives a warning and numba's JIT, not a crash."""
    monkeypatch.setenv("SFTDATA_KERNEL_DIR", str(tmp_path))
    aot.path().write_bytes(b"\x7fELF truncated")
    assert aot._load() is None
    assert "not loaded" in caplog.text


def test_argument_checks_follow_the_signatures():
    """Each entry point's wrapper takes exactly the C-contiguous arrays and integers of its numba
    signature and refuses the rest with TypeError, as numba's dispatcher does."""
    assert aot.parse_args(dedup._AOT_EXPORTS["_estimate_kernel"]) == [
        (np.dtype(np.uint32), 2),
        (np.dtype(np.int64), 1),
        (np.dtype(np.int64), 1),
    ]
    assert aot.parse_args(dedup._AOT_EXPORTS["_band_pairs_kernel"])[2] == (np.dtype(np.int64), 0)
    for exports in (minhash._AOT_EXPORTS, dedup._AOT_EXPORTS):
        for signature in exports.values():
            assert all(ndim in (0, 1, 2) for _, ndim in aot.parse_args(signature))
    f = aot.checked("f", lambda *a: a[2], "float64[::1](uint64[::1], uint32[:, ::1], int64)")
    ok = (np.zeros(4, np.uint64), np.zeros((2, 3), np.uint32), 5)
    assert f(*ok) == 5 and f(ok[0], ok[1], np.int64(5)) == 5
    assert f(ok[0], ok[1], 5.7) == 5 and type(f(ok[0], ok[1], 5.7)) is int  # numba converts a float too
    assert f(ok[0].view(np.memmap), ok[1], 1) == 1  # ndarray subclasses are arrays
    readonly = np.zeros(4, np.uint64)
    readonly.flags.writeable = False
    for bad in (
        (np.zeros(4, np.int64), ok[1], 5),  # dtype
        (np.zeros(8, np.uint64)[::2], ok[1], 5),  # not contiguous
        (ok[0], np.zeros((3, 2), np.uint32).T, 5),  # Fortran order
        (ok[0], np.zeros(6, np.uint32), 5),  # dimensions
        (readonly, ok[1], 5),  # numba's signature is of a writeable array
        (list(range(4)), ok[1], 5),  # not an array
        (ok[0], ok[1], "5"),  # not a number
        (ok[0], ok[1], None),
        ok[:2],  # too few
    ):
        with pytest.raises(TypeError):
            f(*bad)
    with pytest.raises(ValueError):
        aot.parse_args("float64[::1](float32[:](x))")
