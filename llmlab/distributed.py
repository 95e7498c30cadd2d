"""Data-parallel training under torchrun (built in lab 07, used by lab 07): DDP, FSDP, one process.

`python -m llmlab.distributed --steps 20 --result out.json` is the worker script: one process per
rank trains lab 06's feedback classifier (`llmlab.models.FeedbackClassifier`) with
`llmlab.train.train`, wrapped in DDP (or sharded with FSDP) when torchrun starts it with several
processes. `llmlab.ranks.torchrun(...)` launches it and returns what rank 0 measured;
`train_data_parallel(...)` is the same training in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from llmlab.models import FeedbackClassifier
from llmlab.ranks import (
    average_over_ranks,
    collective_device,
    is_main_process,
    rank,
    running_distributed,
    world_size,
)

WORD = re.compile(r"\w+")


# ---------------------------------------------------------------- data


def hashed_token_ids(texts: Sequence[str], vocab_size: int, seq_len: int) -> torch.Tensor:
    """Words -> ids by a fixed hash (0 = padding): every rank tokenizes alone and identically."""
    ids = torch.zeros(len(texts), seq_len, dtype=torch.long)
    for row, text in enumerate(texts):
        words = WORD.findall(text.lower())[:seq_len]
        ids[row, : len(words)] = torch.tensor(
            [1 + zlib.crc32(word.encode()) % (vocab_size - 1) for word in words], dtype=torch.long
        )
    return ids


def feedback_dataset(vocab_size: int, seq_len: int) -> TensorDataset:
    """The training split of the shipped feedback data as (token ids, label id) tensors."""
    from llmlab.data import label_names, load_splits

    train = load_splits()["train"]
    label_id = {name: index for index, name in enumerate(label_names())}
    labels = torch.tensor(train.label.map(label_id).to_numpy(), dtype=torch.long)
    return TensorDataset(hashed_token_ids(train.text.tolist(), vocab_size, seq_len), labels)


def sharded_batches(
    dataset: TensorDataset,
    global_batch: int,
    seed: int,
    num_replicas: int | None = None,
    replica: int | None = None,
) -> Callable[[int], DataLoader]:
    """Factory epoch -> one rank's DataLoader; the ranks' batches together form a global batch.

    DistributedSampler shuffles with the same seed on every rank and deals the permutation out
    round-robin, so batch i of all ranks together is exactly batch i of a single process that
    uses `global_batch`. Replicas default to the process group's world size and rank.
    """
    num_replicas = world_size() if num_replicas is None else num_replicas
    replica = rank() if replica is None else replica
    if global_batch % num_replicas:
        raise ValueError(f"global batch {global_batch} does not split over {num_replicas} ranks")
    sampler = DistributedSampler(
        dataset, num_replicas=num_replicas, rank=replica, shuffle=True, seed=seed, drop_last=True
    )

    def loader(epoch: int) -> DataLoader:
        sampler.set_epoch(epoch)
        # drop_last: a short final batch would average differently on 1 and on N ranks.
        return DataLoader(
            dataset, batch_size=global_batch // num_replicas, sampler=sampler, drop_last=True
        )

    return loader


# ---------------------------------------------------------------- training


@dataclass
class DataParallelConfig:
    """The run that a single process and every DDP/FSDP rank execute alike."""

    steps: int = 20
    global_batch: int = 32
    lr: float = 3e-3
    dim: int = 64
    n_layers: int = 1
    seq_len: int = 32
    vocab_size: int = 2048
    seed: int = 0
    device: str = "cpu"
    # fp32 even on GPUs: bf16 rounding would hide whether DDP reproduces one process.
    precision: str = "fp32"


STRATEGIES = ("ddp", "fsdp")
# Every config field is a worker flag except the device, which each rank picks for itself.
WORKER_FLAGS = tuple(field.name for field in fields(DataParallelConfig) if field.name != "device")


def train_data_parallel(config: DataParallelConfig, strategy: str = "ddp") -> dict[str, Any]:
    """Train the feedback classifier on this rank's shard; return the loss curve and throughput.

    Without an initialized process group this is plain single-process training. With one,
    `ddp` replicates the model and all-reduces gradients; `fsdp` shards parameters, gradients
    and optimizer state over the ranks.
    """
    from llmlab.train import TrainConfig, classification_loss, train

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    dataset = feedback_dataset(config.vocab_size, config.seq_len)
    model = FeedbackClassifier(
        config.vocab_size, config.seq_len, config.dim, config.n_layers, n_classes=3
    ).to(config.device)
    n_params = sum(p.numel() for p in model.parameters())
    if running_distributed() and strategy == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif running_distributed():
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    # Under FSDP each parameter is a DTensor; to_local() is the shard this rank stores.
    params_on_rank = sum(
        p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters()
    )
    local_batch = config.global_batch // world_size()
    result = train(
        model,
        sharded_batches(dataset, config.global_batch, config.seed),
        TrainConfig(
            max_steps=config.steps,
            lr=config.lr,
            warmup_steps=max(1, config.steps // 10),
            log_every=1,
            device=config.device,
            precision=config.precision,
            seed=config.seed,
            progress=False,
        ),
        loss_fn=classification_loss,
        tokens_per_batch=local_batch,  # count examples, so tokens_per_s reads samples/s
    )
    return {
        "strategy": strategy if running_distributed() else "single",
        "world_size": world_size(),
        "threads": torch.get_num_threads(),
        "parameters": n_params,
        "parameters_on_rank": params_on_rank,
        # Each rank logged the mean loss of its own shard; their mean is the global batch's loss.
        "loss": average_over_ranks(result.history.train_loss.tolist()),
        "samples_per_s": average_over_ranks([result.tokens_per_s])[0] * world_size(),
        "seconds": result.seconds,
    }


def all_reduce_example(length: int = 8) -> dict[str, list]:
    """Every rank's seeded 'gradient' and their sum as `dist.all_reduce` computes it."""
    seeded = torch.Generator().manual_seed(100 + rank())
    local = torch.randn(length, generator=seeded).to(collective_device())
    inputs = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(inputs, local)
    reduced = local.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return {"inputs": [t.tolist() for t in inputs], "all_reduce": reduced.tolist()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Worker flags: one per DataParallelConfig field, plus strategies and the result path."""
    parser = argparse.ArgumentParser(description="Data-parallel training worker for torchrun.")
    defaults = DataParallelConfig()
    for name in WORKER_FLAGS:
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=["ddp"])
    parser.add_argument("--all-reduce-example", action="store_true")
    parser.add_argument("--result", type=Path, required=True, help="JSON file rank 0 writes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Worker entry point: join torchrun's process group, train, write rank 0's report."""
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # NCCL needs one GPU per process; otherwise the ranks talk over gloo on the CPU.
    on_gpu = torch.cuda.device_count() >= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    device = f"cuda:{local_rank}" if on_gpu else "cpu"
    if on_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if on_gpu else "gloo")
    try:
        config = DataParallelConfig(
            **{name: getattr(args, name) for name in WORKER_FLAGS}, device=device
        )
        report: dict[str, Any] = {"backend": dist.get_backend(), "config": asdict(config)}
        for strategy in args.strategies:
            report[strategy] = train_data_parallel(config, strategy)
        if args.all_reduce_example:
            report["all_reduce_example"] = all_reduce_example()
        if is_main_process():
            tmp = args.result.with_suffix(".tmp")
            tmp.write_text(json.dumps(report))
            tmp.replace(args.result)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
