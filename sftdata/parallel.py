"""Running work beside this process: how many CPUs are idle, forked shard workers, a thread pipeline.

Nothing here knows about SFT data; sftdata.audit uses it.

- `cpu_sample()` / `idle_cpus(since)`: the CPUs other processes leave idle, measured from
  /proc/stat minus this process's own CPU time, within our affinity set and cgroup quota.
- `ForkedShards`: `workers` forked processes; worker k runs `shard(k, workers, j)` over every
  input j and sends back what it yields; iterating gives the results in input order. Workers die
  with the parent (Linux PR_SET_PDEATHSIG) and a worker's crash is raised here with its traceback.
- `pipelined(items, prepare, finish)`: a thread runs `prepare` on the next items while this thread
  runs `finish` on the current one (for work that releases the GIL, such as Rust tokenizers).

The standard library's pools do not fit the audit: `concurrent.futures.ProcessPoolExecutor`
pickles every task and result through one queue and cannot give each worker its own share of a
file to read, and neither it nor `multiprocessing.Pool` arranges for workers to die with a
killed parent.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue as queue_mod
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

# --------------------------------------------------------------------------------------------
# Idle CPUs


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU time of the CPUs this process may run on and of this process itself at one
    moment (for idle_cpus)."""

    at: float
    machine_busy: float | None  # seconds, those CPUs together, from /proc/stat; None where unreadable
    own: float


def usable_cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def cpu_sample() -> CpuSample:
    busy = None
    cpus = {f"cpu{i}" for i in usable_cpus()}
    try:
        total = 0
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if name in cpus:
                    fields = [int(x) for x in rest.split()]
                    total += sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
        busy = total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return CpuSample(time.monotonic(), busy, t.user + t.system)


def cgroup_cpu_limit() -> float | None:
    """The CPUs a cgroup v2 quota (cpu.max) allows this process, if it sets one."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def idle_cpus(since: CpuSample) -> int:
    """CPUs that other processes leave idle: the CPUs this process may use (affinity, cgroup
    quota) minus what other processes kept them busy with since `since`, this process's own
    work (loading the tokenizer, an earlier audit) not counted. The load average would count it,
    and lags a minute behind. The window is made 50 ms at least; without /proc/stat, the load
    average it is."""
    cpus = len(usable_cpus())
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = max(1, min(cpus, int(limit)))
    wait = 0.05 - (time.monotonic() - since.at)
    if wait > 0:
        time.sleep(wait)
    others = others_busy(since, cpu_sample())
    if others is not None:
        return cpus - int(others + 0.5)
    return cpus - (int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0)


def others_busy(since: CpuSample, now: CpuSample) -> float | None:
    """CPUs other processes kept busy between two samples; None without /proc/stat or when the
    window is under 50 ms."""
    window = now.at - since.at
    if now.machine_busy is None or since.machine_busy is None or window < 0.05:
        return None
    return max(0.0, (now.machine_busy - since.machine_busy) - (now.own - since.own)) / window


def can_fork() -> bool:
    """ForkedShards needs Linux (fork, PR_SET_PDEATHSIG)."""
    return sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()


@contextlib.contextmanager
def tokenizers_parallelism(enabled: bool) -> Iterator[None]:
    """TOKENIZERS_PARALLELISM while the block runs (restored after). Off where worker processes
    give the parallelism (it also keeps tokenizers from warning when they are forked); on lets
    the Rust thread pool encode on every core, unless the caller set TOKENIZERS_PARALLELISM=false."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    off = (saved or "").strip().lower() in ("0", "false", "off", "no")  # the caller's explicit choice is kept
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled and not off else "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


# --------------------------------------------------------------------------------------------
# A thread pipeline


def pipelined(
    items: Iterable[T], prepare: Callable[[T], P], finish: Callable[[T, P], R], ahead: int = 2
) -> Iterator[R]:
    """finish(item, prepare(item)) for every item, in order, with `prepare` running in a thread up
    to `ahead` items ahead of `finish` in this one."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="sftdata-prepare")
    try:
        pending: deque[tuple[T, Any]] = deque()
        for item in items:
            pending.append((item, pool.submit(prepare, item)))
            if len(pending) > ahead:
                done, future = pending.popleft()
                yield finish(done, future.result())
        while pending:
            done, future = pending.popleft()
            yield finish(done, future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Forked shard workers

# shard(k, workers, j) -> (block, result) pairs: worker k's blocks of input j, in block order
Shard = Callable[[int, int, int], Iterable[tuple[int, Any]]]


def _worker_main(k: int, workers: int, n_inputs: int, shard: Shard, out: Any, parent: int) -> None:
    """A forked worker: sends ("block", j, b, result) pickled for each block b of each input j that
    `shard` yields, ("eof", j) after each input, and ("crash", traceback) if anything fails,
    pickling included."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever the embedding program set: terminate() must work
    try:
        _die_with_parent(parent)
        for j in range(n_inputs):
            for block, result in shard(k, workers, j):
                out.put(pickle.dumps(("block", j, block, result), protocol=pickle.HIGHEST_PROTOCOL))
            out.put(pickle.dumps(("eof", j)))
    except KeyboardInterrupt:
        pass
    except BaseException:  # noqa: BLE001 - handed to the parent, which raises it (exit 3)
        out.put(pickle.dumps(("crash", traceback.format_exc())))
    finally:
        out.close()
        out.join_thread()


def _die_with_parent(parent: int) -> None:
    """In a worker: be sent SIGTERM when the parent dies (killed, out of memory), instead of
    waiting forever on a queue nobody reads (Linux prctl PR_SET_PDEATHSIG). `parent` is the
    parent's pid, taken before the fork."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _receive(queue: Any, proc: Any) -> Any:
    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_mod.Empty:
            if not proc.is_alive():
                try:
                    return queue.get(timeout=0.5)
                except queue_mod.Empty:
                    raise RuntimeError(
                        f"a worker process ({proc.name}) exited with code {proc.exitcode} without "
                        "finishing (killed? out of memory?)"
                    ) from None


class ForkedShards:
    """`workers` forked processes; worker k runs `shard(k, workers, j)` for each input j and sends
    what it yields. Block b of input j must come from worker (b + j) % workers (spreading many
    small inputs too); iterating yields the results by input, then block. Each worker has a small
    queue, so memory stays bounded whatever the input size. `close()` ends the workers."""

    def __init__(self, n_inputs: int, workers: int, shard: Shard, name: str = "sftdata-worker"):
        mp = multiprocessing.get_context("fork")  # the shard function is inherited, never pickled
        self.n_inputs, self.workers = n_inputs, workers
        self.queues = [mp.Queue(maxsize=4) for _ in range(workers)]
        self.procs = [
            mp.Process(
                target=_worker_main, args=(k, workers, n_inputs, shard, q, os.getpid()), daemon=True, name=f"{name}-{k}"
            )
            for k, q in enumerate(self.queues)
        ]
        try:
            for p in self.procs:
                p.start()
        except BaseException:
            self.close()
            raise

    def _get(self, k: int) -> tuple[Any, ...]:
        msg = pickle.loads(_receive(self.queues[k], self.procs[k]))
        if msg[0] == "crash":
            raise RuntimeError(f"worker {self.procs[k].name} failed:\n{msg[1]}")
        return msg

    def __iter__(self) -> Iterator[Any]:
        for j in range(self.n_inputs):
            b = 0
            while True:
                owner = (b + j) % self.workers
                msg = self._get(owner)
                if msg[0] == "eof":
                    for k in range(self.workers):  # the others have nothing more of this input either
                        if k != owner and self._get(k) != ("eof", j):
                            raise RuntimeError(f"worker {k} sent blocks of input {j} out of order")
                    break
                if msg[1:3] != (j, b):
                    raise RuntimeError(
                        f"worker {owner} sent block {msg[2]} of input {msg[1]} where block {b} of input {j} was due"
                    )
                yield msg[3]
                b += 1

    def close(self) -> None:
        for p in self.procs:
            if p.pid is not None and p.is_alive():
                p.terminate()
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for q in self.queues:
            q.close()
            q.cancel_join_thread()
