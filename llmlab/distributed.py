"""Scaling out: data-parallel training under torchrun (launched from a notebook) and local Spark.

`python -m llmlab.distributed --steps 20 --result out.json` is the worker script: one process per
rank trains a small feedback classifier with `llmlab.train.train`, wrapped in DDP (or sharded
with FSDP) when torchrun starts it with several processes. `torchrun(...)` launches it and
returns what rank 0 measured; `train_data_parallel(...)` is the same training in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from llmlab.attention import EncoderBlock, padding_mask
from llmlab.config import build_dir

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

WORD = re.compile(r"\w+")


# ---------------------------------------------------------------- launching torchrun


def torchrun(
    module: str = "llmlab.distributed",
    args: Sequence[str] = (),
    nproc: int = 2,
    threads: int = 1,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run `python -m module *args --result PATH` in `nproc` processes; return rank 0's result.

    Each process gets `threads` CPU threads (OMP_NUM_THREADS), so 1 vs 2 processes compare
    like with like. The module must write its result as JSON to the `--result` path.
    """
    if nproc < 1 or threads < 1:
        raise ValueError(f"need nproc >= 1 and threads >= 1, got {nproc=} {threads=}")
    folder = build_dir() / "distributed"
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="result-", suffix=".json", dir=folder)
    os.close(handle)
    result = Path(name)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on localhost with a free port: no port clashes
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *args,
        "--result",
        str(result),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        finished = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if finished.returncode != 0:
            raise RuntimeError(
                f"torchrun exited with {finished.returncode}: {' '.join(command)}\n"
                f"{finished.stderr[-4000:]}"
            )
        if result.stat().st_size == 0:
            raise RuntimeError(f"{module} finished but rank 0 wrote no result to {result}")
        return json.loads(result.read_text())
    finally:
        result.unlink(missing_ok=True)


# ---------------------------------------------------------------- process-group helpers


def rank() -> int:
    """This process's rank, 0 when not running distributed."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes in the job, 1 when not running distributed."""
    return dist.get_world_size() if dist.is_initialized() else 1


def collective_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise mean of `values` over all ranks (gloo has no AVG, so SUM / world)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device())
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return (tensor / world_size()).tolist()


# ---------------------------------------------------------------- data and model


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


class FeedbackClassifier(nn.Module):
    """Embeddings, lab 03's encoder blocks, mean pooling over real tokens, a linear head."""

    def __init__(self, vocab_size: int, seq_len: int, dim: int, n_layers: int, n_classes: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(seq_len, dim)
        # dropout=0: DDP and one process then compute the same function, not just alike ones.
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, n_heads=4, d_ff=2 * dim, dropout=0.0) for _ in range(n_layers)
        )
        self.head = nn.Linear(dim, n_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, seq) token ids -> (batch, n_classes) logits."""
        keep = input_ids != 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        for block in self.blocks:
            x = block(x, padding_mask(keep))
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled)


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


def classification_batch_loss(model: nn.Module, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a (token ids, labels) batch."""
    input_ids, labels = batch
    return nn.functional.cross_entropy(model(input_ids), labels)


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
    from llmlab.train import TrainConfig, train

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    dataset = feedback_dataset(config.vocab_size, config.seq_len)
    model = FeedbackClassifier(
        config.vocab_size, config.seq_len, config.dim, config.n_layers, n_classes=3
    ).to(config.device)
    n_params = sum(p.numel() for p in model.parameters())
    if dist.is_initialized() and strategy == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif dist.is_initialized():
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
        loss_fn=classification_batch_loss,
        tokens_per_batch=local_batch,  # count examples, so tokens_per_s reads samples/s
    )
    return {
        "strategy": strategy if dist.is_initialized() else "single",
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
        if rank() == 0:
            tmp = args.result.with_suffix(".tmp")
            tmp.write_text(json.dumps(report))
            tmp.replace(args.result)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- Spark

SPARK_LOG_CONFIG = """\
# Written by llmlab.distributed.spark_session: errors only, so notebooks stay readable.
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
# PySpark's gateway announces "Setting default log level" unless its logger agrees with the root.
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
"""


def java_available() -> bool:
    """True when a Java runtime for Spark is on PATH or under JAVA_HOME."""
    java_home = os.environ.get("JAVA_HOME")
    return shutil.which("java") is not None or bool(
        java_home and (Path(java_home) / "bin" / "java").exists()
    )


def spark_session(master: str = "local[2]", app_name: str = "llmlab") -> SparkSession:
    """A quiet SparkSession; `master` is local[N] here, spark://host:7077 or yarn on a cluster."""
    if not java_available():
        raise RuntimeError("Spark needs a Java runtime (17 or newer): install one or set JAVA_HOME")
    # PySpark 4.3 warns on every pandas 3 import; the labs check Spark against pandas themselves.
    warnings.filterwarnings(
        "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
    )
    from pyspark.sql import SparkSession

    spark_dir = build_dir() / "spark"
    spark_dir.mkdir(parents=True, exist_ok=True)
    log_config = spark_dir / "log4j2.properties"
    log_config.write_text(SPARK_LOG_CONFIG)
    java_options = f"-Dlog4j2.configurationFile={log_config.as_uri()}"
    # Python workers must run this interpreter (the venv), not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.local.dir", str(spark_dir))
        .config("spark.ui.showConsoleProgress", "false")
        # The default of 200 shuffle partitions suits clusters; tiny local jobs drown in tasks.
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )


if __name__ == "__main__":
    main()
