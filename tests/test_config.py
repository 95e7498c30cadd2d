import os

import pytest
import torch

from llmlab.config import (
    artifacts_dir,
    build_dir,
    by_profile,
    pick_device,
    require_artifact,
    resolve_profile,
    seed_everything,
)


def test_resolve_profile_prefers_argument_then_env(monkeypatch):
    monkeypatch.setenv("LLMLAB_PROFILE", "smoke")
    assert resolve_profile() == "smoke"
    assert resolve_profile("GPU") == "gpu"
    monkeypatch.delenv("LLMLAB_PROFILE")
    assert resolve_profile() == "cpu"


def test_resolve_profile_rejects_unknown():
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        resolve_profile("huge")


def test_by_profile_picks_the_named_value():
    assert by_profile("smoke", smoke=1, cpu=2, gpu=3) == 1
    assert by_profile("gpu", smoke=1, cpu=2, gpu=3) == 3


def test_pick_device_auto_and_explicit():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert pick_device("auto") == expected
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_pick_device_cuda_without_gpu_fails_clearly():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")


def test_seed_everything_repeats_random_draws():
    seed_everything(7)
    first = torch.rand(3), __import__("numpy").random.rand(2)
    seed_everything(7)
    second = torch.rand(3), __import__("numpy").random.rand(2)
    assert torch.equal(first[0], second[0])
    assert (first[1] == second[1]).all()


@pytest.fixture
def restore_determinism():
    """Put torch's global deterministic-algorithms setting back as the test found it."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_seed_everything_deterministic_flag_turns_torch_determinism_on(restore_determinism):
    torch.use_deterministic_algorithms(False)
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()


def test_seed_everything_never_switches_determinism_off(restore_determinism):
    seed_everything(0, deterministic=True)
    seed_everything(3)  # what train() does with its own seed
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    seed_everything(3)
    assert not torch.are_deterministic_algorithms_enabled()


def test_seed_everything_leaves_pythonhashseed_alone(monkeypatch):
    # Setting it at run time cannot change this interpreter's str hashing, only children's.
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    seed_everything(5)
    assert "PYTHONHASHSEED" not in os.environ


def test_build_and_artifact_dirs_follow_env(isolated_build_dir):
    assert build_dir() == isolated_build_dir
    path = artifacts_dir("classifier")
    assert path == isolated_build_dir / "artifacts" / "classifier" and path.is_dir()


def test_require_artifact_names_the_producing_lab(tmp_path):
    with pytest.raises(FileNotFoundError, match="llmlab run 05"):
        require_artifact(tmp_path / "missing", "05")
    assert require_artifact(tmp_path, "05") == tmp_path
