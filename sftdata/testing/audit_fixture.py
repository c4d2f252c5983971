"""The `sftdata_audit` pytest fixture: gate your own CI on an audit of your data.

    def test_training_data_is_clean(sftdata_audit):
        result = sftdata_audit("data/train.jsonl", model="smollm2-135m-instruct", max_length=2048)
        assert result.passed, result.report

    def test_no_truncated_answers(sftdata_audit):
        result = sftdata_audit(["a.jsonl", "b.jsonl"], select=["length"], fail_on="warning")
        assert result.passed, result.report

`sftdata_audit(paths, model=..., fail_on="error", **opts)` runs sftdata.audit.run_audit (opts:
max_length, policy, select, ignore, run_dir, fmt) and returns its AuditResult. `result.report`
lists the findings at or above `fail_on` with file:line, so a failing
`assert result.passed, result.report` says what is wrong and where (the repr is a one-finding
summary). Nothing is written unless you pass run_dir (use tmp_path).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

DEFAULT_MODEL = "smollm2-135m-instruct"


def audit_files(
    paths: str | os.PathLike[str] | list[str | os.PathLike[str]],
    model: Any = DEFAULT_MODEL,
    fail_on: str = "error",
    **opts: Any,
) -> Any:
    """What the fixture returns: run the audit on `paths` and return the AuditResult."""
    from sftdata.audit import run_audit

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return run_audit([os.fspath(p) for p in paths], model, fail_on=fail_on, **opts)


@pytest.fixture
def sftdata_audit() -> Callable[..., Any]:
    """Audit data files: `sftdata_audit(paths, model=..., fail_on="error", **opts) -> AuditResult`;
    then `assert result.passed, result.report`."""
    return audit_files
