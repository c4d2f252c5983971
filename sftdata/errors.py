"""The errors sftdata raises (stdlib only). Bad records are never errors: they are Findings.

- `UsageError`: a bad argument or config value (a policy that does not exist, a model directory
  that is not there). It names the parameter as the library calls it (`max_length`); the CLI
  shows the matching flag (`--max-length`) instead, a YAML config its key.
- `DataError`: an input that cannot be read at all (no such file, unknown extension, a format
  that cannot be detected, a dataset that does not load).

Both are `SftlabError`s; the command-line tools print them as one line and exit 2.
"""

from __future__ import annotations

from typing import Any

_UNSET: Any = object()


class SftlabError(Exception):
    """A problem the caller can fix: `message` says what and what to try next; `param` (and
    `value`) name the argument it is about, when there is one."""

    def __init__(self, message: str, *, param: str | None = None, value: Any = _UNSET) -> None:
        self.message, self.param, self.value = message, param, value
        super().__init__(self.describe())

    def describe(self, name: str | None = None) -> str:
        """The message with the parameter called `name` (the CLI passes its flag)."""
        name = name or self.param
        if name is None:
            return self.message
        return f"{name}: {self.message}" if self.value is _UNSET else f"{name} {self.value!r}: {self.message}"


class UsageError(SftlabError):
    """A usage or config error: a bad argument, option or config value."""


class DataError(SftlabError):
    """An input that cannot be read at all (bad records inside a readable input are Findings)."""
