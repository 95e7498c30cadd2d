"""Profiles, paths, device selection and seeding shared by every lab."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TypeVar

import numpy as np

PROFILES = ("smoke", "cpu", "gpu")
DEFAULT_PROFILE = "cpu"
REPO_ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")


def resolve_profile(profile: str | None = None) -> str:
    """Return the validated profile: the argument, else env LLMLAB_PROFILE, else 'cpu'."""
    chosen = profile or os.environ.get("LLMLAB_PROFILE") or DEFAULT_PROFILE
    chosen = chosen.strip().lower()
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}: choose one of {', '.join(PROFILES)}")
    return chosen


def by_profile(profile: str, *, smoke: T, cpu: T, gpu: T) -> T:
    """Pick the value for `profile` (one knob per profile, written side by side)."""
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[resolve_profile(profile)]


def build_dir() -> Path:
    """Directory for everything the labs generate (env LLMLAB_BUILD_DIR, else <repo>/_build)."""
    path = Path(os.environ.get("LLMLAB_BUILD_DIR", REPO_ROOT / "_build"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def profile_build_dir(profile: str) -> Path:
    """Where `profile`'s outputs live: _build/ for cpu, else _build/profiles/<profile>/_build."""
    root = REPO_ROOT / "_build"
    chosen = resolve_profile(profile)
    return root if chosen == DEFAULT_PROFILE else root / "profiles" / chosen / "_build"


def artifacts_dir(name: str = "") -> Path:
    """Directory where a lab saves what later labs consume, e.g. artifacts_dir('classifier')."""
    path = build_dir() / "artifacts" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_artifact(path: Path, producer: str) -> Path:
    """Return `path` if it exists, else fail with the lab that produces it."""
    if not Path(path).exists():
        raise FileNotFoundError(
            f"{path} is missing: lab {producer} produces it; run `llmlab run {producer}` first"
        )
    return Path(path)


def data_dir() -> Path:
    """Directory of the shipped data (data/ at the repo root)."""
    return REPO_ROOT / "data"


def pick_device(device: str = "auto") -> str:
    """Resolve 'auto' to cuda, then mps, then cpu; validate an explicit choice."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={device!r} requested but MPS is not available")
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda[:N] or mps")
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy, torch and (if imported) tensorflow; optionally deterministic ops.

    deterministic=True turns torch's deterministic algorithms on; the default leaves that global
    setting alone, so reseeding (as `train` does) never undoes it. str hashes are random per
    process unless PYTHONHASHSEED is set before Python starts; setting it here would not help.
    """
    import sys

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        if "tensorflow" in sys.modules:
            sys.modules["tensorflow"].config.experimental.enable_op_determinism()
