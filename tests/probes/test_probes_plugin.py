"""The `sft_probe` fixture and the import contract (probes never imports sfttrain; no torch at import)."""

from __future__ import annotations

import subprocess
import sys


def test_sft_probe_fixture_gates_on_flagged(sft_probe, fact_models, suite_file):
    base, sft, tok = fact_models
    assert not sft_probe(base=base, sft=base, suite=str(suite_file), tokenizer=tok).flagged
    assert sft_probe(base=base, sft=sft, suite=str(suite_file), tokenizer=tok).flagged


def test_imports_stay_light():
    code = (
        "import sys, probes, probes.cli, probes.suite, probes.stats, probes.pytest_plugin\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert not any(m == 'sfttrain' or m.startswith('sfttrain.') for m in sys.modules), 'sfttrain imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_no_sfttrain_import_in_source():
    from pathlib import Path

    import probes

    for path in Path(probes.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import sfttrain" not in text and "from sfttrain" not in text, path
