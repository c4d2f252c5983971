"""Side by side: run_audit of two source trees (e.g. main's code in /tmp/main-copy vs this checkout)
on the same 10k-example JSONL, interleaved, each run in a fresh subprocess (PYTHONPATH picks the
code), best of N. Used for issue 10 (a restructuring must not slow the audit down).

    git archive main | tar -x -C /tmp/main-copy
    SFTLAB_AUDIT_WORKERS=2 python bench/bench_refactor_side.py 10000 3 /tmp/main-copy .
"""

import json
import os
import subprocess
import sys
from pathlib import Path

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
TREES = {
    "main": sys.argv[3] if len(sys.argv) > 3 else "/tmp/main-copy",
    "refactor": os.path.abspath(sys.argv[4] if len(sys.argv) > 4 else "."),
}
alpaca = json.loads(
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json".read_text()
)
data = Path(f"/tmp/sftlab-bench-side-{N}.jsonl")
if not data.exists():
    with open(data, "w") as f:
        for i in range(N):
            r = alpaca[i % len(alpaca)]
            user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
            f.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]},
                    ensure_ascii=False,
                )
                + "\n"
            )
CODE = """
import sys, time, shutil
from sftdata.audit import run_audit
t0 = time.perf_counter()
r = run_audit([sys.argv[1]], "smollm2-135m-instruct", run_dir=sys.argv[2])
print(time.perf_counter() - t0, r.summary["workers"], r.summary["examples"], r.summary["findings"])
"""
results = {k: [] for k in TREES}
for rep in range(REPEATS):
    for name, tree in TREES.items():
        env = dict(os.environ, PYTHONPATH=tree, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        load = os.getloadavg()[0]
        out = subprocess.run(
            [sys.executable, "-c", CODE, str(data), f"/tmp/sftlab-bench-side-run-{name}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        results[name].append(float(out[0]))
        print(
            f"rep {rep} {name:9s} {float(out[0]):7.2f} s  workers={out[1]} examples={out[2]} findings={out[3]} load1={load:.2f}",
            flush=True,
        )
best = {k: min(v) for k, v in results.items()}
print("best:", {k: round(v, 2) for k, v in best.items()}, "refactor/main =", round(best["refactor"] / best["main"], 3))
