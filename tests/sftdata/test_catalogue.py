"""The check catalogue: docs/checks.md is generated from it, every id the code can emit is in it,
every finding takes its severity from it, and each check function declares what it emits."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from sftdata import catalogue, checks, formats, masks
from sftdata.catalogue import CHECKS, finding
from sftdata.records import Conversation, Message, Source

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "sftdata"
ID = re.compile(r"(?:format|template|tokens|mask|length|dedup)\.[a-z]+(?:-[a-z]+)*")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _calls(tree: ast.AST, names: set[str]) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and (getattr(n.func, "id", None) in names or getattr(n.func, "attr", None) in names)
    ]


def test_docs_checks_md_is_generated_from_the_catalogue():
    doc = (REPO / "docs" / "checks.md").read_text(encoding="utf-8")
    assert doc == catalogue.catalogue_markdown(), "regenerate it: python -m sftdata.catalogue > docs/checks.md"


def test_every_check_id_in_the_code_is_documented():
    ids = set()
    for path in _modules():
        ids |= set(re.findall(r"[\"'](" + ID.pattern + r")[\"']", path.read_text(encoding="utf-8")))
    doc = (REPO / "docs" / "checks.md").read_text(encoding="utf-8")
    assert ids <= set(CHECKS), ids - set(CHECKS)
    for check in ids:
        assert f"### {check}" in doc and catalogue.explain(check)
    assert {c.severity for c in catalogue.CATALOGUE} <= {"error", "warning", "info"}


def test_findings_are_built_only_by_finding():
    """No module builds a Finding itself, so every finding's severity is the catalogue's."""
    builders = {}
    for path in _modules():
        if path.name in ("records.py", "catalogue.py"):
            continue
        n = len(_calls(ast.parse(path.read_text(encoding="utf-8")), {"Finding"}))
        if n:
            builders[str(path.relative_to(REPO))] = n
    assert builders == {}, builders


def test_every_emitted_id_is_declared_by_its_module():
    """Every literal id a module passes to finding(), RecordError or TemplateError is catalogued and
    declared by one of that module's @emits (checks: by the function that emits it)."""
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        declared: set[str] = set()
        for call in _calls(tree, {"emits"}):
            declared |= {a.value for a in call.args if isinstance(a, ast.Constant)}
        declared |= {
            c.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Assign) and any(getattr(t, "id", "").endswith("EMITS") for t in n.targets)
            for c in ast.walk(n.value)
            if isinstance(c, ast.Constant)
        }
        used = {
            c.args[0].value
            for c in _calls(tree, {"finding", "RecordError", "TemplateError"})
            if c.args and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)
        }
        assert used <= set(CHECKS), (path.name, used - set(CHECKS))
        assert used <= declared, (path.name, used - declared)
    for fn in (
        checks.check_roles,
        checks.check_special_strings,
        checks.check_double_bos,
        checks.check_mask,
        checks.check_length,
        checks.check_pad_token,
        checks.check_template,
        checks.check_embeddings,
    ):
        used = {
            c.args[0].value
            for c in _calls(ast.parse(_source_with_helpers(fn)), {"finding"})
            if isinstance(c.args[0], ast.Constant)
        }
        assert used and used <= set(fn.emits), (fn.__name__, used - set(fn.emits))
    assert set(formats.read.emits) | set(formats.write.emits) | set(masks.tokenize.emits) <= set(CHECKS)


def _source_with_helpers(fn) -> str:
    """The source of a check function plus the private helpers it calls (by name) in sftdata.checks."""
    import inspect

    src = inspect.getsource(fn)
    if src.startswith("@"):
        src = src[src.index("\ndef ") + 1 :]
    for name in set(re.findall(r"\b(_[a-z_]+)\(", src)):
        helper = getattr(checks, name, None)
        if callable(helper) and getattr(helper, "__module__", "") == "sftdata.checks":
            src += "\n" + inspect.getsource(helper)
    return src


def test_finding_takes_severity_and_hint_from_the_catalogue():
    conv = Conversation("x/1", (Message("user", "hi"),), Source("x.jsonl", 1))
    f = finding("format.no-assistant", "no assistant", conv)
    assert (f.severity, f.hint, f.example_id, f.source) == (
        "error",
        CHECKS["format.no-assistant"].fix,
        "x/1",
        conv.source,
    )
    assert finding("tokens.pad-is-eos", "m", hint="specific").hint == "specific"
    with pytest.raises(KeyError):
        finding("tokens.no-such-check", "m")
    with pytest.raises(KeyError):
        catalogue.emits("mask.nope")


def test_audit_findings_have_catalogue_severities(tmp_path, sft_tokenizer):
    from sftdata.audit import run_audit

    result = run_audit(
        [str(REPO / "examples" / "defects.jsonl")], sft_tokenizer, max_length=256, run_dir=str(tmp_path / "run")
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "audit" / "findings.jsonl").read_text().splitlines()]
    assert len(rows) >= 10 and len({r["check"] for r in rows}) >= 8
    for r in rows:
        assert r["severity"] == CHECKS[r["check"]].severity, r
    assert len(result.findings) == len(rows)
