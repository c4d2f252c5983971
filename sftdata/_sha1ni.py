"""SHA-1 with the x86 SHA extensions (SHA-NI), for the MinHash kernels in `minhash`.

`minhash` hashes every shingle with SHA-1 (datasketch's hash, so the signatures stay bit-identical).
Its portable kernel runs 32 messages through the rounds as SIMD lanes. On CPUs with the SHA
extensions (AMD Zen and later, Intel Goldmont, Ice Lake and later) the `sha1rnds4` family does four
rounds in one instruction; numba has no way to emit them, so this module writes the LLVM IR itself
and hands it to numba as an intrinsic (`numba.extending.intrinsic`). On T0's 9.9M shingles (one
64-byte block each) it takes 0.67 s against the SIMD kernel's 1.5 s on an AMD EPYC (znver1): see
BENCHMARKS.md.

Imported by `minhash._jit` only when `available()` says the CPU has the instructions and numba
compiles for this host; numba and llvmlite are imported here at module level, so `import
sftdata.minhash` still does not import them.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

WAYS = 2  # messages hashed together: two independent round chains hide sha1rnds4's latency

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V16, _V4 = ir.VectorType(_I8, 16), ir.VectorType(_I32, 4)
_FEATURES = ("sha", "ssse3", "sse4.1")


def available() -> bool:
    """Whether the kernels may use SHA-NI: an x86-64 CPU with the SHA, SSSE3 and SSE4.1
    extensions, numba compiling for the host CPU (not NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, which
    build for other machines), and SFTDATA_SHA_NI not set to 0 (the portable kernel then)."""
    if os.environ.get("SFTDATA_SHA_NI", "1").strip() == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if config.CPU_NAME or config.CPU_FEATURES:
        return False
    try:
        import llvmlite.binding as llb

        features = llb.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - no feature list on this host: use the portable kernel
        return False
    return all(features.get(f, False) for f in _FEATURES)


def _declare(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    try:
        return module.get_global(name)
    except KeyError:
        return ir.Function(module, ir.FunctionType(ret, args), name=name)


def _splat(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    v = b.insert_element(ir.Constant(_V16, None), x, ir.Constant(_I32, 0))
    return b.shuffle_vector(v, ir.Constant(_V16, None), ir.Constant(ir.VectorType(_I32, 16), [0] * 16))


def _define(module: ir.Module) -> ir.Function:
    """`void sftdata_sha1ni(i8* buf, i64* start, i64* length, i64 nblocks, i64* out)`: SHA-1 of
    the WAYS messages buf[start[j]:start[j] + length[j]], each `nblocks` 64-byte blocks once padded;
    out[j] = the first 8 digest bytes, big-endian. Reads whole blocks: buf needs 72 readable bytes
    after every message. The padded blocks are built in registers from the loaded bytes: message
    bytes below the remaining length, 0x80 at it, zeros after, the bit length in the last block."""
    name = "sftdata_sha1ni"
    try:
        return module.get_global(name)
    except KeyError:
        pass
    i64p = _I64.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_I8.as_pointer(), i64p, i64p, _I64, i64p]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    buf, starts, lens, nblocks, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    rnds4 = _declare(module, "llvm.x86.sha1rnds4", _V4, [_V4, _V4, _I8])
    nexte = _declare(module, "llvm.x86.sha1nexte", _V4, [_V4, _V4])
    msg1 = _declare(module, "llvm.x86.sha1msg1", _V4, [_V4, _V4])
    msg2 = _declare(module, "llvm.x86.sha1msg2", _V4, [_V4, _V4])
    c64 = ir.Constant(_I64, 64)
    # state as the instructions want it: A B C D in lanes 3..0, E in lane 3 of its own vector
    start = [b.load(b.gep(starts, [ir.Constant(_I64, j)])) for j in range(WAYS)]
    length = [b.load(b.gep(lens, [ir.Constant(_I64, j)])) for j in range(WAYS)]
    abcd_at = [b.alloca(_V4) for _ in range(WAYS)]
    e_at = [b.alloca(_V4) for _ in range(WAYS)]
    for j in range(WAYS):
        b.store(ir.Constant(_V4, [0x10325476, 0x98BADCFE, 0xEFCDAB89, 0x67452301]), abcd_at[j])
        b.store(ir.Constant(_V4, [0, 0, 0, 0xC3D2E1F0]), e_at[j])
    reverse = ir.Constant(ir.VectorType(_I32, 16), list(range(15, -1, -1)))  # 16 bytes -> 4 big-endian words
    with cgutils.for_range(b, nblocks) as loop:
        base = b.mul(loop.index, c64)
        last = b.icmp_unsigned("==", loop.index, b.sub(nblocks, ir.Constant(_I64, 1)))
        words: list[list[Any]] = []
        for j in range(WAYS):
            left = b.sub(length[j], base)  # message bytes from this block on: clamped to -1 .. 64
            left = b.select(b.icmp_signed("<", left, ir.Constant(_I64, -1)), ir.Constant(_I64, -1), left)
            left = b.select(b.icmp_signed(">", left, c64), c64, left)
            left = _splat(b, b.trunc(left, _I8))
            at = b.gep(buf, [b.add(start[j], base)])
            w = []
            for c in range(4):
                data = b.load(b.bitcast(b.gep(at, [ir.Constant(_I64, 16 * c)]), _V16.as_pointer()), align=1)
                index = ir.Constant(_V16, [16 * c + i for i in range(16)])
                pad = b.select(
                    b.icmp_signed("==", index, left), ir.Constant(_V16, [0x80] * 16), ir.Constant(_V16, [0] * 16)
                )
                data = b.select(b.icmp_signed("<", index, left), data, pad)
                word = b.bitcast(b.shuffle_vector(data, ir.Constant(_V16, None), reverse), _V4)
                if c == 3:  # words 14 and 15 (lanes 1 and 0) of the last block: the length in bits
                    bits = b.mul(length[j], ir.Constant(_I64, 8))
                    tail = b.insert_element(word, b.trunc(bits, _I32), ir.Constant(_I32, 0))
                    tail = b.insert_element(
                        tail, b.trunc(b.lshr(bits, ir.Constant(_I64, 32)), _I32), ir.Constant(_I32, 1)
                    )
                    word = b.select(last, tail, word)
                w.append(word)
            words.append(w)
        # 80 rounds, four per sha1rnds4; the WAYS messages interleaved step by step
        abcd = [b.load(abcd_at[j]) for j in range(WAYS)]
        e0 = [b.load(e_at[j]) for j in range(WAYS)]
        prev = list(abcd)
        for j in range(WAYS):
            abcd[j] = b.call(rnds4, [abcd[j], b.add(e0[j], words[j][0]), ir.Constant(_I8, 0)])
        for g in range(1, 20):
            for j in range(WAYS):
                w = words[j]
                if g >= 4:  # schedule words 4g .. 4g+3 from the 16 before them
                    w.append(b.call(msg2, [b.xor(b.call(msg1, [w[g - 4], w[g - 3]]), w[g - 2]), w[g - 1]]))
                e = b.call(nexte, [prev[j], w[g]])
                prev[j] = abcd[j]
                abcd[j] = b.call(rnds4, [abcd[j], e, ir.Constant(_I8, g // 5)])
        for j in range(WAYS):
            b.store(b.call(nexte, [prev[j], e0[j]]), e_at[j])
            b.store(b.add(abcd[j], b.load(abcd_at[j])), abcd_at[j])
    for j in range(WAYS):
        v = b.load(abcd_at[j])
        h0 = b.zext(b.extract_element(v, ir.Constant(_I32, 3)), _I64)
        h1 = b.zext(b.extract_element(v, ir.Constant(_I32, 2)), _I64)
        b.store(b.or_(b.shl(h0, ir.Constant(_I64, 32)), h1), b.gep(out, [ir.Constant(_I64, j)]))
    b.ret_void()
    return fn


@intrinsic
def sha1ni(typingctx: Any, buf: Any, start: Any, length: Any, nblocks: Any, out: Any) -> Any:
    """In numba code: `sha1ni(buf, start, length, nblocks, out)` with a uint8 buffer, int64 arrays
    start/length of WAYS messages, all of `nblocks` padded blocks, and a uint64 array `out` (WAYS)."""
    sig = types.void(buf, start, length, nblocks, out)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        fn = _define(builder.module)
        ptrs = [
            context.make_array(t)(context, builder, v).data if isinstance(t, types.Array) else v
            for t, v in zip(sig.args, args)
        ]
        builder.call(fn, ptrs)
        return context.get_dummy_value()

    return sig, codegen
