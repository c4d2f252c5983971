"""The `sftdata` command line: this dispatcher (`sftdata.cli:main`, the console script), `kit` (what
every command shares: parser, exit codes, errors to messages, --json) and one module per command,
each with main(argv) -> int. The library (sftdata.audit, sftdata.formats, ...) never imports these."""

from __future__ import annotations

import gc
import importlib
import sys

__all__ = ["COMMANDS", "main"]

# Explicit list, no registry: name -> (module, one-line help).
COMMANDS = {
    "audit": ("sftdata.cli.audit", "run every check in one pass and write audit/ of a run directory"),
    "convert": ("sftdata.cli.convert", "convert between SFT formats (messages, sharegpt, alpaca, ...)"),
    "dedup": ("sftdata.cli.dedup", "exact and MinHash near-duplicates, eval contamination"),
    "show": ("sftdata.cli.show", "show one example token by token: ids, trained or masked, message"),
    "models": ("sftdata.cli.models", "list built-in model aliases and their cache state"),
}

USAGE = (
    "usage: sftdata {"
    + ",".join(COMMANDS)
    + "} ...\n\n"
    + "\n".join(f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items())
    + "\n\nRun `sftdata COMMAND --help` for a command's options.\n"
)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the process's own command line: it exits when the command returns
        try:
            return _main(sys.argv[1:])
        finally:
            gc.freeze()  # so exiting skips the collector's pass over all the command allocated (0.2 s on T0)
    return _main(argv)


def _main(argv: list[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from sftdata import __version__

        print(f"sftdata {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        sys.stderr.write(f"sftdata: unknown command {name!r}" + (f"; did you mean {near[0]!r}?" if near else "") + "\n")
        sys.stderr.write(USAGE)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)
