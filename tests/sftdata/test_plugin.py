"""The pytest plugin as a user meets it: installed entry point, fixtures in their own test file."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def test_fixtures_work_in_a_users_test_suite(pytester):
    pytester.makepyfile(
        """
        from sftdata import masks

        def test_answers_are_trained(sft_tokenizer, make_conversation):
            conv = make_conversation([("user", "What is 2+2?"), ("assistant", "4")])
            tok = masks.tokenize(conv, sft_tokenizer)
            assert masks.trained_text(tok, sft_tokenizer) == ["4<|im_end|>"]
            assert conv.source.file == "test.jsonl"

        def test_tiny_model_runs_on_tokens(tiny_causal_lm, sft_tokenizer, make_conversation):
            import torch
            tok = masks.tokenize(make_conversation([("user", "Hi"), ("assistant", "Hello!")]), sft_tokenizer)
            ids = torch.tensor([tok.input_ids])
            labels = torch.tensor([[i if m else -100 for i, m in zip(tok.input_ids, tok.loss_mask)]])
            out = tiny_causal_lm(input_ids=ids, labels=labels)
            assert out.logits.shape[-1] == len(sft_tokenizer) and torch.isfinite(out.loss)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def test_model_errors_name_the_parameter_and_next_step():
    import pytest

    from sftdata.errors import UsageError
    from sftdata.models import load_tokenizer

    with pytest.raises(UsageError, match="model 'someone/not-on-this-machine'.*sftdata models"):
        load_tokenizer("someone/not-on-this-machine")  # hub id, hub unreachable (HF_HUB_OFFLINE=1)
    with pytest.raises(UsageError, match="no such directory"):
        load_tokenizer("./no/such/dir")
