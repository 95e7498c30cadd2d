"""Experiment tracking: a thin wandb wrapper (offline by default) keeping history as a DataFrame."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from llmlab.config import build_dir


class Tracker:
    """Log metrics to wandb and keep every logged row for plotting in the notebook."""

    def __init__(
        self,
        project: str,
        config: dict[str, Any] | None = None,
        name: str | None = None,
        mode: str | None = None,
    ) -> None:
        import wandb

        self.mode = mode or os.environ.get("WANDB_MODE", "offline")
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb mode must be offline, online or disabled, not {self.mode!r}")
        wandb_dir = build_dir() / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            config=config or {},
            name=name,
            mode=self.mode,
            dir=str(wandb_dir),
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.rows: list[dict[str, Any]] = []

    @property
    def run_id(self) -> str:
        """The wandb run id (links a registry version to its run)."""
        return self.run.id

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log one row of metrics at `step`."""
        self.run.log(metrics, step=step)
        self.rows.append({"step": step, **metrics})

    @property
    def history(self) -> pd.DataFrame:
        """Everything logged so far, one row per log call."""
        return pd.DataFrame(self.rows)

    def finish(self) -> None:
        """Close the wandb run (writes the offline run to disk)."""
        self.run.finish()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
