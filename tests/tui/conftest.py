"""Run directories for the TUI tests, built by the real commands (`sftdata audit`, `sftdata dedup`,
a 2-step `sfttrain run` on a tiny random model) once per session. Under pytest-xdist the workers
share one copy (a file lock), so the commands run once.

Everything runs with the session's base directory as the working directory and relative paths,
so the paths a run records (and the snapshots show) are the same on every machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PARAGRAPH = (
    "Photosynthesis is the process by which green plants and some other organisms use sunlight "
    "to synthesize foods from carbon dioxide and water. It generally involves the green pigment "
    "chlorophyll and generates oxygen as a byproduct, which is released into the air we breathe."
)


def _msgs(q: str, a: str, system: str | None = None) -> dict:
    m = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + m}


TRAIN = [
    _msgs("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    _msgs("Explain photosynthesis.", PARAGRAPH),
    _msgs("What is 2+2?", "2 + 2 = 4."),
    _msgs("Explain photosynthesis briefly.", PARAGRAPH.replace("green plants", "plants")),
    _msgs("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    _msgs("Name three primary colours.", "Red, yellow and blue.", system="Answer in one line."),
    _msgs(
        "Who wrote Hamlet?",
        "William Shakespeare wrote Hamlet around 1600, and it remains one of his most performed plays.",
    ),
    _msgs("Translate 'cat' to French.", "Chat."),
    {
        "messages": [
            {"role": "user", "content": "Give me a recipe."},
            {"role": "assistant", "content": "Whisk two eggs, season them and cook them gently in butter."},
            {"role": "user", "content": "How long does it take?"},
            {"role": "assistant", "content": "About five minutes."},
        ]
    },
    _msgs("What is the boiling point of water at sea level?", "100 degrees Celsius, or 212 degrees Fahrenheit."),
]
EVAL = [
    _msgs(
        "Who wrote Hamlet?",
        "William Shakespeare wrote Hamlet around 1600, and it remains one of his most performed plays.",
    ),
    _msgs("What is the largest planet?", "Jupiter is the largest planet in the solar system."),
]
REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _cmd(args: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _build(base: Path) -> None:
    """base/data/*.jsonl, base/runs/audit (audit + dedup), base/runs/train (sfttrain: audit + train)."""
    data = base / "data"
    _write(data / "train.jsonl", TRAIN)
    _write(data / "eval.jsonl", EVAL)
    shutil.copy(REPO / "examples" / "defects.jsonl", data / "defects.jsonl")
    _cmd(
        [
            _bin("sftdata"),
            "audit",
            "data/defects.jsonl",
            "data/train.jsonl",
            "--model",
            "smollm2-135m-instruct",
            "--max-length",
            "256",
            "--run-dir",
            "runs/audit",
        ],
        base,
        ok=(0, 1),
    )
    _cmd(
        [
            _bin("sftdata"),
            "dedup",
            "data/train.jsonl",
            "--against",
            "data/eval.jsonl",
            "--threshold",
            "0.7",
            "--run-dir",
            "runs/audit",
        ],
        base,
        ok=(0, 1),
    )


def _build_train(base: Path) -> None:
    code = (
        "from sftdata.models import load_tokenizer\n"
        "from sftdata.pytest_plugin import build_tiny_causal_lm\n"
        "t = load_tokenizer('smollm2-135m-instruct')\n"
        "build_tiny_causal_lm(t).save_pretrained('tiny-model'); t.save_pretrained('tiny-model')\n"
    )
    _cmd([sys.executable, "-c", code], base)
    _cmd(
        [
            _bin("sfttrain"),
            "run",
            "--model",
            "tiny-model",
            "--data",
            "data/train.jsonl",
            "--output-dir",
            "runs/train",
            "--max-steps",
            "2",
            "--max-length",
            "256",
            "--batch-size",
            "2",
            "--logging-steps",
            "1",
            "--no-lora",
            "--save-steps",
            "100",
        ],
        base,
    )


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    from filelock import FileLock

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp()
    root = root.parent if worker else root  # the session's directory, shared by its xdist workers
    base = root / "tui-runs"
    base.mkdir(exist_ok=True)
    done = base / f".{name}.done"
    with FileLock(str(base / f".{name}.lock")):
        if not done.exists():
            build(base)
            done.touch()
    return base


@pytest.fixture(scope="session")
def runs_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base directory (data/, runs/audit) built once; tests chdir here and open `runs/audit`."""
    return _shared(tmp_path_factory, "audit", _build)


@pytest.fixture(scope="session")
def train_base(tmp_path_factory: pytest.TempPathFactory, runs_base: Path) -> Path:
    return _shared(tmp_path_factory, "train", _build_train)


@pytest.fixture
def in_base(runs_base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(runs_base)
    return runs_base


def _build_probes(base: Path) -> None:
    """runs/train gets probes/: `probes hallucination` (one item per relation) and `probes overfit`
    between the tiny base model and its 2-step fine-tune."""
    sft = "runs/train/train/model"
    _cmd(
        [
            sys.executable,
            "-m",
            "probes",
            "hallucination",
            "--base",
            "tiny-model",
            "--sft",
            sft,
            "--run-dir",
            "runs/train",
            "--limit",
            "1",
        ],
        base,
        ok=(0, 1),
    )
    _cmd(
        [
            sys.executable,
            "-m",
            "probes",
            "overfit",
            "--base",
            "tiny-model",
            "--sft",
            sft,
            "--train",
            "data/train.jsonl",
            "--heldout",
            "data/eval.jsonl",
            "--run-dir",
            "runs/train",
            "--limit",
            "6",
            "--generate",
            "1",
        ],
        base,
        ok=(0, 1),
    )


@pytest.fixture(scope="session")
def probes_base(tmp_path_factory: pytest.TempPathFactory, train_base: Path) -> Path:
    import importlib.util

    if importlib.util.find_spec("probes.cli") is None:
        pytest.skip("the probes package (issue 11) is not in this tree yet")
    return _shared(tmp_path_factory, "probes", _build_probes)
