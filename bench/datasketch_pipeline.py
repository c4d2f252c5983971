"""The dedup pipeline a user writes with datasketch (the baseline of `bench_dedup.py --e2e`).

    python bench/datasketch_pipeline.py FILE.jsonl[.gz] [--threshold 0.8]

Reads prompt/completion JSONL (T0's shape), takes the same text as `sftdata dedup --fields all`
(prompt, a newline, completion), normalises it as sftdata does (NFKC, casefold, punctuation to
spaces, whitespace collapsed; plain Python), shingles it into the same word 5-grams, computes
`MinHash.bulk` signatures, inserts them into a `MinHashLSH` at the same threshold and queries every
example. Prints seconds per stage and what it found as one JSON object. It does not import sftdata.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
import unicodedata

from datasketch import MinHash, MinHashLSH

PUNCT = re.compile(r"[^\w\s]+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(PUNCT.sub(" ", text).split())


def shingles(text: str, n: int = 5) -> list[bytes]:
    words = text.split(" ")
    if len(words) < n:
        return [text.encode("utf-8")]
    return [" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    args = ap.parse_args()
    seconds = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = round(now - t, 3)
        t = now

    opener = gzip.open if args.path.endswith(".gz") else open
    with opener(args.path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    lap("read")
    texts = [normalize("\n".join(p for p in (r.get("prompt") or "", r.get("completion") or "") if p)) for r in rows]
    keep = [i for i, t_ in enumerate(texts) if t_]
    lap("normalize")
    sets = [shingles(texts[i]) for i in keep]
    lap("shingles")
    sigs = MinHash.bulk(sets, num_perm=args.num_perm)
    lap("signatures")
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    with lsh.insertion_session() as session:
        for i, m in zip(keep, sigs):
            session.insert(i, m, check_duplication=False)
    lap("lsh_insert")
    pairs = set()
    for i, m in zip(keep, sigs):
        for j in lsh.query(m):
            if j != i:
                pairs.add((min(i, j), max(i, j)))
    lap("lsh_query")
    # what a user drops: every example paired with an earlier one
    drop = {j for _, j in pairs}
    lap("drop")
    json.dump(
        {
            "examples": len(rows),
            "candidate_pairs": len(pairs),
            "dropped": len(drop),
            "bands_rows": [lsh.b, lsh.r],
            "seconds": seconds,
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
