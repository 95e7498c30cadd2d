"""Checkpoints a run can trust: safetensors weights, a weights-only state file, atomic writes."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, wrappers) else model._orig_mod
    return model


def list_checkpoints(directory: str | Path | None) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first (temp folders are ignored)."""
    if directory is None or not Path(directory).exists():
        return []
    found = [
        path
        for path in Path(directory).glob("step_*")
        if (path / WEIGHTS_FILE).exists() and (path / STATE_FILE).exists()
    ]
    return sorted(found, key=lambda path: int(path.name.removeprefix("step_")))


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights (a checkpoint folder or file) into `model` in place."""
    from safetensors.torch import load_model

    path = Path(path)
    load_model(unwrap(model), path / WEIGHTS_FILE if path.is_dir() else path)
    return model


def save_weights(model: nn.Module, folder: Path) -> None:
    """Write the model's weights as safetensors into `folder` (tied embeddings handled)."""
    from safetensors.torch import save_model

    save_model(unwrap(model), str(folder / WEIGHTS_FILE))


def atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write into a temp folder beside `final`, then rename it: readers never see half a file."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def save_checkpoint(folder: Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Weights and trainer state (plain types and tensors: weights_only loads it) in one folder."""

    def write(tmp: Path) -> None:
        save_weights(model, tmp)
        torch.save({**state, "rng": rng_state()}, tmp / STATE_FILE)

    return atomic_dir(folder, write)


def load_checkpoint(folder: Path, model: nn.Module) -> dict[str, Any]:
    """Load a checkpoint's weights into `model`, restore the RNGs; return the trainer state."""
    load_weights(model, folder)
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    set_rng_state(state["rng"])
    return state


def clear_partial_writes(directory: Path) -> None:
    """Remove temp folders a crash left mid-write."""
    for stale in directory.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) random states, in types a weights-only load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
