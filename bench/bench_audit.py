"""`sftdata audit` throughput and memory (issue 3), side by side in one run:

  trl     TRL SFTTrainer's own dataset preparation (its defaults: apply the chat template, tokenize,
          build labels) on N conversations held in memory
  audit   sftdata.audit.run_audit on the same N conversations read from a JSONL file: every check
          (format, template, tokens, mask with decode-and-compare, length, and the embedding check on
          the demo model's weights), token statistics, and the run directory written (findings.jsonl,
          examples.parquet, summary.json, manifest.json). Tokenizer load included.

    python bench/bench_audit.py                 # 10k side by side, then the 1M-example memory run
    python bench/bench_audit.py --big 0         # only the side-by-side run
    python bench/bench_audit.py --n 10000 --repeats 2 --big 1000000

The 1M-example run synthesises a messages JSONL from every file in ../shared/data (written to
/tmp), audits it in a subprocess under /usr/bin/time -v and reports wall time and peak RSS.
alpaca_en_demo.json repeated to N examples, demo tokenizer (SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, SHARED, alpaca_messages, time_trl_prepare  # noqa: E402


def write_jsonl(path: Path, conversations: list[list[dict[str, str]]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for m in conversations:
            f.write(json.dumps({"messages": m}, ensure_ascii=False) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (audit workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_audit(path: Path, model: str, run_dir: Path) -> tuple[float, float, dict]:
    from sftdata.audit import run_audit

    shutil.rmtree(run_dir, ignore_errors=True)
    c0, t0 = cpu_seconds(), time.perf_counter()
    result = run_audit([str(path)], model, run_dir=str(run_dir))
    return time.perf_counter() - t0, cpu_seconds() - c0, result.summary


def time_trl(msgs: list, tok) -> tuple[float, float]:
    c0 = cpu_seconds()
    wall = time_trl_prepare(msgs, tok)  # times _prepare_dataset only; CPU includes building the tiny trainer
    return wall, cpu_seconds() - c0


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (kB), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            for task in Path(f"/proc/{p}").glob("task/*/children"):
                todo.extend(int(c) for c in task.read_text().split())
        except (OSError, AttributeError):
            continue
    return total


def side_by_side(n: int, repeats: int, work: Path) -> dict:
    from sftdata.models import DEMO_MODEL, load_tokenizer, resolve_model_path

    resolve_model_path(DEMO_MODEL)  # convert the demo weights once (not timed)
    tok = load_tokenizer(DEMO_MODEL)
    msgs = alpaca_messages(n)
    data = work / f"alpaca-{n}.jsonl"
    write_jsonl(data, msgs)
    trl, audit, trl_cpu, audit_cpu, summary = [], [], [], [], {}
    for _ in range(repeats):  # interleaved, best of each: the machine may be shared
        wall, cpu = time_trl(msgs, tok)
        trl.append(wall)
        trl_cpu.append(cpu)
        wall, cpu, summary = time_audit(data, DEMO_MODEL, work / "run-10k")
        audit.append(wall)
        audit_cpu.append(cpu)
    assert summary["examples"] == n, summary["examples"]
    t, a = min(trl), min(audit)
    return {
        "n": n,
        "trl_s": round(t, 2),
        "audit_s": round(a, 2),
        "trl_examples_per_s": round(n / t),
        "audit_examples_per_s": round(n / a),
        "audit_vs_trl": round(t / a, 2),
        "cpu_s": {"trl": round(min(trl_cpu), 2), "audit": round(min(audit_cpu), 2)},
        "audit_vs_trl_cpu": round(min(trl_cpu) / min(audit_cpu), 2),
        "all_runs_s": {"trl": [round(x, 2) for x in trl], "audit": [round(x, 2) for x in audit]},
        "audit_findings": summary["by_severity"],
        "embedding_check": summary["embedding_check"],
        "audit_workers": summary["workers"],
    }


def synthesise(path: Path, n: int) -> dict:
    """A messages JSONL of n conversations cycling through every readable file in ../shared/data."""
    from sftdata import formats
    from sftdata.records import Conversation

    pool: list[str] = []
    per_file = {}
    for f in sorted(SHARED.rglob("*")):
        if not f.is_file() or f.name in ("README.md", "dataset_info.json"):
            continue
        k = 0
        for item in formats.read(str(f)):
            if isinstance(item, Conversation):
                row = {"messages": item.message_dicts()}
                if item.tools:
                    row["tools"] = list(item.tools)
                pool.append(json.dumps(row, ensure_ascii=False))
                k += 1
        per_file[str(f.relative_to(SHARED))] = k
    with open(path, "w", encoding="utf-8") as out:
        for line in itertools.islice(itertools.cycle(pool), n):
            out.write(line + "\n")
    return {"pool": len(pool), "per_file": per_file, "bytes": path.stat().st_size}


def big_run(n: int, work: Path) -> dict:
    data = Path(tempfile.gettempdir()) / f"sftlab-bench-{n}.jsonl"
    info = synthesise(data, n)
    run_dir = work / "run-big"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "sftdata.cli",
        "audit",
        str(data),
        "--model",
        "smollm2-135m-instruct",
        "--max-length",
        "2048",
        "--run-dir",
        str(run_dir),
        "--json",
    ]
    out_path = work / "big.json"
    t0 = time.perf_counter()
    peak_tree = 0
    with open(out_path, "w") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=err, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        while proc.poll() is None:
            peak_tree = max(peak_tree, tree_rss_kb(proc.pid))
            time.sleep(0.5)
        err.seek(0)
        stderr = err.read()
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    try:
        summary = json.loads(out_path.read_text())["summary"]
    except (json.JSONDecodeError, KeyError):
        sys.stderr.write(stderr[-4000:])
        raise SystemExit(f"the audit failed with exit code {proc.returncode}")
    parquet = run_dir / "audit" / "examples.parquet"
    result = {
        "n": n,
        "input_mb": round(info["bytes"] / 2**20),
        "distinct_conversations": info["pool"],
        "command": " ".join(cmd[2:]).replace(sys.executable, "python"),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "examples_per_s": round(n / wall),
        "peak_rss_mb_largest_process": round(int(rss.group(1)) / 1024) if rss else None,  # /usr/bin/time -v
        "peak_rss_mb_all_processes": round(peak_tree / 1024),  # parent + workers, sampled every 0.5 s
        "examples": summary["examples"],
        "tokens": summary["token_stats"]["tokens"],
        "findings": summary["findings"],
        "by_check": {k: v["findings"] for k, v in summary["checks"].items()},
        "parquet_mb": round(parquet.stat().st_size / 2**20) if parquet.exists() else None,
    }
    data.unlink()
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each side; best is reported")
    ap.add_argument("--big", type=int, default=1_000_000, help="examples in the memory run (0: skip it)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="sftlab-bench-audit-") as tmp:
        work = Path(tmp)
        out["side_by_side"] = side_by_side(args.n, args.repeats, work)
        print(json.dumps(out, indent=2), flush=True)
        if args.big:
            out["big"] = big_run(args.big, work)
            out["load_avg_at_end"] = os.getloadavg()
            print(json.dumps(out, indent=2), flush=True)


if __name__ == "__main__":
    main()
