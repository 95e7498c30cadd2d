"""The one PyTorch training loop (built in lab 04, used by labs 03-09, 13-15 and the pipeline).

AMP, compile, gradient accumulation, clipping, checkpoints, throughput.

`train(model, batches, TrainConfig(...))` runs AdamW with a cosine schedule and linear warm-up.
The model computes its own loss through `loss_fn(model, batch)`, so the same loop trains a
Hugging Face causal LM (`model_loss`), a plain classifier (`classification_loss`) or a student
against a teacher (any custom function). Batches come from a list, a DataLoader or a factory
`epoch -> batches` (`shuffled_batches`), which makes a resumed run see exactly the same data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llmlab.batches import Batch, BatchSource, examples_in, stream, to_device
from llmlab.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint, unwrap
from llmlab.config import pick_device, seed_everything
from llmlab.flops import peak_flops
from llmlab.loop import (
    EarlyStopping,
    LossFn,
    Meter,
    Position,
    Run,
    TrainConfig,
    checkpoint_folder,
    optimizer_step,
)
from llmlab.ranks import any_rank, barrier, is_main_process


@dataclass
class TrainResult:
    """What a run produced: one history row per log/eval step and summary numbers."""

    history: pd.DataFrame
    steps: int
    seconds: float
    tokens_per_s: float
    mfu: float | None
    stopped_early: bool = False
    best_step: int | None = None
    best_metric: float | None = None
    checkpoint: Path | None = None
    resumed_from: int | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)


class SimulatedCrash(RuntimeError):
    """Raised by `train` when `stop_after_steps` is reached, as if the process had died."""


# ---------------------------------------------------------------- losses and evaluation


def model_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Loss the model computes itself, e.g. a Hugging Face model given `labels`."""
    outputs = model(**batch)
    loss = outputs["loss"] if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: include labels or pass a loss_fn")
    return loss


def classification_loss(
    model: nn.Module, batch: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
) -> torch.Tensor:
    """Cross-entropy of the model's logits against the labels, for either kind of batch.

    A dict batch holds 'labels' and the model's keyword inputs (plain or HF classifiers); a
    tuple or list batch is (inputs, labels), as a TensorDataset yields them.
    """
    if isinstance(batch, Mapping):
        labels = batch["labels"]
        outputs = model(**{name: value for name, value in batch.items() if name != "labels"})
    else:
        inputs, labels = batch
        outputs = model(inputs)
    logits = outputs if isinstance(outputs, torch.Tensor) else outputs["logits"]
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: LossFn = model_loss,
    max_batches: int | None = None,
) -> float:
    """Mean loss over `batches` (weighted by examples), in eval mode on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        size = examples_in(batch)
        total += loss_fn(model, to_device(batch, device)).item() * size
        count += size
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate got no batches")
    return total / count


# ---------------------------------------------------------------- batches


def shuffled_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    seed: int = 0,
    collate_fn: Callable | None = None,
    drop_last: bool = True,
) -> Callable[[int], torch.utils.data.DataLoader]:
    """Factory epoch -> DataLoader with a per-epoch seeded shuffle (same order after a resume)."""

    def loader(epoch: int) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_fn,
            drop_last=drop_last,
        )

    return loader


# ---------------------------------------------------------------- schedule, optimizer, peak


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to config.lr, then cosine decay to lr * min_lr_ratio at max_steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (config.lr - min_lr)


def make_optimizer(model: nn.Module, config: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW decaying only matrices (not biases/norms), fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.startswith("cuda")
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)


def run_peak_flops(config: TrainConfig, device: str) -> float | None:
    """The peak MFU divides by: config.peak_flops, else the GPU's for the run's compute dtype."""
    if config.peak_flops:
        return config.peak_flops
    if not device.startswith("cuda"):
        return None
    dtype = torch.bfloat16 if _uses_bf16(config.precision, "cuda") else torch.float32
    return peak_flops(torch.cuda.get_device_name(device), dtype)


def _plain_config(config: TrainConfig) -> dict[str, Any]:
    """The config as plain values (paths as strings), for a weights-only checkpoint."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


def _uses_bf16(precision: str, device_type: str) -> bool:
    """bf16 autocast when asked for, and by default on CUDA; fp32 otherwise."""
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


# ---------------------------------------------------------------- evaluation during a run


def evaluate_run(run: Run, model: nn.Module, step_model: nn.Module) -> dict[str, float]:
    """Validation loss (from val_batches) and eval_fn's metrics, in eval mode."""
    metrics: dict[str, float] = {}
    step_model.eval()
    with torch.no_grad(), run.autocast:
        if run.val_batches is not None:
            metrics["val_loss"] = evaluate(
                step_model, run.val_batches, run.loss_fn, run.config.eval_batches
            )
        if run.eval_fn is not None:
            metrics.update(run.eval_fn(model))
    step_model.train()
    return metrics


@dataclass
class _Loop:
    """One run's moving parts, so that `train` reads as set-up, loop and result."""

    config: TrainConfig
    run: Run
    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping
    folder: Path | None
    device: str
    tracker: Any | None
    main: bool
    at: Position = field(default_factory=Position)
    stopped_early: bool = False
    last_checkpoint: Path | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)

    def resume(self) -> int | None:
        """Continue from the folder's latest checkpoint if asked to; the step resumed from."""
        latest = list_checkpoints(self.folder)[-1:]
        if latest and not self.config.resume:
            raise ValueError(
                f"{self.folder} already holds checkpoints: set resume=True or use an empty folder"
            )
        if not latest:
            return None
        state = load_checkpoint(latest[0], self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.at = Position(state["step"], state["epoch"], state["position"], state["history"])
        self.stopper.best, self.stopper.best_step, self.stopper.bad_evals = state["best"]
        return self.at.step

    def save(self, tag: str) -> Path:
        """Checkpoint the weights with everything a resumed run needs."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "step": self.at.step,
            "epoch": self.at.epoch,
            "position": self.at.batch,
            "history": self.at.rows,
            "best": self.stopper.state(),
            "config": _plain_config(self.config),
        }
        return save_checkpoint(self.folder / tag, self.model, state)

    def finish_step(self, row: dict[str, float]) -> bool:
        """Evaluate, log and checkpoint after a step as the config asks; whether the run ends."""
        config, at = self.config, self.at
        if (config.eval_every and at.step % config.eval_every == 0) or at.step == config.max_steps:
            self.final_metrics = evaluate_run(self.run, self.model, self.step_model)
            row.update(self.final_metrics)
            over = self.stopper.update(self.final_metrics, at.step, self.model, self.folder)
            self.stopped_early = any_rank(over, self.device)
        if row:
            at.rows.append({"step": at.step, **row})
            if self.tracker is not None and self.main:
                self.tracker.log(row, step=at.step)
        final = at.step == config.max_steps or self.stopped_early
        checkpoint_now = config.checkpoint_every and at.step % config.checkpoint_every == 0
        if self.folder is not None and (checkpoint_now or final):
            if self.main:
                self.last_checkpoint = self.save(f"step_{at.step:07d}")
            barrier()
        return final


def train(
    model: nn.Module,
    train_batches: BatchSource,
    config: TrainConfig,
    *,
    loss_fn: LossFn = model_loss,
    val_batches: Iterable[Batch] | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    tracker: Any | None = None,
    tokens_per_batch: int | None = None,
    model_flops_per_token: float | None = None,
) -> TrainResult:
    """Train `model` for config.max_steps optimizer steps; evaluate, log and checkpoint on the way.

    `val_batches` gives `val_loss` (same loss_fn); `eval_fn(model) -> {name: value}` adds metrics
    (it runs in eval mode under no_grad). `tracker` is an `llmlab.track.Tracker` or None.
    `model_flops_per_token` (llmlab.flops.flops_per_token) turns tokens/s into MFU on a known GPU.
    """
    device = pick_device(config.device)
    device_type = device.split(":")[0]
    folder = checkpoint_folder(config, train_batches)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls left
    seed_everything(config.seed)
    model.to(device)
    optimizer = make_optimizer(unwrap(model), config, device)
    step_model = torch.compile(model) if config.compile else model
    bf16 = _uses_bf16(config.precision, device_type)
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)
    run = Run(config, loss_fn, autocast, tokens_per_batch, val_batches, eval_fn)
    stopper, main = EarlyStopping(config), is_main_process()
    loop = _Loop(config, run, model, step_model, optimizer, stopper, folder, device, tracker, main)
    resumed_from = loop.resume()
    at = loop.at
    batches = stream(train_batches, at.epoch, at.batch)
    bar = tqdm(
        total=config.max_steps,
        initial=at.step,
        desc="train",
        disable=not (main and config.progress),
        dynamic_ncols=True,
    )
    meter = Meter(device, model_flops_per_token, run_peak_flops(config, device))
    step_model.train()
    while at.step < config.max_steps:
        lr = lr_at(at.step, config)
        grad_norm = optimizer_step(model, step_model, optimizer, batches, at, meter, run, lr)
        bar.update(1)
        log_now = at.step % config.log_every == 0 or at.step == config.max_steps
        row = meter.row(at.step, lr, grad_norm) if log_now else {}
        if row:
            bar.set_postfix(loss=f"{row['train_loss']:.4f}")
        with meter.paused():  # evaluation and checkpoint time is not training time
            final = loop.finish_step(row)
        if config.stop_after_steps is not None and at.step >= config.stop_after_steps and not final:
            bar.close()
            raise SimulatedCrash(f"simulated crash after step {at.step}")
        if loop.stopped_early:
            break
    bar.close()

    stopper.restore(model, folder)
    tokens_per_s, steady_mfu = meter.steady()
    return TrainResult(
        history=pd.DataFrame(at.rows),
        steps=at.step,
        seconds=time.perf_counter() - meter.started,
        tokens_per_s=tokens_per_s,
        mfu=steady_mfu,
        stopped_early=loop.stopped_early,
        best_step=stopper.best_step,
        best_metric=None if stopper.best_step is None else stopper.best,
        checkpoint=loop.last_checkpoint,
        resumed_from=resumed_from,
        final_metrics=loop.final_metrics,
    )
