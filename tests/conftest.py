"""Suite-wide set-up: the tests run offline however pytest is started, and `gpu` tests skip
themselves where CUDA is absent.

The offline switches are set here, at conftest import, before any test module imports
huggingface_hub (which reads them once, at its own import). The sftlab pytest plugin, loaded
earlier, imports neither huggingface_hub nor transformers.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
for _key, _value in OFFLINE.items():
    os.environ.setdefault(_key, _value)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not _has_cuda():
        skip = pytest.mark.skip(reason="needs CUDA (marked gpu); none here")
        for item in gpu:
            item.add_marker(skip)
