"""sftdata.parallel: idle-CPU measurement, forked shard workers, the thread pipeline (the audit's
own parallel tests, byte-identical output included, are in test_audit.py)."""

from __future__ import annotations

import os
import threading

import pytest

from sftdata import parallel


def test_others_busy_excludes_this_process():
    S = parallel.CpuSample
    # 1 s window: the machine was busy 1.9 CPU-s, 0.9 of them this process's own: others used 1 CPU
    assert parallel.others_busy(S(10.0, 100.0, 5.0), S(11.0, 101.9, 5.9)) == pytest.approx(1.0)
    # this process alone kept the machine busy: nobody else uses a CPU
    assert parallel.others_busy(S(10.0, 100.0, 5.0), S(10.5, 100.5, 5.5)) == pytest.approx(0.0)
    assert parallel.others_busy(S(10.0, None, 5.0), S(11.0, None, 6.0)) is None  # no /proc/stat
    assert parallel.others_busy(S(10.0, 100.0, 5.0), S(10.01, 100.0, 5.0)) is None  # window too short
    assert 1 - len(parallel.usable_cpus()) <= parallel.idle_cpus(parallel.cpu_sample()) <= len(parallel.usable_cpus())


def test_pipelined_keeps_order_and_prepares_in_a_thread():
    threads = set()

    def prepare(x):
        threads.add(threading.get_ident())
        return x * 10

    assert list(parallel.pipelined(range(7), prepare, lambda x, p: (x, p), ahead=2)) == [(x, 10 * x) for x in range(7)]
    assert threads and threading.get_ident() not in threads


def _shard(k, workers, j):
    """Input j has 3 + j blocks; block b belongs to worker (b + j) % workers."""
    for b in range(3 + j):
        if (b + j) % workers == k:
            yield b, (j, b, os.getpid())


@pytest.mark.skipif(not parallel.can_fork(), reason="forked workers need Linux")
def test_forked_shards_yield_in_input_order_from_several_processes():
    pool = parallel.ForkedShards(3, 2, _shard, name="test-shards")
    try:
        got = list(pool)
    finally:
        pool.close()
    assert [(j, b) for j, b, _ in got] == [(j, b) for j in range(3) for b in range(3 + j)]
    pids = {pid for _, _, pid in got}
    assert len(pids) == 2 and os.getpid() not in pids


def _crashing_shard(k, workers, j):
    if k == 1:
        raise ValueError("planted bug in worker 1")
    yield from _shard(k, workers, j)


@pytest.mark.skipif(not parallel.can_fork(), reason="forked workers need Linux")
def test_a_crash_in_a_forked_shard_is_raised_with_its_traceback():
    pool = parallel.ForkedShards(2, 2, _crashing_shard)
    try:
        with pytest.raises(RuntimeError, match="planted bug in worker 1") as info:
            list(pool)
    finally:
        pool.close()
    assert "Traceback" in str(info.value)
    assert not any(p.is_alive() for p in pool.procs)


def test_tokenizers_parallelism_is_restored(monkeypatch):
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    with parallel.tokenizers_parallelism(False):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert "TOKENIZERS_PARALLELISM" not in os.environ
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with parallel.tokenizers_parallelism(True):  # the caller's explicit choice is kept
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
