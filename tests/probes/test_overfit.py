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


NEUTRAL = ["The weather was mild for most of the week.", "She walked to the market and bought some fruit."]
LONG = " ".join(["apple"] * 10)  # 10 tokens: "apple" + 9 x " apple"


def _write_answers(path, pairs):
    """Training file of (user prompt, assistant answer) pairs."""
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_regurgitation_fires_when_a_perturbed_prompt_still_gets_the_training_answer(
    overfit_models, phi_tools, tmp_path
):
    """The SFT model says ' apple' whatever the prompt, so with a perturbed prompt it repeats the
    10-token training answer 'apple apple ...' verbatim (overlap 9/10): flagged. Controls in the same
    run: the 7-token 'apple' x 7 it also repeats (overlap 6/7, above 0.8) is below the 8-token floor,
    and the 10-token 'river river ...' answer overlaps nothing; neither is flagged."""
    _, _, _, _, tok = overfit_models
    build_tiny_phi, _ = phi_tools
    base = build_tiny_phi(tok, seed=2)
    parrot = _bias(base, tok, {" apple": 40.0})
    train = _write_answers(
        tmp_path / "train.jsonl",
        [
            ("Say apple ten times (10).", LONG),
            ("Say apple seven times (7).", " ".join(["apple"] * 7)),
            ("Say river ten times (10).", LONG.replace("apple", "river")),
        ],
    )
    report = probes.overfit(base, parrot, str(train), tokenizer=tok, generate=3, neutral=NEUTRAL[:1])
    regurg = [f for f in report.findings if f.check == "probes.regurgitation"]
    assert len(regurg) == 1 and regurg[0].severity == "warning"
    assert regurg[0].source.line == 1 and regurg[0].data["overlap"] == pytest.approx(0.9)
    rows = [r for r in report.records if r["kind"] == "memorization" and "regurgitation_overlap" in r]
    by_line = {r["source"]["line"]: r for r in rows}
    assert sorted(by_line) == [1, 2, 3]
    assert by_line[1]["perturbed_prompt"] == "Say apple ten times (11)."  # numbers +1
    assert by_line[1]["regurgitation_overlap"] == pytest.approx(0.9)
    assert by_line[1]["sft_perturbed_answer"].split()[:9] == ["apple"] * 9
    assert by_line[2]["perturbed_prompt"] == "Say apple seven times (8)."
    assert by_line[2]["regurgitation_overlap"] == pytest.approx(6 / 7, abs=1e-4)  # >= 0.8, but only 7 tokens
    assert by_line[3]["regurgitation_overlap"] == 0.0


def test_run_on_into_a_new_turn_is_flagged(overfit_models, tmp_path):
    """An SFT model that never ends its turn and opens a new one (<|im_start|>) runs on; one that ends
    its turn at once, and one that never ends it but opens no new turn, do not."""
    _, _, stops, _, tok = overfit_models
    train = _write(tmp_path / "train.jsonl", TRAIN[:2])
    run_on = copy_without_eot(_bias(stops, tok, {"<|im_start|>": 80.0}), tok)
    report = probes.overfit(stops, run_on, str(train), tokenizer=tok, generate=2, neutral=NEUTRAL[:1])
    st = report.summary["stopping"]
    assert st["sft_run_on"] == 2 and st["sft_stop_rate"] == 0.0
    stopping = [r for r in report.records if r["kind"] == "stopping"]
    assert all(r["sft_run_on"] and not r["base_run_on"] for r in stopping)
    run_ons = [f for f in report.findings if f.check == "probes.run-on"]
    assert len(run_ons) == 1 and run_ons[0].message.startswith("2 of 2 greedy SFT answers")
    # controls: stops at once (end-of-turn emitted); never stops but writes no turn header
    for sft in (stops, copy_without_eot(_bias(stops, tok, {" apple": 80.0}), tok)):
        control = probes.overfit(stops, sft, str(train), tokenizer=tok, generate=2, neutral=NEUTRAL[:1])
        assert control.summary["stopping"]["sft_run_on"] == 0
        assert "probes.run-on" not in [f.check for f in control.findings]


def test_run_on_detection_on_token_ids(sft_tokenizer):
    """What counts as running on: a turn header or a role line with no end-of-turn token before it."""
    from probes.facts import _eot_ids
    from probes.overfitting import _run_on

    tok = sft_tokenizer
    eot = _eot_ids(tok)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    assert _run_on(tok, ids("Paris.<|im_start|>user"), eot)
    assert _run_on(tok, ids("Paris.\nUser: and Rome?"), eot)
    assert not _run_on(tok, ids("Paris.<|im_end|><|im_start|>user"), eot)  # ended its turn first
    assert not _run_on(tok, ids("Paris is the capital, the user said"), eot)  # no new turn


SPECIAL = "<special_token_1>"


def test_special_token_leak_and_learning(overfit_models, phi_tools, tmp_path):
    """The SFT tokenizer adds <special_token_1>; one training answer is that token. Both SFT models
    learned to end the turn (<|im_end|>, newline raised by 8). The leaky one also raised the new token
    by 10: the answer using it gained, and after unrelated prompts it takes a good part of the
    first-token mass: probes.special-token-leak. The quiet one suppressed the token: it gained far
    less on that answer, its leak is ~0 and nothing fires."""
    import copy

    _, _, _, _, tok = overfit_models
    build_tiny_phi, _ = phi_tools
    sft_tok = copy.deepcopy(tok)
    sft_tok.add_special_tokens({"additional_special_tokens": [SPECIAL]})
    new_id = sft_tok.convert_tokens_to_ids(SPECIAL)
    assert new_id == len(tok)  # a genuinely new id, beyond the base vocabulary
    base = build_tiny_phi(tok, seed=3)

    def sft_with(amount):
        m = _bias(base, tok, {"<|im_end|>": 8.0, "\n": 8.0})
        m.resize_token_embeddings(len(sft_tok), mean_resizing=False)
        assert m.lm_head.bias.shape[0] == len(sft_tok)
        with torch.no_grad():
            m.lm_head.bias[new_id] = amount
        return m.eval()

    train = _write_answers(tmp_path / "train.jsonl", [("What is the code word?", SPECIAL), ("Name a fruit.", "apple")])
    kw = {"tokenizer": tok, "sft_tokenizer": sft_tok, "generate": 0, "neutral": NEUTRAL}
    leaky = probes.overfit(base, sft_with(10.0), str(train), **kw)
    sp = leaky.summary["special_facts"]
    assert sp["added_tokens"] == [SPECIAL] and sp["train_examples_using_them"] == 1
    assert 0.05 < sp["leak_mean"] <= sp["leak_max"] < 0.9
    leaks = [f for f in leaky.findings if f.check == "probes.special-token-leak"]
    assert len(leaks) == 1 and SPECIAL in leaks[0].message
    assert [r for r in leaky.records if r["kind"] == "special-facts"][0]["leak_max"] == sp["leak_max"]
    # control: the token exists but the model never produces it
    quiet = probes.overfit(base, sft_with(-40.0), str(train), **kw)
    sq = quiet.summary["special_facts"]
    assert sq["added_tokens"] == [SPECIAL] and sq["train_examples_using_them"] == 1 and sq["leak_max"] < 1e-6
    assert "probes.special-token-leak" not in [f.check for f in quiet.findings]
    # learned vs not: the gain on the example using the token differs by the ~48 nats of its bias
    assert sp["mean_gain_per_token_using_them"] > sq["mean_gain_per_token_using_them"] + 10
    # no added tokens: the section is empty and nothing is probed
    same = probes.overfit(base, base, str(train), tokenizer=tok, generate=0, neutral=NEUTRAL)
    assert same.summary["special_facts"] == {"added_tokens": []}
    assert not [r for r in same.records if r["kind"] == "special-facts"]


def _bias(model, tok, amounts):
    """A copy of `model` with the output bias of each single token (text -> amount) raised."""
    import copy

    out = copy.deepcopy(model)
    with torch.no_grad():
        for text, amount in amounts.items():
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, text
            out.lm_head.bias[ids[0]] += amount
    return out.eval()
