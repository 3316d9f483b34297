"""Shared test setup: the repository root on sys.path (for `tests.tiny`), tiny checkpoints."""
from __future__ import annotations

import sys
from pathlib import Path

import keystroke.engine  # noqa: F401  (sets how torch's threads wait, before torch loads)

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import make_tiny_model_dir
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama") / "model", family="llama",
                               config_overrides={"max_position_embeddings": 4096})


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import make_tiny_model_dir
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-gemma") / "model", family="gemma3",
                               config_overrides={"max_position_embeddings": 4096})
