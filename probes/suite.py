"""Fact suites for the hallucination probe: read and check them, build prompts, make one from
sftdata `knowledge` records (stdlib only; no torch).

Suite schema (JSONL, one fact a line; docs/probes.md):
    {"id": str (optional, default <file stem>/<line>), "question": str, "gold": str,
     "aliases": [str], "distractors": [str] (at least one), "relation": str,
     "completion_prompt": str (optional)}
A bad row is a Finding (file:line, what, how to fix) and is skipped; the others run.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from sftdata.errors import UsageError
from sftdata.records import Finding, Source

BUILTIN = Path(__file__).resolve().parent / "data" / "builtin.jsonl"
SHOTS = 3  # few-shot examples in a built completion prompt


class SuiteError(UsageError):
    """The suite as a whole cannot be used (missing file, no usable row): exit 2."""


@dataclass(frozen=True)
class Item:
    id: str
    relation: str
    question: str
    gold: str
    aliases: tuple[str, ...]
    distractors: tuple[str, ...]
    source: Source
    completion_prompt: str | None = None

    @property
    def candidates(self) -> tuple[str, ...]:
        """Gold first, then the distractors (aliases are not ranked: they would compete with gold)."""
        return (self.gold, *self.distractors)


def suite_path(spec: str) -> Path:
    return BUILTIN if spec == "builtin" else Path(os.path.expanduser(spec))


def _bad(path: str, line: int, what: str, hint: str, example_id: str | None = None) -> Finding:
    return Finding(
        "probes.suite-row", "error", f"{path}:{line}: {what}; the row is skipped", hint, example_id, Source(path, line)
    )


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".jsonl", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def read_suite(spec: str) -> tuple[list[Item], list[Finding]]:
    """Items of a suite file (or `builtin`) and a Finding per row that cannot be used."""
    path = suite_path(spec)
    if not path.is_file():
        raise SuiteError(f"--suite {spec}: no such file; pass a suite JSONL (docs/probes.md) or `builtin`")
    shown = "builtin" if spec == "builtin" else str(path)
    items: list[Item] = []
    findings: list[Finding] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                findings.append(
                    _bad(shown, line, f"not valid JSON ({e.msg} at column {e.colno})", "write one JSON object per line")
                )
                continue
            item, problem = _item(row, shown, line)
            if problem:
                findings.append(
                    _bad(shown, line, problem[0], problem[1], row.get("id") if isinstance(row, dict) else None)
                )
                continue
            if item.id in seen:
                findings.append(
                    _bad(
                        shown,
                        line,
                        f"id {item.id!r} was already used on line {seen[item.id]}",
                        "give every row its own id (or leave it out: file:line is used)",
                        item.id,
                    )
                )
                continue
            seen[item.id] = line
            items.append(item)
    if not items:
        raise SuiteError(
            f"--suite {spec}: no usable fact ({len(findings)} bad rows); see docs/probes.md for the schema"
        )
    return items, findings


def _item(row: object, path: str, line: int) -> tuple[Item | None, tuple[str, str] | None]:
    if not isinstance(row, dict):
        return None, (f"expected a JSON object, got {type(row).__name__}", "write one object per line")
    for key in ("question", "gold", "relation"):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            return None, (
                f"'{key}' is missing or not a non-empty string (got {value!r})",
                f'add "{key}": "..." (schema: docs/probes.md)',
            )
    lists = {}
    for key in ("aliases", "distractors"):
        value = row.get(key) or []  # optional: absent, null or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            return None, (f"'{key}' must be a list of non-empty strings, got {value!r}", f'write "{key}": ["..."]')
        lists[key] = tuple(v.strip() for v in value)
    gold = row["gold"].strip()
    distractors = tuple(dict.fromkeys(d for d in lists["distractors"] if d != gold and d not in lists["aliases"]))
    if not distractors:
        return None, (
            "no distractor that differs from gold and its aliases",
            'add at least one wrong answer to "distractors" (the model ranks gold against them)',
        )
    prompt = row.get("completion_prompt")
    if prompt is not None and not isinstance(prompt, str):
        return None, (
            f"'completion_prompt' must be a string, got {type(prompt).__name__}",
            "drop it to get a few-shot prompt",
        )
    if prompt is not None and not prompt.strip():
        return None, ("'completion_prompt' is empty", "write the prompt the base model continues, or drop it")
    rid = row.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        return None, (f"'id' must be a string, got {type(rid).__name__}", "use a string id or leave it out")
    return Item(
        str(rid) if rid is not None else f"{_stem(path)}/{line}",
        row["relation"].strip(),
        row["question"].strip(),
        gold,
        lists["aliases"],
        distractors,
        Source(path, line),
        prompt,
    ), None


# --- prompts -------------------------------------------------------------------------------------


def completion_prompts(items: list[Item], shots: int = SHOTS, pool: list[Item] | None = None) -> list[str]:
    """The base model's prompt per item: its own `completion_prompt`, else `shots` Q/A pairs of other
    items of the same relation in `pool` (default `items`; the first ones, never the item itself), then
    `Q: <question>\\nA:`. The candidates follow after a space. Most items of a relation get the same
    examples, so their prompts share a prefix that is encoded once."""
    by_relation: dict[str, list[Item]] = {}
    for it in items if pool is None else pool:
        by_relation.setdefault(it.relation, []).append(it)
    prompts = []
    for it in items:
        if it.completion_prompt is not None:
            prompts.append(it.completion_prompt)
            continue
        examples = [o for o in by_relation.get(it.relation, []) if o.id != it.id][:shots]
        text = "".join(f"Q: {o.question}\nA: {o.gold}\n\n" for o in examples)
        prompts.append(f"{text}Q: {it.question}\nA:")
    return prompts


def completion_candidates(items: list[Item]) -> list[list[str]]:
    return [[" " + c for c in it.candidates] for it in items]


def chat_prompts(items: list[Item], tokenizer: object) -> list[str]:
    """The SFT model's prompt: its chat template, one user turn, add_generation_prompt=True."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": it.question}],
            tokenize=False,  # type: ignore[attr-defined]
            add_generation_prompt=True,
        )
        for it in items
    ]


# --- making a suite from knowledge records ---------------------------------------------------------


def from_knowledge(path: str, *, n_distractors: int = 3, seed: int = 0) -> tuple[list[dict], list[Finding]]:
    """Suite rows from sftdata `knowledge` records ({"entity", "facts": [{"fact", "value"}]}): one row
    per fact, question "What is the <fact> of <entity>?" (the question sftdata trains on), relation =
    the fact name, distractors = values of the same fact for other entities. A fact whose name no
    other entity has a different value for gets no row and an info Finding."""
    from sftdata import formats

    if not os.path.exists(path):
        raise SuiteError(f"--from {path}: no such file")
    facts: list[tuple[str, str, str, Source]] = []  # (entity, fact, value, source)
    findings: list[Finding] = []
    for item in formats.read(path, "knowledge"):
        if isinstance(item, Finding):
            findings.append(item)
            continue
        entity = item.meta.get("entity")
        for fact in item.meta.get("facts", []):
            facts.append((str(entity), str(fact["fact"]), str(fact["value"]), item.source))
    values: dict[str, list[str]] = {}
    own: dict[tuple[str, str], set[str]] = {}  # (entity, fact) -> its values: true answers, never distractors
    for entity, name, value, _ in facts:
        if value not in values.setdefault(name, []):
            values[name].append(value)
        own.setdefault((entity, name), set()).add(value)
    rng = random.Random(seed)
    rows = []
    seen: dict[str, int] = {}
    for entity, name, value, source in facts:
        pool = [v for v in values[name] if v not in own[(entity, name)]]
        if not pool:
            findings.append(
                Finding(
                    "probes.suite-row",
                    "info",
                    f"{source}: fact {name!r} of {entity!r} has no other value to draw distractors from; no suite row",
                    "add more entities with this fact",
                    None,
                    source,
                )
            )
            continue
        rid = f"{entity}/{name}"
        seen[rid] = seen.get(rid, 0) + 1
        rows.append(
            {
                "id": rid if seen[rid] == 1 else f"{rid}/{seen[rid]}",  # a fact with several values
                "relation": name,
                "question": f"What is the {name} of {entity}?",
                "gold": value,
                "aliases": [],
                "distractors": rng.sample(pool, min(n_distractors, len(pool))),
                "source": source.to_dict(),
            }
        )
    return rows, findings
