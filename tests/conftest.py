"""Keep every tool's state in a temporary directory during tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_helpers import ADMIN_TOKEN, save_models


@pytest.fixture(autouse=True)
def isolated_build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point LLMLAB_BUILD_DIR and the tools' home directories at a temp dir."""
    build = tmp_path / "build"
    monkeypatch.setenv("LLMLAB_BUILD_DIR", str(build))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(build / "wandb"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(build / "home" / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(build / "home" / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(build / "home" / "wandb-data"))
    monkeypatch.setenv("MPLCONFIGDIR", str(build / "home" / "matplotlib"))
    monkeypatch.setenv("KERAS_HOME", str(build / "home" / "keras"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{build / 'mlflow.db'}")
    return build


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of a tiny classifier, v1 and v2, that disagree."""
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin routes' token, as an operator sets it (service tests use it module-wide)."""
    monkeypatch.setenv("LLMLAB_ADMIN_TOKEN", ADMIN_TOKEN)
