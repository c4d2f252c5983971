"""Shared fixtures for the sftdata tests."""

from __future__ import annotations

import pytest

from sftdata.testing.families import family_tokenizer


@pytest.fixture(scope="module")
def fam(sft_tokenizer):
    """fam(name): the demo tokenizer carrying a real model family's chat template (cached)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = family_tokenizer(sft_tokenizer, name)
        return cache[name]

    return get
