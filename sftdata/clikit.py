"""Small helpers every command shares: argument parser conventions, exit codes, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_CRASH, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143


class UsageError(Exception):
    """A usage, config or input error: printed as one message, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its message format
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so temporary files are removed on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def run(body: Callable[[], int]) -> int:
    """Run a command body with DESIGN.md §5 exit codes: usage errors 2, crashes 3 (traceback
    printed), Ctrl-C 130, SIGTERM 143 (both remove the temporary files of unfinished outputs)."""
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return body()
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except Terminated:
        sys.stderr.write("terminated (SIGTERM)\n")
        return EXIT_TERMINATED
    except SystemExit as e:  # argparse --help
        return int(e.code or 0)
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # noqa: BLE001 - the contract: print the traceback, exit 3
        traceback.print_exc()
        sys.stderr.write("sftlab crashed: this is a bug, please report it with the traceback above\n")
        return EXIT_CRASH
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def print_json(command: str, summary: dict[str, Any], findings: list[dict[str, Any]], **extra: Any) -> None:
    obj = {"schema_version": 1, "command": command, "summary": summary, "findings": findings, **extra}
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
