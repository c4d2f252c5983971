"""`probes overfit` on tiny models built to memorize / to lose the end-of-turn token."""

from __future__ import annotations

import json

import pytest

import probes
from probes.cli import main

torch = pytest.importorskip("torch")

TRAIN = [
    "apple river stone",
    "cloud green table",
    "music bread light",
    "house chair paper",
    "apple stone music",
    "green paper house",
]
HELDOUT = [
    "dragon castle wizard",
    "tiger violin pirate",
    "rocket zebra dragon",
    "castle tiger rocket",
    "wizard zebra violin",
    "pirate castle tiger",
]


def _write(path, answers):
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Say three words, please ({i})."},
                        {"role": "assistant", "content": a},
                    ]
                }
            )
            + "\n"
            for i, a in enumerate(answers)
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def overfit_models(sft_tokenizer, phi_tools):
    build_tiny_phi, with_bias = phi_tools
    tok = sft_tokenizer
    base = build_tiny_phi(tok, seed=1)
    words = sorted({w for a in TRAIN for w in a.split()})
    memorized = with_bias(base, tok, words, 8.0)  # the training answers became likely, held-out ones did not
    stops = with_bias(base, tok, ["<|im_end|>"], 30.0)  # answers end at once
    return base, memorized, stops, copy_without_eot(stops, tok), tok


def copy_without_eot(model, tok):
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        out.lm_head.bias[tok.convert_tokens_to_ids("<|im_end|>")] -= 50.0
        out.lm_head.bias[tok.eos_token_id] -= 50.0
    return out.eval()


def test_memorization_auc_and_rows(overfit_models, tmp_path):
    base, memorized, _, _, tok = overfit_models
    train, heldout = _write(tmp_path / "train.jsonl", TRAIN), _write(tmp_path / "heldout.jsonl", HELDOUT)
    report = probes.overfit(
        base, memorized, str(train), str(heldout), tokenizer=tok, run_dir=tmp_path / "run", generate=2
    )
    s = report.summary
    assert s["membership_auc"] == 1.0 and s["membership_auc_ci"][0] > 0.5
    assert s["mean_gain_per_token_train"] > s["mean_gain_per_token_heldout"]
    assert "probes.memorization" in [f.check for f in report.findings]
    kinds = [r["kind"] for r in report.records]
    assert kinds.count("memorization") == 12 and kinds.count("stopping") == 2 and "drift" in kinds
    mem = [r for r in report.records if r["kind"] == "memorization"]
    assert mem[0]["source"] == {"file": str(train), "line": 1} and mem[0]["split"] == "train"
    assert s["drift"]["kl_mean"] > 0 and len(s["drift"]["top_boosted"]) == 10
    boosted = {t["token"].strip() for t in s["drift"]["top_boosted"]}
    assert boosted & {w for a in TRAIN for w in a.split()}  # the tokens SFT boosted are the trained words
    summary = json.loads((tmp_path / "run/probes/summary.json").read_text())
    assert "overfit" in summary
    # identical models: no memorization signal, no drift
    same = probes.overfit(base, base, str(train), str(heldout), tokenizer=tok, generate=0)
    assert same.summary["membership_auc"] == 0.5 and same.summary["drift"]["kl_mean"] == pytest.approx(0, abs=1e-6)
    assert not same.flagged


def test_lost_end_of_turn_is_flagged(overfit_models, tmp_path, capsys):
    _, _, stops, no_stop, tok = overfit_models
    train = _write(tmp_path / "train.jsonl", TRAIN)
    report = probes.overfit(stops, no_stop, str(train), tokenizer=tok, generate=2)
    st = report.summary["stopping"]
    assert st["sft_p_eot_mean"] < 1e-6 and st["base_p_eot_mean"] > 0.3
    assert st["base_stop_rate"] == 1.0 and st["sft_stop_rate"] == 0.0
    assert report.flagged and "probes.stop-lost" in [f.check for f in report.findings]


def test_overfit_cli_usage(tmp_path):
    assert main(["overfit", "--help"]) == 0
    assert main(["overfit", "--sft", "x"]) == 2  # --train is required
    assert main(["overfit", "--sft", "x", "--base", "y", "--train", str(tmp_path / "missing.jsonl")]) == 2


def test_chat_templates_a_pretrained_base_lacks_and_an_sft_model_must_have(overfit_models, suite_file, tmp_path):
    """A pretrained base has no chat template: overfit asks it in the SFT model's. An SFT tokenizer
    without one is a usage error naming --sft, not a crash."""
    import copy

    from probes.pair import PairError

    base, memorized, _, _, tok = overfit_models
    plain = copy.copy(tok)
    plain.chat_template = None
    train = _write(tmp_path / "train.jsonl", TRAIN)
    with_plain_base = probes.overfit(base, memorized, str(train), tokenizer=plain, sft_tokenizer=tok, generate=1)
    reference = probes.overfit(base, memorized, str(train), tokenizer=tok, generate=1)
    assert with_plain_base.records == reference.records
    with pytest.raises(PairError, match="--sft: its tokenizer has no chat template"):
        probes.overfit(base, memorized, str(train), tokenizer=tok, sft_tokenizer=plain, generate=0)
    with pytest.raises(PairError, match="--sft: its tokenizer has no chat template"):
        probes.hallucination(base, memorized, str(suite_file), tokenizer=tok, sft_tokenizer=plain)
