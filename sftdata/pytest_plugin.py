"""pytest plugin (entry point `pytest11: sftlab`): registers the fixtures of sftdata.testing.

    def test_my_answers_are_trained(sft_tokenizer, make_conversation):
        conv = make_conversation([("user", "Hi"), ("assistant", "Hello!")])
        tok = sftdata.masks.tokenize(conv, sft_tokenizer)
        assert tok.n_trained > 0

Fixtures: `sft_tokenizer`, `tiny_causal_lm`, `make_conversation` (sftdata.testing.fixtures) and
`sftdata_audit` (sftdata.testing.audit_fixture). The helpers behind them, `new_conversation` and
`build_tiny_causal_lm`, are importable from sftdata.testing.fixtures.
"""

from sftdata.testing.audit_fixture import sftdata_audit
from sftdata.testing.fixtures import (
    build_tiny_causal_lm,
    make_conversation,
    new_conversation,
    sft_tokenizer,
    tiny_causal_lm,
)

__all__ = [
    "build_tiny_causal_lm",
    "make_conversation",
    "new_conversation",
    "sft_tokenizer",
    "sftdata_audit",
    "tiny_causal_lm",
]
