"""Small helpers every command shares: argument parser conventions, exit codes, JSON output."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from sftdata.errors import DataError, SftlabError, UsageError  # re-exported: commands raise them

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_CRASH, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143

__all__ = ["DataError", "SftlabError", "UsageError", "flag", "parser", "positive_int", "print_json", "run"]


_FLAGS = {"fmt": "--from"}  # library parameters whose flag is not their name
# True when the process runs one command and exits (the `sftdata` console script), False when a
# caller runs commands in its own process (`main([...])`: tests, notebooks): a command may then
# set process-wide state that only it uses
WHOLE_PROCESS = False


def flag(param: str | None) -> str | None:
    """The command-line flag of a library parameter: max_length -> --max-length, fmt -> --from."""
    return None if param is None else _FLAGS.get(param, "--" + param.replace("_", "-"))


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


_held = 0  # depth of signals_held() blocks
_deferred: list[int] = []  # signals that arrived inside one


def _on_signal(signum: int, frame: Any) -> None:
    if _held:
        _deferred.append(signum)
        return
    _raise_for(signum)


def _raise_for(signum: int) -> None:
    import signal

    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Under `run`: a Ctrl-C or SIGTERM arriving inside this block is raised when it ends
    (e.g. between creating a temporary file and being ready to remove it)."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _deferred:
            signum = _deferred[0]
            _deferred.clear()
            _raise_for(signum)


def run(body: Callable[[], int]) -> int:
    """Run a command body with DESIGN.md §5 exit codes: usage errors 2, crashes 3 (traceback
    printed), Ctrl-C 130, SIGTERM 143 (both remove the temporary files of unfinished outputs)."""
    import signal
    import threading

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signum == signal.SIGTERM or signal.getsignal(signum) is signal.default_int_handler:
                previous[signum] = signal.signal(signum, _on_signal)
    try:
        return body()
    except SftlabError as e:
        sys.stderr.write(f"error: {e.describe(flag(e.param))}\n")
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
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def print_json(
    command: str, summary: dict[str, Any], findings: list[dict[str, Any]], *, finite: bool = False, **extra: Any
) -> None:
    """`--json`'s one line: json.dumps(obj, ensure_ascii=False, default=str). With `finite=True`
    msgspec encodes it, about 5x faster (dedup prints 25 MB of findings on T0): the same JSON
    value, without the spaces after `,` and `:`, for what dedup prints: dicts, lists, tuples,
    str, int, bool, None and floats that are never NaN or infinite (msgspec writes those as null
    where json writes NaN). A value of a type msgspec does not know (numpy scalars, paths) or
    cannot encode sends the whole object to json.dumps; sets, dates and dataclasses, which
    msgspec encodes its own way, must not be in it."""
    obj = {"schema_version": 1, "command": command, "summary": summary, "findings": findings, **extra}
    if finite:
        import msgspec

        try:
            data = msgspec.json.encode(obj, enc_hook=_not_plain) + b"\n"
        except (msgspec.MsgspecError, TypeError, ValueError, UnicodeError):
            pass
        else:
            _write_utf8(data)
            return
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")


def _not_plain(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is left to json.dumps")


def _write_utf8(data: bytes) -> None:
    """UTF-8 bytes to stdout: straight to its byte buffer when it encodes UTF-8 (no decoding and
    encoding back 25 MB), else through the text layer as any other output."""
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    if buffer is not None and (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8":
        out.flush()
        buffer.write(data)
        buffer.flush()
    else:
        out.write(data.decode("utf-8"))
