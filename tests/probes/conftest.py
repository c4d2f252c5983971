"""Tiny in-process models whose answers are known by construction.

A tiny random Phi model (its output head has a bias) on the demo tokenizer: the base gets a large
bias on the tokens of every gold answer (so it knows every fact), the "corrupted" SFT model also a
larger bias on the distractors of one relation (so it flips exactly there)."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")

GOLDS = {
    "r1": ["apple", "river", "stone", "cloud", "green", "table", "music", "bread", "light", "house", "chair", "paper"],
    "r2": ["water", "glass", "night", "horse", "plant", "money", "story", "field", "sound", "power"],
}
DISTRACTORS = {"r1": ["zebra", "violin", "pirate", "rocket"], "r2": ["dragon", "castle", "wizard", "tiger"]}


def suite_rows() -> list[dict]:
    rows = []
    for rel, golds in GOLDS.items():
        for i, g in enumerate(golds):
            rows.append(
                {
                    "id": f"{rel}/{i}",
                    "relation": rel,
                    "question": f"Which word is number {i} of {rel}?",
                    "gold": g,
                    "aliases": [],
                    "distractors": DISTRACTORS[rel],
                }
            )
    return rows


def _token_ids(tok, words):
    ids = set()
    for w in words:
        for text in (w, " " + w):
            ids.update(tok(text, add_special_tokens=False)["input_ids"])
    return ids


def build_tiny_phi(tokenizer, seed=0):
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    cfg = PhiConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return PhiForCausalLM(cfg).eval()


def with_bias(model, tokenizer, words, amount):
    out = copy.deepcopy(model)
    with torch.no_grad():
        for t in _token_ids(tokenizer, words):
            out.lm_head.bias[t] += amount
    return out.eval()


@pytest.fixture(scope="session")
def fact_models(sft_tokenizer):
    """(base, corrupted sft, tokenizer): base knows every gold; sft prefers r1's distractors."""
    tok = sft_tokenizer
    d1, d2 = _token_ids(tok, DISTRACTORS["r1"]), _token_ids(tok, DISTRACTORS["r2"])
    golds = _token_ids(tok, [g for gs in GOLDS.values() for g in gs])
    assert not (golds & (d1 | d2)) and not (d1 & d2), "test words must not share tokens"
    base = with_bias(build_tiny_phi(tok), tok, [g for gs in GOLDS.values() for g in gs], 12.0)
    sft = with_bias(base, tok, DISTRACTORS["r1"], 30.0)
    return base, sft, tok


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in suite_rows()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def phi_tools():
    """(build_tiny_phi, with_bias) for tests that make their own models."""
    return build_tiny_phi, with_bias
