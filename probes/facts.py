"""Narrow hallucination: facts the model knew before SFT and answers wrongly after it.

For every suite item three scorings rank gold against the distractors by the summed log-probability
of the answer tokens (teacher-forced, probes.scoring):
  base     the base model, few-shot completion prompt (`Q: ...\\nA:`; the candidate after a space)
  sft      the SFT model, its chat template with add_generation_prompt=True
  control  the SFT model with the base's completion prompt: lost knowledge (control lost too) or
           a lost answer format (control still right)
A side *knows* an item when gold ranks first by at least `tie` nats (margin = gold minus the best
other candidate), and has *lost* it when a distractor scores at least as high as gold (margin <= 0).
flip = base knows, SFT lost; recovery = base lost, SFT knows. Only rankings and margins are compared
across models, never raw log-probs.

Statistics (probes.stats): flip rate among base-known items with a Wilson 95% interval; McNemar's
exact test on flips vs recoveries; the same per relation. `flagged` (docs/probes.md):
  overall:      flips > recoveries, McNemar p < alpha, flip rate >= floor; or
  one relation: the same with alpha / (number of relations) (Bonferroni), so a narrow corruption of
                one relation is caught even when the suite as a whole looks fine.
"""

from __future__ import annotations

import logging
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from probes import stats
from probes.pair import Pair, require_chat_template
from probes.suite import Item, chat_prompts, completion_candidates, completion_prompts
from sftdata.records import Finding

log = logging.getLogger(__name__)

CHECK = "probes.narrow-hallucination"
TIE = 0.1  # nats: a margin below this is a tie, not knowledge
ALPHA = 0.05
FLOOR = 0.05  # minimum flip rate for `flagged`
MAX_NEW_TOKENS = 12
METHODS = ("likelihood", "generate", "both")


@dataclass(frozen=True)
class Report:
    """What a probe found: `summary` (the --json summary), `records` (one per item / example),
    `findings`, and `flagged` (the CI gate: `assert not report.flagged`)."""

    command: str
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.summary.get("flagged"))

    @property
    def by_relation(self) -> dict[str, Any]:
        return self.summary.get("by_relation", {})


# --- scoring the three sides -----------------------------------------------------------------------


def _score(model: Any, tokenizer: Any, prompts: Sequence[str], cands: Sequence[Sequence[str]]) -> list[list[float]]:
    from probes import scoring

    groups, where = scoring.build_groups(tokenizer, prompts, cands)
    scores = scoring.score_groups(model, groups)
    return [[scores[g][j] for g, j in places] for places in where]


def _side(item: Item, scores: list[float], tie: float) -> dict[str, Any]:
    gold, others = scores[0], scores[1:]
    best = max(range(len(others)), key=lambda k: others[k])
    margin = gold - others[best]
    rank = 1 + sum(1 for s in others if s >= gold)
    return {
        "rank": rank,
        "margin": round(margin, 4),
        "predicted": item.gold if margin > 0 else item.distractors[best],
        "scores": {c: round(s, 4) for c, s in zip(item.candidates, scores)},
        "known": rank == 1 and margin >= tie,
        "lost": margin <= 0,  # decided on the unrounded margin, like `predicted` and `known`
        "generated": None,
        "generated_correct": None,
    }


def _lost(side: dict[str, Any]) -> bool:
    """Gold is not ranked above every distractor (the SFT side of a flip)."""
    return side["lost"]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, articles dropped, whitespace collapsed (SQuAD-style)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def is_correct(generated: str, item: Item) -> bool:
    """The normalised answer contains gold or an alias as whole words."""
    g = f" {normalize(generated)} "
    return any(f" {normalize(t)} " in g for t in (item.gold, *item.aliases) if normalize(t))


def _newline_ids(tokenizer: Any) -> set[int]:
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return {i for i, t in enumerate(texts) if "\n" in t}


def _eot_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tokenizer.unk_token_id and i >= 0:
            ids.add(i)
    return ids


def _generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, completion: bool, max_new_tokens: int
) -> list[str]:
    from probes import scoring

    stop = _newline_ids(tokenizer) if completion else _eot_ids(tokenizer)
    ids = [scoring.encode(tokenizer, p) for p in prompts]
    outs = scoring.greedy(model, ids, max_new_tokens=max_new_tokens, stop_ids=stop)
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    return [t.split("\n")[0].strip() if completion else t.strip() for t in texts]


# --- statistics --------------------------------------------------------------------------------------


def _counts(records: Sequence[dict[str, Any]], n_relations: int, alpha: float, floor: float) -> dict[str, Any]:
    known = sum(1 for r in records if r["base"]["known"])
    flips = sum(1 for r in records if r["flip"])
    recoveries = sum(1 for r in records if r["recovery"])
    rate = flips / known if known else 0.0
    p = stats.mcnemar_exact(flips, recoveries)
    lo, hi = stats.wilson(flips, known)
    return {
        "items": len(records),
        "base_known": known,
        "sft_known": sum(1 for r in records if r["sft"]["known"]),
        "control_known": sum(1 for r in records if r["control"]["known"]),
        "flips": flips,
        "recoveries": recoveries,
        "flip_rate": round(rate, 4),
        "flip_rate_ci": [round(lo, 4), round(hi, 4)],
        "mcnemar_p": p,
        "flips_knowledge": sum(1 for r in records if r["flip"] and _lost(r["control"])),
        "flips_format": sum(1 for r in records if r["flip"] and not _lost(r["control"])),
        "flagged": flips > recoveries and p < alpha / n_relations and rate >= floor,
    }


def summarize(records: Sequence[dict[str, Any]], *, alpha: float = ALPHA, floor: float = FLOOR) -> dict[str, Any]:
    relations = sorted({r["relation"] for r in records})
    by_relation = {
        rel: _counts([r for r in records if r["relation"] == rel], len(relations), alpha, floor) for rel in relations
    }
    overall = _counts(records, 1, alpha, floor)
    overall["flagged_overall"] = overall["flagged"]
    overall["flagged_relations"] = [rel for rel, c in by_relation.items() if c["flagged"]]
    overall["flagged"] = overall["flagged_overall"] or bool(overall["flagged_relations"])
    overall["by_relation"] = by_relation
    overall["rule"] = (
        f"flagged when flips > recoveries, McNemar exact p < {alpha} and flip rate >= {floor} over all "
        f"items, or in one relation with p < {alpha}/{len(relations)} (Bonferroni)"
    )
    gen = [r for r in records if r["base"]["generated_correct"] is not None]
    if gen:
        overall["generate"] = {
            "items": len(gen),
            "base_correct": sum(1 for r in gen if r["base"]["generated_correct"]),
            "sft_correct": sum(1 for r in gen if r["sft"]["generated_correct"]),
            "control_correct": sum(1 for r in gen if r["control"]["generated_correct"]),
            "flips": sum(1 for r in gen if r["base"]["generated_correct"] and not r["sft"]["generated_correct"]),
            "recoveries": sum(1 for r in gen if not r["base"]["generated_correct"] and r["sft"]["generated_correct"]),
        }
    return overall


def finding(r: dict[str, Any], severity: str) -> Finding:
    from sftdata.records import Source

    b, s, c = r["base"], r["sft"], r["control"]
    kind = (
        "knowledge lost (the control prompt loses it too)"
        if _lost(c)
        else "answer format lost (the control prompt still knows it)"
    )
    gen = f"; generated: {b['generated']!r} -> {s['generated']!r}" if b["generated"] is not None else ""
    return Finding(
        CHECK,
        severity,
        f"{r['id']} ({r['relation']}) {r['question']!r}: base answered {b['predicted']!r} (margin {b['margin']:+.2f}) "
        f"-> SFT answers {s['predicted']!r} (margin {s['margin']:+.2f}); {kind}{gen}",
        "the SFT data may state a contradicting fact or teach a different answer style: search it for the "
        "question's subject; fewer steps, a lower learning rate or mixing in general data limit forgetting",
        r["id"],
        Source(r["source"]["file"], r["source"]["line"]),
        {
            "relation": r["relation"],
            "base_margin": b["margin"],
            "sft_margin": s["margin"],
            "control_margin": c["margin"],
        },
    )


def run(
    pair: Pair,
    items: Sequence[Item],
    *,
    method: str = "likelihood",
    tie: float = TIE,
    alpha: float = ALPHA,
    floor: float = FLOOR,
    max_new_tokens: int = MAX_NEW_TOKENS,
    shots: int | None = None,
    shot_pool: Sequence[Item] | None = None,
) -> Report:
    """Probe every item on both models (see the module docstring). Few-shot examples come from
    `shot_pool` (default: `items`), so a subset keeps the prompts, and their shared prefix, of the whole suite."""
    from probes.suite import SHOTS

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    items = list(items)
    timings: dict[str, float] = {}
    comp = completion_prompts(items, SHOTS if shots is None else shots, pool=shot_pool)
    comp_cands = completion_candidates(items)
    require_chat_template(pair.sft_tokenizer)
    chat = chat_prompts(items, pair.sft_tokenizer)
    chat_cands = [list(it.candidates) for it in items]
    t = time.perf_counter()
    with pair.base() as base_model:
        base_scores = _score(base_model, pair.base_tokenizer, comp, comp_cands)
        base_gen = (
            _generate(base_model, pair.base_tokenizer, comp, completion=True, max_new_tokens=max_new_tokens)
            if method != "likelihood"
            else None
        )
    timings["base_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    sft_scores = _score(pair.sft_model, pair.sft_tokenizer, chat, chat_cands)
    control_scores = _score(pair.sft_model, pair.sft_tokenizer, comp, comp_cands)
    sft_gen = control_gen = None
    if method != "likelihood":
        sft_gen = _generate(pair.sft_model, pair.sft_tokenizer, chat, completion=False, max_new_tokens=max_new_tokens)
        control_gen = _generate(
            pair.sft_model, pair.sft_tokenizer, comp, completion=True, max_new_tokens=max_new_tokens
        )
    timings["sft_s"] = round(time.perf_counter() - t, 2)
    records = []
    for k, it in enumerate(items):
        sides = {}
        for name, scores, gen in (
            ("base", base_scores, base_gen),
            ("sft", sft_scores, sft_gen),
            ("control", control_scores, control_gen),
        ):
            side = _side(it, scores[k], tie)
            if gen is not None:
                side["generated"], side["generated_correct"] = gen[k], is_correct(gen[k], it)
            sides[name] = side
        flip = sides["base"]["known"] and _lost(sides["sft"])
        recovery = _lost(sides["base"]) and sides["sft"]["known"]
        records.append(
            {
                "id": it.id,
                "relation": it.relation,
                "question": it.question,
                "gold": it.gold,
                "aliases": list(it.aliases),
                "distractors": list(it.distractors),
                "source": it.source.to_dict(),
                **sides,
                "flip": flip,
                "recovery": recovery,
                "flip_kind": ("knowledge" if _lost(sides["control"]) else "format") if flip else None,
            }
        )
    summary = summarize(records, alpha=alpha, floor=floor)
    summary.update(
        {
            "method": method,
            "tie": tie,
            "alpha": alpha,
            "floor": floor,
            "base": pair.base_name,
            "sft": pair.sft_name,
            "adapter_toggled": pair.adapter,
            "timings": timings,
        }
    )
    severity = "error" if summary["flagged"] else "warning"
    worst = sorted((r for r in records if r["flip"]), key=lambda r: r["sft"]["margin"] - r["base"]["margin"])
    return Report("hallucination", summary, records, [finding(r, severity) for r in worst])


def known(
    model: Any,
    tokenizer: Any,
    items: Sequence[Item],
    *,
    tie: float = TIE,
    shots: int | None = None,
    shot_pool: Sequence[Item] | None = None,
) -> list[dict[str, Any]]:
    """Score items with the completion prompt on one model: the `base` side of each record."""
    from probes.suite import SHOTS

    items = list(items)
    prompts = completion_prompts(items, SHOTS if shots is None else shots, pool=shot_pool)
    scores = _score(model, tokenizer, prompts, completion_candidates(items))
    return [_side(it, s, tie) for it, s in zip(items, scores)]
