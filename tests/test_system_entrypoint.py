"""`llmlab.system.entrypoint:app`, the import path deploy/rayservice.yaml gives KubeRay: it binds
the three deployments on the model and Redis named by the environment, without a cluster."""

from __future__ import annotations

import importlib
import sys

import pytest
from serving_helpers import save_models

serve = pytest.importorskip("ray.serve")


def import_entrypoint():
    """A fresh import, as `serve run` or KubeRay does in a new process."""
    sys.modules.pop("llmlab.system.entrypoint", None)
    return importlib.import_module("llmlab.system.entrypoint")


def test_the_entrypoint_binds_the_model_and_redis_of_the_environment(tmp_path, monkeypatch):
    """Catches an entrypoint that ignores LLMLAB_MODEL or LLMLAB_REDIS_URL."""
    model = save_models(tmp_path)["v2"]
    monkeypatch.setenv("LLMLAB_MODEL", str(model))
    monkeypatch.setenv("LLMLAB_REDIS_URL", "redis://127.0.0.1:6399/0")
    app = import_entrypoint().app
    assert isinstance(app, serve.Application)
    ingress = app._bound_deployment
    assert ingress.name == "Ingress"
    assert ingress.user_config == {
        "version": model.resolve().name,
        "redis_url": "redis://127.0.0.1:6399/0",
    }


def test_the_kuberay_manifest_points_at_the_entrypoint():
    from llmlab.config import REPO_ROOT

    manifest = (REPO_ROOT / "deploy" / "rayservice.yaml").read_text()
    assert "import_path: llmlab.system.entrypoint:app" in manifest


def test_a_model_that_does_not_exist_fails_at_import(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_MODEL", "no-such-model@champion")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(LookupError):
        import_entrypoint()
