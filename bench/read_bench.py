"""Reader throughput: this tree vs a baseline tree, alternated in fresh processes."""

import json
import os
import subprocess
import sys

N = int(os.environ.get("N", "200000"))
path = os.environ.get("DATA", "/tmp/sftlab-read-bench.jsonl")
if not os.path.exists(path):
    with open(path, "w") as f:
        for i in range(N):
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "You are helpful."},
                            {"role": "user", "content": f"Question {i}: " + "lorem ipsum dolor sit amet " * 8},
                            {
                                "role": "assistant",
                                "content": f"Answer {i} with an emoji \U0001f600 " + "consectetur adipiscing " * 12,
                            },
                        ]
                    },
                    ensure_ascii=bool(i % 2),
                )
                + "\n"
            )
code = "import sys,time; from sftdata import formats; t=time.process_time(); n=sum(1 for _ in formats.read(sys.argv[1])); print(n, time.process_time()-t)"
trees = {"baseline": sys.argv[1], "this": sys.argv[2]}
res = {k: [] for k in trees}
for rep in range(int(os.environ.get("REPS", "3"))):
    for name, tree in trees.items():
        out = subprocess.run(
            [sys.executable, "-c", code, path],
            env={**os.environ, "PYTHONPATH": tree},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        res[name].append(float(out[1]))
for k, v in res.items():
    print(k, "min %.2f s" % min(v), [round(x, 2) for x in v])
print("ratio this/baseline (min): %.3f" % (min(res["this"]) / min(res["baseline"])))
print("load:", os.getloadavg())
