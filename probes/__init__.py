"""probes: what SFT did to the model. Compare a base model with its SFT model for narrow
hallucination (facts it knew and now answers wrongly), memorization, stopping and drift.

    import probes
    report = probes.hallucination(base="smollm2-135m-instruct", sft="runs/demo")
    assert not report.flagged

Importing this package does not import torch; the probes load it when they load models.
"""

from probes.api import hallucination, overfit
from probes.facts import Report

__all__ = ["Report", "hallucination", "overfit"]
