"""pytest fixture `sft_probe` (entry point `pytest11: sftlab-probes`): gate your CI on what SFT did.

    def test_sft_kept_facts(sft_probe):
        report = sft_probe(base="smollm2-135m-instruct", sft="runs/demo", suite="builtin")
        assert not report.flagged, report.summary["by_relation"]

`sft_probe(...)` takes the arguments of `probes.hallucination` and returns its Report. Importing
this module does not import torch.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def sft_probe() -> Any:
    from probes import hallucination

    def probe(base: Any = None, sft: Any = None, suite: Any = "builtin", **kwargs: Any) -> Any:
        return hallucination(base, sft, suite, **kwargs)

    return probe
