"""Correctness against a peer: our log-probs equal lm-evaluation-harness `HFLM.loglikelihood` on
the same (context, continuation) requests, to 1e-4 nats in fp32, on a tiny in-process model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lm_eval")

from probes import scoring  # noqa: E402
from sftdata.pytest_plugin import build_tiny_causal_lm  # noqa: E402

REQUESTS = [
    ("Q: What is the capital of France?\nA:", " Paris"),
    ("Q: What is the capital of France?\nA:", " Lyon"),
    ("Q: What is the capital of France?\nA:", " Marseille is a port"),
    ("Q: What is the capital of Peru?\nA:", " Lima"),
    ("Q: What is the capital of Peru?\nA: ", "Cusco"),  # trailing space moves to the continuation
    ("<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n", "William Shakespeare"),
    ("<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n", "Charles Dickens"),
    ("The sky is", " blue"),
    ("Totally different context with more words in it, to vary the lengths", " yes"),
]


@pytest.fixture(scope="module")
def model_and_tok(sft_tokenizer):
    model = build_tiny_causal_lm(sft_tokenizer, seed=3, hidden_size=64)
    model.eval()
    return model, sft_tokenizer


def test_loglikelihood_matches_lm_eval(model_and_tok):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = model_and_tok
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    instances = [Instance("loglikelihood", {}, req, i) for i, req in enumerate(REQUESTS)]
    theirs = [lp for lp, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    for max_rows in (1, 3, 64):  # batching and shared-prefix caching must not change a number
        ours = scoring.loglikelihood(model, tok, REQUESTS, max_rows=max_rows)
        assert ours == pytest.approx(theirs, abs=1e-4), (max_rows, ours, theirs)
    # the comparison can fail: a different model gives different numbers
    other = build_tiny_causal_lm(tok, seed=4, hidden_size=64).eval()
    assert scoring.loglikelihood(other, tok, REQUESTS) != pytest.approx(theirs, abs=1e-4)


def test_greedy_matches_transformers_generate(model_and_tok):
    model, tok = model_and_tok
    prompts = [scoring.encode(tok, c) for c, _ in REQUESTS[:6:2]] + [scoring.encode(tok, "The sky is")]
    ours = scoring.greedy(model, prompts, max_new_tokens=6, stop_ids=set(), max_rows=8)
    for p, o in zip(prompts, ours):
        ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        assert o == ref[0, len(p) :].tolist()


def _family(name, tok):
    """A tiny random model of a family whose forward() changes the logits after the output layer."""
    import transformers

    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tok.pad_token_id,
    )
    cls, extra = {
        "gemma2": ("Gemma2", {"final_logit_softcapping": 0.5, "head_dim": 16}),  # tanh soft-cap
        "cohere": ("Cohere", {"logit_scale": 8.0}),  # logits * logit_scale
        "granite": ("Granite", {"logits_scaling": 0.125}),  # logits / logits_scaling
    }[name]
    torch.manual_seed(0)
    config = getattr(transformers, cls + "Config")(**common, **extra)
    return getattr(transformers, cls + "ForCausalLM")(config).eval()


@pytest.mark.parametrize("family", ["gemma2", "cohere", "granite"])
def test_families_that_rescale_logits_score_like_their_forward(family, sft_tokenizer):
    """Scoring applies the output layer itself (only where a candidate token is predicted), so it
    must also apply what the family's forward() does after it; the reference is forward()'s logits."""
    tok = sft_tokenizer
    model = _family(family, tok)
    requests = REQUESTS[:5]
    reference = []
    with torch.inference_mode():
        for context, continuation in requests:
            ctx, cont = scoring.encode_pair(tok, context, continuation)
            logits = model(torch.tensor([ctx + cont])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            reference.append(sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
    assert scoring.loglikelihood(model, tok, requests) == pytest.approx(reference, abs=1e-4)
    prompt = scoring.encode(tok, "The sky is")
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert (
        scoring.greedy(model, [prompt], max_new_tokens=4, stop_ids=set(), max_rows=2)[0]
        == ref[0, len(prompt) :].tolist()
    )
