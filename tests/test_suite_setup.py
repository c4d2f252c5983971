"""The suite's own set-up (tests/conftest.py): offline under plain `pytest`, gpu tests skipped
without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_plain_pytest_runs_offline(tmp_path):
    """Started without any HF_* variable, a test still sees the hub switched off."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os\n"
        "def test_offline():\n"
        "    import huggingface_hub.constants as c\n"
        "    assert os.environ['HF_HUB_OFFLINE'] == '1' and c.HF_HUB_OFFLINE\n"
    )
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_gpu_tests_skip_without_cuda(pytester):
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile("""
        import pytest

        @pytest.mark.gpu
        def test_needs_a_gpu():
            import torch
            assert torch.cuda.is_available()
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "markers=gpu: needs CUDA")
    # asked in a subprocess: importing torch here, under pytester's sys.modules snapshot, would unload numpy
    has_cuda = (
        subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        == "True"
    )
    if has_cuda:
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
