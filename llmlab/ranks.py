"""torchrun launch and rank helpers (built in lab 07, used by labs 07 and 13 and `llmlab.train`).

`torchrun(...)` starts a worker module in several processes from a notebook; the helpers tell a
process its rank and make the ranks agree. Without a process group one process is rank 0 of 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llmlab.config import build_dir

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


def running_distributed() -> bool:
    """True inside an initialized torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, 0 when not running distributed."""
    return dist.get_rank() if running_distributed() else 0


def world_size() -> int:
    """Number of processes in the job, 1 when not running distributed."""
    return dist.get_world_size() if running_distributed() else 1


def is_main_process() -> bool:
    """True unless this is a non-zero rank: the one process that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if running_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU under NCCL, else the CPU."""
    if running_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool, device: str) -> bool:
    """True if `flag` is true on any rank, so every rank stops at the same step."""
    if not running_distributed():
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_over_ranks(values: Sequence[float]) -> list[float]:
    """Element-wise mean of `values` over all ranks (gloo has no AVG, so SUM / world)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device())
    if running_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return (tensor / world_size()).tolist()
