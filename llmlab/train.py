"""The one PyTorch training loop: AMP, compile, accumulation, clipping, checkpoints, throughput.

`train(model, batches, TrainConfig(...))` runs AdamW with a cosine schedule and linear warm-up.
The model computes its own loss through `loss_fn(model, batch)`, so the same loop trains a
Hugging Face causal LM (`model_loss`), a plain classifier (`classification_loss`) or a student
against a teacher (any custom function). Batches come from a list, a DataLoader or a factory
`epoch -> batches` (`shuffled_batches`), which makes a resumed run see exactly the same data.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from llmlab.config import pick_device, seed_everything
from llmlab.flops import mfu, peak_flops

PRECISIONS = ("auto", "bf16", "fp32")

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
BatchSource = Iterable[Batch] | Callable[[int], Iterable[Batch]]


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


def classification_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the model's logits against batch['labels'] (plain or HF classifiers)."""
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    outputs = model(**inputs)
    logits = outputs if isinstance(outputs, torch.Tensor) else outputs["logits"]
    return F.cross_entropy(logits, batch["labels"])


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
        size = batch_size(batch)
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


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """Move every tensor of a (nested) dict/list/tuple batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {name: to_device(value, device) for name, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def batch_size(batch: Batch) -> int:
    """Number of examples: the first dimension of the batch's first tensor."""
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
    return len(first)


def count_tokens(batch: Batch) -> int:
    """Token positions the model processes (input_ids.numel()), else the number of examples."""
    if isinstance(batch, Mapping) and "input_ids" in batch:
        return batch["input_ids"].numel()
    return batch_size(batch)


def _stream(source: BatchSource, epoch: int, skip: int) -> Iterator[tuple[int, int, Batch]]:
    """Yield (epoch, index, batch) forever, starting at batch `skip` of `epoch`."""
    while True:
        seen = 0
        for index, batch in enumerate(source(epoch) if callable(source) else source):
            seen += 1
            if index >= skip:
                yield epoch, index, batch
        if seen == 0:
            raise ValueError(
                f"train_batches yielded no batches in epoch {epoch}: pass a list, a DataLoader "
                "or a factory epoch -> batches (a one-shot iterator cannot be repeated)"
            )
        epoch, skip = epoch + 1, 0


def _check_resumable(source: BatchSource) -> None:
    """A DataLoader shuffled by the global RNG would give a resumed run different batches."""
    if isinstance(source, torch.utils.data.DataLoader):
        sampler = source.sampler
        if isinstance(sampler, torch.utils.data.RandomSampler) and sampler.generator is None:
            if source.generator is None:
                raise ValueError(
                    "a checkpointed run needs a reproducible shuffle: use shuffled_batches"
                    "(dataset, batch_size, seed) instead of DataLoader(shuffle=True)"
                )


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


def _uses_bf16(precision: str, device_type: str) -> bool:
    """bf16 autocast when asked for, and by default on CUDA; fp32 otherwise."""
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


# ---------------------------------------------------------------- distributed helpers


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialized torch.distributed job."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _any_rank(flag: bool, device: str) -> bool:
    """True if `flag` is true on any rank, so every rank stops at the same step."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, wrappers) else model._orig_mod
    return model


# ---------------------------------------------------------------- checkpoints

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first (temp folders are ignored)."""
    directory = Path(directory)
    if not directory.exists():
        return []
    found = [
        path
        for path in directory.glob("step_*")
        if (path / WEIGHTS_FILE).exists() and (path / STATE_FILE).exists()
    ]
    return sorted(found, key=lambda path: int(path.name.removeprefix("step_")))


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load safetensors weights (a checkpoint folder or file) into `model` in place."""
    from safetensors.torch import load_model

    path = Path(path)
    load_model(unwrap(model), path / WEIGHTS_FILE if path.is_dir() else path)
    return model


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write into a temp folder beside `final`, then rename it: readers never see half a file."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _save_weights(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_model

    save_model(unwrap(model), str(folder / WEIGHTS_FILE))  # handles tied embeddings


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),  # plain types: weights_only loads
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_config(config: TrainConfig) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


# ---------------------------------------------------------------- the loop


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
    flops_per_token: float | None = None,
) -> TrainResult:
    """Train `model` for config.max_steps optimizer steps; evaluate, log and checkpoint on the way.

    `val_batches` gives `val_loss` (same loss_fn); `eval_fn(model) -> {name: value}` adds metrics
    (it runs in eval mode under no_grad). `tracker` is an `llmlab.track.Tracker` or None.
    `flops_per_token` (see `flops_per_token()`) turns tokens/s into MFU on a known GPU.
    """
    device = pick_device(config.device)
    device_type = device.split(":")[0]
    use_bf16 = _uses_bf16(config.precision, device_type)
    main = is_main_process()
    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if checkpoint_dir is not None:
        _check_resumable(train_batches)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if main:
            for stale in checkpoint_dir.glob(".tmp-*"):  # left by a crash mid-write
                shutil.rmtree(stale, ignore_errors=True)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the few fp32 matmuls left

    seed_everything(config.seed)
    model.to(device)
    optimizer = make_optimizer(unwrap(model), config, device)
    step_model = torch.compile(model) if config.compile else model
    peak = run_peak_flops(config, device)

    step, epoch, position = 0, 0, 0
    rows: list[dict[str, Any]] = []
    sign = 1.0 if config.early_stopping_mode == "min" else -1.0
    best_metric, best_step, bad_evals = sign * math.inf, None, 0
    best_weights: dict[str, torch.Tensor] | None = None
    resumed_from = None
    latest = list_checkpoints(checkpoint_dir)[-1:] if checkpoint_dir else []
    if latest and not config.resume:
        raise ValueError(
            f"{checkpoint_dir} already holds checkpoints: set resume=True or use an empty folder"
        )
    if latest:
        load_weights(model, latest[0])
        state = torch.load(latest[0] / STATE_FILE, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        rows = state["history"]
        best_metric, best_step, bad_evals = state["best"]
        _set_rng_state(state["rng"])
        resumed_from = step

    stream = _stream(train_batches, epoch, position)
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16)

    def evaluation() -> dict[str, float]:
        metrics: dict[str, float] = {}
        step_model.eval()
        with torch.no_grad(), autocast:
            if val_batches is not None:
                metrics["val_loss"] = evaluate(
                    step_model, val_batches, loss_fn, config.eval_batches
                )
            if eval_fn is not None:
                metrics.update(eval_fn(model))
        step_model.train()
        return metrics

    def save(tag: str) -> Path:
        state = {
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "position": position,
            "history": rows,
            "best": (best_metric, best_step, bad_evals),
            "rng": _rng_state(),
            "config": _plain_config(config),
        }

        def write(folder: Path) -> None:
            _save_weights(model, folder)
            torch.save(state, folder / STATE_FILE)

        return _atomic_dir(checkpoint_dir / tag, write)

    bar = tqdm(
        total=config.max_steps,
        initial=step,
        desc="train",
        disable=not (main and config.progress),
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    interval_start, interval_tokens, interval_steps = started, 0, 0
    interval_loss = torch.zeros((), device=device)
    throughput: list[tuple[float, float | None]] = []
    stopped_early, last_checkpoint, final_metrics = False, None, {}
    step_model.train()
    while step < config.max_steps:
        for micro in range(config.grad_accum_steps):
            epoch, index, batch = next(stream)
            position = index + 1
            interval_tokens += tokens_per_batch or count_tokens(batch)
            batch = to_device(batch, device)
            # DDP: all-reduce gradients only on the last micro-batch of the step.
            last = micro == config.grad_accum_steps - 1
            skip_sync = not last and hasattr(model, "no_sync")
            with model.no_sync() if skip_sync else contextlib.nullcontext(), autocast:
                loss = loss_fn(step_model, batch) / config.grad_accum_steps
            loss.backward()
            interval_loss += loss.detach()
        grad_norm = None
        if config.grad_clip is not None:
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        interval_steps += 1
        bar.update(1)

        row: dict[str, Any] = {}
        if step % config.log_every == 0 or step == config.max_steps:
            if device_type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - interval_start
            train_loss = (interval_loss / interval_steps).item()
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss is {train_loss} at step {step}")
            tokens_per_s = interval_tokens / seconds
            row = {"train_loss": train_loss, "lr": lr, "tokens_per_s": tokens_per_s}
            if grad_norm is not None:
                row["grad_norm"] = grad_norm.item()
            achieved_mfu = None
            if flops_per_token is not None and peak is not None:
                achieved_mfu = mfu(flops_per_token, tokens_per_s, peak)
                row["mfu"] = achieved_mfu
            throughput.append((tokens_per_s, achieved_mfu))
            bar.set_postfix(loss=f"{train_loss:.4f}")
            interval_start, interval_tokens, interval_steps = time.perf_counter(), 0, 0
            interval_loss = torch.zeros((), device=device)

        # Evaluation and checkpoint time is not training time: keep it out of tokens/s.
        pause_start = time.perf_counter()
        evaluate_now = config.eval_every and step % config.eval_every == 0
        if evaluate_now or step == config.max_steps:
            metrics = evaluation()
            row.update(metrics)
            final_metrics = metrics
            if config.early_stopping_metric is not None:
                if config.early_stopping_metric not in metrics:
                    raise KeyError(
                        f"early stopping metric {config.early_stopping_metric!r} "
                        f"is not among the evaluated metrics {sorted(metrics)}"
                    )
                value = metrics[config.early_stopping_metric]
                if sign * value < sign * best_metric:
                    best_metric, best_step, bad_evals = value, step, 0
                    if config.restore_best:
                        best_weights = {
                            name: tensor.detach().to("cpu", copy=True)
                            for name, tensor in unwrap(model).state_dict().items()
                        }
                        if checkpoint_dir is not None and main:
                            _atomic_dir(checkpoint_dir / "best", lambda f: _save_weights(model, f))
                else:
                    bad_evals += 1
                patience_over = config.patience is not None and bad_evals >= config.patience
                stopped_early = _any_rank(patience_over, device)

        if row:
            rows.append({"step": step, **row})
            if tracker is not None and main:
                tracker.log(row, step=step)

        final = step == config.max_steps or stopped_early
        checkpoint_now = config.checkpoint_every and step % config.checkpoint_every == 0
        if checkpoint_dir is not None and (checkpoint_now or final):
            if main:
                last_checkpoint = save(f"step_{step:07d}")
            _barrier()
        if device_type == "cuda":
            torch.cuda.synchronize()
        interval_start += time.perf_counter() - pause_start
        if config.stop_after_steps is not None and step >= config.stop_after_steps and not final:
            bar.close()
            raise SimulatedCrash(f"simulated crash after step {step}")
        if stopped_early:
            break
    bar.close()

    if config.restore_best and best_weights is not None:
        unwrap(model).load_state_dict(best_weights)
    elif config.restore_best and best_step is not None and checkpoint_dir is not None:
        load_weights(model, checkpoint_dir / "best")  # the best came before a resume
    # The first interval pays for compilation and warm-up; report the steady state.
    steady = throughput[1:] or throughput
    mfus = [value for _, value in steady if value is not None]
    return TrainResult(
        history=pd.DataFrame(rows),
        steps=step,
        seconds=time.perf_counter() - started,
        tokens_per_s=float(np.median([tps for tps, _ in steady])) if steady else float("nan"),
        mfu=float(np.median(mfus)) if mfus else None,
        stopped_early=stopped_early,
        best_step=best_step,
        best_metric=None if best_step is None else best_metric,
        checkpoint=last_checkpoint,
        resumed_from=resumed_from,
        final_metrics=final_metrics,
    )
