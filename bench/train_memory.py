"""The issue-9 reproduction: `sfttrain run` with its defaults on 30 multi-turn conversations
(~27k tokens, ~900 each), measured from outside: wall time, peak RSS of the child process
(resource.getrusage RUSAGE_CHILDREN), exit code, and the trainer's memory plan from stderr.

    python bench/train_memory.py                 # the default: --max-steps 2
    python bench/train_memory.py --max-steps 1 --extra --memory-gb 3

Before the memory plan, the same command grew to 23.9 GB RSS and was SIGKILLed after 8.5 minutes
(8 rows x 1024 tokens per micro-batch). Do not run it on the old code on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ALPACA, REPO


def conversations(n: int = 30, chars: int = 3300) -> list[dict]:
    """n multi-turn conversations of about `chars` characters (~950 tokens) from the alpaca demo."""
    path = next(
        (p for p in (ALPACA, REPO.parents[1] / "shared" / ALPACA.relative_to(ALPACA.parents[2])) if p.is_file()), ALPACA
    )  # (a git worktree of the repo sits one level deeper)
    rows = json.loads(path.read_text(encoding="utf-8"))
    rows = [r for r in rows if r["output"] and len(r["output"]) < 1500]
    out, k = [], 0
    for _ in range(n):
        msgs: list[dict] = [{"role": "system", "content": "You are a helpful assistant."}]
        while sum(len(m["content"]) for m in msgs) < chars:
            r = rows[k % len(rows)]
            k += 1
            msgs += [
                {"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r.get("input") else "")},
                {"role": "assistant", "content": r["output"]},
            ]
        out.append({"messages": msgs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more sfttrain run flags")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-memory-") as tmp:
        data = Path(tmp) / "conversations.jsonl"
        data.write_text("".join(json.dumps(c) + "\n" for c in conversations()), encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "sfttrain.cli",
            "run",
            "--model",
            "smollm2-135m-instruct",
            "--data",
            str(data),
            "--max-steps",
            str(args.max_steps),
            "--output-dir",
            str(Path(tmp) / "run"),
            *args.extra,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        memory_lines = [x for x in proc.stderr.splitlines() if "memory" in x or "examples" in x]
        metrics = Path(tmp) / "run" / "train" / "metrics.jsonl"
        rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        print(
            json.dumps(
                {
                    "command": " ".join(["sfttrain", *cmd[3:]]),
                    "exit_code": proc.returncode,
                    "wall_s": round(wall, 1),
                    "peak_rss_gib": round(peak / 2**30, 2),
                    "load_1min": load,
                    "losses": [r["loss"] for r in rows],
                    "tokens_per_s": [round(r["tokens_per_s"], 1) for r in rows],
                    "stderr": memory_lines,
                },
                indent=1,
            )
        )
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])


if __name__ == "__main__":
    main()
