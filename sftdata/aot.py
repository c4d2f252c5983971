"""Ahead-of-time compiled kernels: dedup's compiled entry points built once into a native
extension module, so that a command loads them without importing numba.

`sftdata dedup` runs seven compiled kernels (`minhash._AOT_EXPORTS`, `dedup._AOT_EXPORTS`).
Through numba's JIT every process pays for `import numba` (0.3 s) and for loading the kernels
from numba's on-disk cache (0.17 s): 10% of a whole T0 run. `python -m sftdata.aot` (which
`scripts/setup.sh` runs) compiles the same Python functions with the same numba compiler into one
extension module (numba's `pycc`) for this machine's CPU; importing it takes milliseconds. Where
it is missing, out of date or turned off, everything runs through numba's JIT as before.

- Where: `SFTDATA_KERNEL_DIR`, else `__pycache__` next to this file (as numba's own cache).
- Which: the file name carries a key of what the machine code depends on: the sources of
  minhash.py, dedup.py and this file as the process imported them, the Python and numpy versions,
  numba's and llvmlite's version files, the CPU (model and feature flags, from /proc/cpuinfo:
  Linux only) and SFTDATA_SHA_NI. A change to any of them means another name, so a stale module
  is never loaded; `build` deletes the same environment's builds beyond the 3 most recent.
- When not: `SFTDATA_AOT=0`, or any of NUMBA_DISABLE_JIT, NUMBA_CPU_NAME, NUMBA_CPU_FEATURES,
  NUMBA_BOUNDSCHECK, NUMBA_OPT set (someone debugging, tuning or cross-compiling with numba gets
  numba; `build` refuses to run under them), or no /proc/cpuinfo.
- Same code: the kernels are compiled from the same functions with the helpers numba inlines,
  for the host CPU's model and features as the JIT does, each releasing the GIL as `nogil=True`
  does (pycc's wrappers hold it; the build asks for the release). Each entry point refuses what
  numba's dispatcher refuses with an explicit signature: arrays of another dtype, dimension or
  layout, read-only arrays, non-numbers (a wrong array would otherwise be read as raw memory).
  Tests compare every kernel and a whole dedup run with numba's JIT.

numba's pycc is marked "pending deprecation"; should it go away, the build fails with a message
and the JIT path is what runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
# the modules whose `_AOT_EXPORTS` ({function name: numba signature}) are built, by export prefix
MODULES = {"minhash": "sftdata.minhash", "dedup": "sftdata.dedup"}
_SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # this file as imported
_PREFIX = "sftdata_kernels_"
_NUMBA_OVERRIDES = ("NUMBA_DISABLE_JIT", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_BOUNDSCHECK", "NUMBA_OPT")

_lock = threading.Lock()
_UNSET: Any = object()
_loaded: Any = _UNSET  # the module, None (not available), or _UNSET (not looked for yet)


def directory() -> Path:
    """Where the module is built and looked for."""
    return Path(os.environ.get("SFTDATA_KERNEL_DIR") or PACKAGE / "__pycache__")


def disabled_by() -> str | None:
    """Why the ahead-of-time kernels are off, if they are: SFTDATA_AOT=0, a numba setting that
    changes what numba compiles (its JIT then runs, as asked), or a system without /proc/cpuinfo
    to key the CPU's features by."""
    if os.environ.get("SFTDATA_AOT", "1").strip() == "0":
        return "SFTDATA_AOT=0"
    if not os.path.isfile("/proc/cpuinfo"):
        return "no /proc/cpuinfo (ahead-of-time kernels are built on Linux only)"
    for name in _NUMBA_OVERRIDES:
        value = os.environ.get(name, "").strip()
        if value and (value != "0" or name == "NUMBA_OPT"):  # NUMBA_OPT=0 is a level: unoptimised
            return f"{name}={value}"
    return None


def key() -> str:
    """16 hex digits naming the module these sources need on this machine: the sources as this
    process imported them (a process that imported older ones never loads a newer build)."""
    h = hashlib.sha256()
    for digest in source_digests():
        h.update(digest.encode())
    h.update(environment().encode())
    return h.hexdigest()[:16]


def source_digests() -> list[str]:
    """SHA-256 of minhash.py, dedup.py and this file as they were when imported."""
    from sftdata import dedup, minhash

    return [minhash._SOURCE_DIGEST, dedup._SOURCE_DIGEST, _SOURCE_DIGEST]


def environment() -> str:
    """What the machine code depends on besides the sources: Python, numpy, numba and llvmlite
    versions, the CPU (model and feature flags) and the SHA-NI switch."""
    sha_ni = os.environ.get("SFTDATA_SHA_NI", "1").strip() != "0"
    versions = "|".join(_version_file(m) for m in ("numba", "llvmlite"))
    return f"{sys.version}|{np.__version__}|{platform.machine()}|{versions}|sha_ni={sha_ni}|{_cpu()}"


def module_name() -> str:
    return _PREFIX + key()


def path() -> Path:
    """The module file this machine and these sources need (it may not exist)."""
    return directory() / (module_name() + importlib.machinery.EXTENSION_SUFFIXES[0])


def _version_file(package: str) -> str:
    """A package's _version.py (found without importing it), or '' when it is not installed."""
    spec = importlib.util.find_spec(package)
    for where in (spec.submodule_search_locations or []) if spec else []:
        try:
            return (Path(where) / "_version.py").read_text(encoding="utf-8")
        except OSError:
            continue
    return ""


def _cpu() -> str:
    """The CPU the code is compiled for: vendor, model and feature flags of the first processor in
    /proc/cpuinfo (hence Linux only: elsewhere `disabled_by` says so)."""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        block = f.read().split("\n\n", 1)[0]
    keep = ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(ln for ln in block.splitlines() if ln.split(":", 1)[0].strip() in keep)


def load() -> Any:
    """The built module for this machine and these sources, imported once; None when there is
    none (or it is turned off, or fails to import: then numba's JIT runs)."""
    global _loaded
    if _loaded is _UNSET:
        with _lock:
            if _loaded is _UNSET:
                _loaded = _load()
    return _loaded


def _load() -> Any:
    if disabled_by() is not None:
        return None
    try:
        file = path()
        if not file.is_file():
            return None
        spec = importlib.util.spec_from_file_location(module_name(), file)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as e:
        log.warning("ahead-of-time kernels %s not loaded (%s); using numba's JIT", directory(), e)
        return None
    return module


def bind(namespace: dict[str, Any], prefix: str, exports: dict[str, str]) -> bool:
    """Put the entry points `exports` of module `prefix` (minhash, dedup) from the built module
    into `namespace` (that module's globals), each checking its arguments; False, changing
    nothing, when the module is not available (or lacks one of them): numba's JIT then runs."""
    module = load()
    if module is None:
        return False
    found = {name: getattr(module, prefix + name, None) for name in exports}
    if any(fn is None for fn in found.values()):
        log.warning("ahead-of-time kernels lack some of %s; using numba's JIT", sorted(exports))
        return False
    namespace.update({name: checked(name, fn, exports[name]) for name, fn in found.items()})
    return True


def in_use() -> bool:
    """Whether the ahead-of-time kernels are what runs (as far as loading goes)."""
    return load() is not None


# ---------------------------------------------------------------------------------------------
# Argument checks: what numba's dispatcher refuses with an explicit signature, refused here too


_DTYPES = {
    "boolean": np.dtype(np.bool_),
    "uint8": np.dtype(np.uint8),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "int64": np.dtype(np.int64),
    "float64": np.dtype(np.float64),
}


def parse_args(signature: str) -> list[tuple[np.dtype, int]]:
    """The argument types of a numba signature string "RET(ARG, ...)" whose arguments are C
    arrays ("uint8[::1]", "uint32[:, ::1]") or int64 scalars: (dtype, ndim) per argument, ndim 0
    for a scalar."""
    depth, start = 0, len(signature)
    for i in range(len(signature) - 1, -1, -1):  # the last top-level parenthesised group
        c = signature[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
            if depth == 0:
                start = i
                break
    body = signature[start + 1 : -1]
    args, depth, cur = [], 0, ""
    for c in body:
        if c == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        if c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        cur += c
    if cur.strip():
        args.append(cur.strip())
    out = []
    for a in args:
        name, _, dims = a.partition("[")
        if name not in _DTYPES:
            raise ValueError(f"unsupported argument type {a!r} in {signature!r}")
        if dims and not dims.rstrip("]").replace(" ", "").endswith("::1"):
            raise ValueError(f"only C-contiguous arrays are supported: {a!r}")
        out.append((_DTYPES[name], dims.count(":") - 1 if dims else 0))
    return out


def checked(name: str, fn: Callable[..., Any], signature: str) -> Callable[..., Any]:
    """fn with its arguments checked against `signature` (see `parse_args`): arrays (or ndarray
    subclasses such as np.memmap) of exactly the dtype, dimensions and C layout, writeable;
    integers, or floats converted to integers, for int64 scalars."""
    specs = parse_args(signature)

    def call(*args: Any) -> Any:
        if len(args) != len(specs):
            raise TypeError(f"{name}() takes {len(specs)} arguments, got {len(args)}")
        for k, (a, (dtype, ndim)) in enumerate(zip(args, specs)):
            if ndim == 0:
                if isinstance(a, (float, np.floating)):  # numba's dispatcher converts it too
                    args = (*args[:k], int(a), *args[k + 1 :])
                elif not isinstance(a, (int, np.integer)):
                    raise TypeError(f"{name}(): argument {k} must be a number, got {type(a).__name__}")
            elif not (
                isinstance(a, np.ndarray)
                and a.dtype == dtype
                and a.ndim == ndim
                and a.flags.c_contiguous
                and a.flags.aligned
                and a.flags.writeable
            ):
                got = f"{a.dtype}, {a.ndim}-d, flags {a.flags.num}" if isinstance(a, np.ndarray) else type(a).__name__
                raise TypeError(
                    f"{name}(): argument {k} must be a writeable C-contiguous {ndim}-d {dtype} array, got {got}"
                )
        return fn(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{name}, compiled ahead of time: {signature}"
    return call


# ---------------------------------------------------------------------------------------------
# Building


def build(directory_: Path | None = None, *, force: bool = False) -> Path:
    """Compile the kernels into `directory_` (default `directory()`) unless this key's module is
    there already (or `force`); prune older builds (`_remove_outdated`). Returns the module's path.
    Written under a temporary name and renamed, so a reader never sees half a file. Raises
    RuntimeError (with the reason) when it cannot be built."""
    why = disabled_by()
    if why is not None:  # e.g. NUMBA_CPU_NAME would build for another CPU under this one's key
        raise RuntimeError(f"not built: {why}")
    where = Path(directory_) if directory_ is not None else directory()
    name = module_name()
    target = where / (name + importlib.machinery.EXTENSION_SUFFIXES[0])
    if target.is_file() and not force:
        return target
    where.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        from numba.core import codegen
        from numba.core.compiler import Flags
        from numba.pycc import CC
        from numba.pycc import compiler as pycc_compiler
    except ImportError as e:
        raise RuntimeError(f"numba's ahead-of-time compiler is not available ({e})") from None
    cc = CC(name)
    cc.target_cpu = "host"
    cc.verbose = False
    for prefix, module_path in MODULES.items():
        module = importlib.import_module(module_path)
        module._jit_numba()  # every helper bound as numba compiles it, next to the entry points' Python functions
        for fn_name, signature in module._AOT_EXPORTS.items():
            dispatcher = getattr(module, fn_name)
            cc.export(prefix + fn_name, signature)(dispatcher.py_func)

    class _GilFreeFlags(Flags):  # what njit(nogil=True) sets: the wrappers release the GIL
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = True

    host_features = codegen.AOTCPUCodegen._customize_tm_features
    before_flags = pycc_compiler.Flags
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=where))
    try:
        pycc_compiler.Flags = _GilFreeFlags
        # pycc compiles for the CPU model's features; the JIT uses the features the host reports
        # (a virtual machine can hide some of its model's): the same here
        codegen.AOTCPUCodegen._customize_tm_features = lambda self: self._get_host_cpu_features()
        cc.output_dir = str(tmp)
        try:
            cc.compile()
        except Exception as e:  # noqa: BLE001 - compiler, linker or distutils: say why, the JIT still runs
            raise RuntimeError(f"compiling the kernels failed: {type(e).__name__}: {e}") from e
        built = tmp / target.name
        if not built.is_file():
            raise RuntimeError(f"the compiler wrote no {target.name}")
        manifest = {
            "module": name,
            "environment": hashlib.sha256(environment().encode()).hexdigest()[:16],
            "numba": _numba_version(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "sha_ni": importlib.import_module("sftdata.minhash")._use_sha_ni(),
            "seconds": round(time.perf_counter() - t0, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "exports": {p: sorted(importlib.import_module(m)._AOT_EXPORTS) for p, m in MODULES.items()},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        # the manifest first: a module is never there without it (`_remove_outdated` goes by manifests)
        os.replace(tmp / "manifest.json", target.with_name(name + ".json"))
        os.replace(built, target)
    finally:
        pycc_compiler.Flags = before_flags
        codegen.AOTCPUCodegen._customize_tm_features = host_features
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_outdated(where, name, manifest["environment"])
    return target


_KEEP_BUILDS = 3  # other builds of one environment kept (worktrees or branches sharing a folder)


def _remove_outdated(where: Path, name: str, env: str) -> None:
    """Delete the builds here of this same environment but other sources beyond the
    _KEEP_BUILDS most recent (two worktrees sharing the folder do not delete each other's), and
    build folders a killed build left. Builds of other environments (another Python, CPU or numba
    sharing the folder) stay; what cannot be deleted is left."""
    mine = []
    for manifest in where.glob(_PREFIX + "*.json"):
        other = manifest.name[: -len(".json")]
        if other == name:
            continue
        try:
            if json.loads(manifest.read_text(encoding="utf-8")).get("environment") == env:
                mine.append((manifest.stat().st_mtime, other))
        except (OSError, ValueError, AttributeError):
            continue
    for _, other in sorted(mine, reverse=True)[_KEEP_BUILDS:]:
        for file in where.glob(other + ".*"):
            try:
                file.unlink()
            except OSError:
                continue
    for tmp in where.glob(".build-*"):
        try:
            if time.time() - tmp.stat().st_mtime > 3600:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def _numba_version() -> str:
    try:
        import numba

        return str(numba.__version__)
    except ImportError:
        return ""


def status() -> dict[str, Any]:
    """What `python -m sftdata.aot --status` prints."""
    file = path()
    info: dict[str, Any] = {"path": str(file), "built": file.is_file(), "disabled_by": disabled_by()}
    manifest = file.with_name(module_name() + ".json")
    if manifest.is_file():
        info["manifest"] = json.loads(manifest.read_text(encoding="utf-8"))
    info["in_use"] = in_use()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sftdata.aot",
        description="Compile sftdata dedup's kernels ahead of time for this machine (0.5 s less per "
        "`sftdata dedup`: no numba import, no cache load). Without this, numba compiles them on "
        "first use and loads them from its cache in every process.",
    )
    ap.add_argument("--dir", help="where to write the module (default: $SFTDATA_KERNEL_DIR or sftdata/__pycache__)")
    ap.add_argument("--force", action="store_true", help="build even when an up-to-date module exists")
    ap.add_argument("--status", action="store_true", help="print what is built and whether it is used, as JSON")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing when the module is up to date")
    args = ap.parse_args(argv)
    if args.dir:
        os.environ["SFTDATA_KERNEL_DIR"] = args.dir
    if args.status:
        print(json.dumps(status(), indent=1))
        return 0
    existed = path().is_file()
    t0 = time.perf_counter()
    try:
        target = build(force=args.force)
    except Exception as e:  # noqa: BLE001 - whatever stops the build, dedup still runs on numba's JIT
        sys.stderr.write(
            f"sftdata.aot: could not build the ahead-of-time kernels: {e}\n"
            "  sftdata dedup still works: numba compiles the kernels on first use (about 0.5 s more per run)\n"
        )
        return 1
    if existed and not args.force:
        if not args.quiet:
            print(f"sftdata.aot: up to date: {target}")
    else:
        print(f"sftdata.aot: built {target} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
