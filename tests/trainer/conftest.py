from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from trainer.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {name: make_tiny_model(root / name, name) for name in ("upscaler", "onestep")}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    # accelerate keeps one process-wide state whose mixed precision cannot change once set; a CLI run trains
    # once per process, but this suite trains many times with different settings.
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state()
