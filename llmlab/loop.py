"""Parts of `llmlab.train.train`: config, early stopping, one step (built in lab 04, used by 14)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmlab.batches import Batch, BatchSource, check_resumable, count_tokens, to_device
from llmlab.checkpoints import atomic_dir, clear_partial_writes, load_weights, save_weights, unwrap
from llmlab.flops import mfu
from llmlab.ranks import is_main_process

PRECISIONS = ("auto", "bf16", "fp32")
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


@dataclass
class TrainConfig:
    """Every knob of a training run; steps count optimizer updates, not micro-batches."""

    max_steps: int = 100
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum_steps: int = 1
    grad_clip: float | None = 1.0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int | None = None  # None: the whole validation set
    log_every: int = 10
    compile: bool = False
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 elsewhere
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 0  # 0: only at the end (when checkpoint_dir is set)
    resume: bool = True  # continue from the newest checkpoint in checkpoint_dir
    seed: int = 0
    early_stopping_metric: str | None = None  # e.g. "val_loss" or "val_accuracy"
    early_stopping_mode: str = "min"
    patience: int | None = None  # evaluations without improvement before stopping
    restore_best: bool = False  # load the best-evaluated weights at the end
    stop_after_steps: int | None = None  # simulate a crash: raise SimulatedCrash after this step
    peak_flops: float | None = None  # override the GPU peak used for MFU
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.early_stopping_mode not in ("min", "max"):
            raise ValueError(f"early_stopping_mode must be min or max: {self.early_stopping_mode}")
        if self.max_steps < 1 or self.grad_accum_steps < 1 or self.log_every < 1:
            raise ValueError("max_steps, grad_accum_steps and log_every must be >= 1")
        if self.patience is not None and self.early_stopping_metric is None:
            raise ValueError("patience needs early_stopping_metric (e.g. 'val_loss')")


@dataclass
class Run:
    """What stays fixed during a run: its configuration and how to compute and evaluate."""

    config: TrainConfig
    loss_fn: LossFn
    autocast: torch.autocast
    tokens_per_batch: int | None
    val_batches: Iterable[Batch] | None
    eval_fn: Callable[[nn.Module], dict[str, float]] | None


@dataclass
class Position:
    """Where a run is: optimizer step, epoch and batch within it, and the history so far."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


class EarlyStopping:
    """Tracks the best evaluated metric; counts evaluations without improvement."""

    def __init__(self, config: TrainConfig):
        self.metric, self.patience = config.early_stopping_metric, config.patience
        self.keep_best = config.restore_best
        self.sign = 1.0 if config.early_stopping_mode == "min" else -1.0
        self.best, self.best_step, self.bad_evals = self.sign * math.inf, None, 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def state(self) -> tuple[float, int | None, int]:
        """What a checkpoint keeps of it."""
        return self.best, self.best_step, self.bad_evals

    def update(
        self, metrics: dict[str, float], step: int, model: nn.Module, folder: Path | None
    ) -> bool:
        """Record an evaluation; True when patience has run out."""
        if self.metric is None:
            return False
        if self.metric not in metrics:
            raise KeyError(
                f"early stopping metric {self.metric!r} is not among the evaluated metrics "
                f"{sorted(metrics)}"
            )
        value = metrics[self.metric]
        if self.sign * value < self.sign * self.best:
            self.best, self.best_step, self.bad_evals = value, step, 0
            if self.keep_best:
                self.best_weights = {
                    name: tensor.detach().to("cpu", copy=True)
                    for name, tensor in unwrap(model).state_dict().items()
                }
                if folder is not None and is_main_process():
                    atomic_dir(folder / "best", lambda tmp: save_weights(model, tmp))
        else:
            self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience

    def restore(self, model: nn.Module, folder: Path | None) -> None:
        """Load the best weights back (from memory, or from disk if they came before a resume)."""
        if not self.keep_best:
            return
        if self.best_weights is not None:
            unwrap(model).load_state_dict(self.best_weights)
        elif self.best_step is not None and folder is not None:
            load_weights(model, folder / "best")


class Meter:
    """Training loss and tokens/s per logging interval; evaluation and checkpoints excluded."""

    def __init__(self, device: str, model_flops_per_token: float | None, peak: float | None):
        self.device, self.flops, self.peak = device, model_flops_per_token, peak
        self.throughput: list[tuple[float, float | None]] = []
        self.started = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.interval_start, self.tokens, self.steps = time.perf_counter(), 0, 0
        self.loss = torch.zeros((), device=self.device)

    def row(self, step: int, lr: float, grad_norm: torch.Tensor | None) -> dict[str, Any]:
        """Close the interval: its mean loss, learning rate, gradient norm, tokens/s and MFU."""
        synchronize(self.device)
        seconds = time.perf_counter() - self.interval_start
        train_loss = (self.loss / self.steps).item()
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} at step {step}")
        tokens_per_s = self.tokens / seconds
        row: dict[str, Any] = {"train_loss": train_loss, "lr": lr, "tokens_per_s": tokens_per_s}
        if grad_norm is not None:
            row["grad_norm"] = grad_norm.item()
        achieved = None
        if self.flops is not None and self.peak is not None:
            achieved = row["mfu"] = mfu(self.flops, tokens_per_s, self.peak)
        self.throughput.append((tokens_per_s, achieved))
        self._reset()
        return row

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training time."""
        pause_start = time.perf_counter()
        yield
        synchronize(self.device)
        self.interval_start += time.perf_counter() - pause_start

    def steady(self) -> tuple[float, float | None]:
        """Median tokens/s and MFU after the first interval (compilation and warm-up)."""
        steady = self.throughput[1:] or self.throughput
        mfus = [value for _, value in steady if value is not None]
        tokens_per_s = float(np.median([tps for tps, _ in steady])) if steady else float("nan")
        return tokens_per_s, float(np.median(mfus)) if mfus else None


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so the clock measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def checkpoint_folder(config: TrainConfig, source: BatchSource) -> Path | None:
    """The run's checkpoint folder, ready (and its data order resumable), or None."""
    if not config.checkpoint_dir:
        return None
    folder = Path(config.checkpoint_dir)
    check_resumable(source)
    folder.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        clear_partial_writes(folder)
    return folder


def optimizer_step(
    model: nn.Module,
    step_model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[int, int, Batch]],
    at: Position,
    meter: Meter,
    run: Run,
    lr: float,
) -> torch.Tensor | None:
    """Accumulate gradients over the micro-batches, clip, step at learning rate `lr`."""
    config = run.config
    for micro in range(config.grad_accum_steps):
        at.epoch, index, batch = next(batches)
        at.batch = index + 1
        meter.tokens += run.tokens_per_batch or count_tokens(batch)
        batch = to_device(batch, meter.device)
        # DDP: all-reduce gradients only on the last micro-batch of the step.
        skip_sync = micro < config.grad_accum_steps - 1 and hasattr(model, "no_sync")
        with model.no_sync() if skip_sync else contextlib.nullcontext(), run.autocast:
            loss = run.loss_fn(step_model, batch) / config.grad_accum_steps
        loss.backward()
        meter.loss += loss.detach()
    grad_norm = None
    if config.grad_clip is not None:
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    at.step += 1
    meter.steps += 1
    return grad_norm
