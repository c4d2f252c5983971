"""probes: what SFT did to the model."""
