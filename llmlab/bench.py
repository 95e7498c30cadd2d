"""Honest latency measurement: warm up, repeat, report medians and tails in one process.

Two GPU benchmarks build on it: 2:4 semi-structured sparsity against dense fp16 (lab 08's
kernels) and the bandwidth of an all-reduce over spawned ranks (NCCL, or gloo on CPUs).
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each timed call, with the summary statistics labs report."""

    samples: tuple[float, ...]
    threads: int

    @property
    def p50(self) -> float:
        """Median seconds per call: robust to the odd slow call from a busy machine."""
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        """95th percentile seconds per call (the tail a user notices)."""
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    @property
    def mean(self) -> float:
        """Mean seconds per call."""
        return statistics.fmean(self.samples)

    def as_ms(self) -> dict[str, float]:
        """p50, p95 and mean in milliseconds, for tables."""
        return {"p50_ms": 1e3 * self.p50, "p95_ms": 1e3 * self.p95, "mean_ms": 1e3 * self.mean}

    def __str__(self) -> str:
        return (
            f"p50 {1e3 * self.p50:.2f} ms, p95 {1e3 * self.p95:.2f} ms "
            f"({len(self.samples)} runs, {self.threads} threads)"
        )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Temporarily run torch's intra-op pool with `threads` threads (None: leave it as is)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _cuda_synchronize() -> None:
    """Wait for queued GPU kernels, otherwise we would time only the launch."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_calls(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, Timing]:
    """Time several functions in interleaved rounds, so load from other processes hits all alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    if not fns:
        raise ValueError("nothing to time: fns is empty")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch_threads(threads) as used_threads:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        _cuda_synchronize()
        # A collection in the middle of a timed call would be charged to the model.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(repeats):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    _cuda_synchronize()
                    samples[name].append(time.perf_counter() - start)
        finally:
            if gc_was_enabled:
                gc.enable()
    return {name: Timing(tuple(times), used_threads) for name, times in samples.items()}


def time_call(
    fn: Callable[[], Any], repeats: int = 20, warmup: int = 3, threads: int | None = None
) -> Timing:
    """Call `fn` `warmup` times untimed, then time `repeats` calls with `threads` torch threads."""
    return time_calls({"fn": fn}, repeats, warmup, threads)["fn"]


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive ones in a row (lab 08's 2:4)."""
    import torch

    groups = weight.abs().reshape(-1, 4)
    keep = groups.topk(2, dim=1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True).reshape(weight.shape)


def semi_structured_speedup(
    dim: int, batch_sizes: Sequence[int], repeats: int = 20
) -> dict[str, float]:
    """A dim x dim fp16 Linear pruned 2:4 on CUDA: dense over semi-structured p50 time per batch
    size (`speedup_b<N>`) and the largest difference relative to the output's scale."""
    import torch
    import torch.nn.functional as F
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(0)
    weight = torch.randn(dim, dim, device="cuda", dtype=torch.half) / dim**0.5
    weight *= two_four_mask(weight)
    sparse = to_sparse_semi_structured(weight)
    measured = {"dim": dim, "max_rel_diff": 0.0}
    with torch.inference_mode():
        for batch in batch_sizes:
            x = torch.randn(batch, dim, device="cuda", dtype=torch.half)
            dense = F.linear(x, weight)
            relative = ((F.linear(x, sparse) - dense).abs().max() / dense.abs().max()).item()
            measured["max_rel_diff"] = max(measured["max_rel_diff"], relative)
            calls = {
                "dense": lambda x=x: F.linear(x, weight),
                "2:4": lambda x=x: F.linear(x, sparse),
            }
            timings = time_calls(calls, repeats, warmup=5)
            measured[f"speedup_b{batch}"] = timings["dense"].p50 / timings["2:4"].p50
    return measured


def _all_reduce_worker(
    rank: int, world_size: int, backend: str, store: str, size_mb: int, result: str
) -> None:
    """One rank: check that an all-reduce sums right, then time all-reduces of `size_mb` MB."""
    import torch
    import torch.distributed as dist

    cuda = backend == "nccl"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=store, rank=rank, world_size=world_size)
    try:
        summed = torch.full((1024,), float(rank + 1), device=device)
        dist.all_reduce(summed)
        correct = (summed == world_size * (world_size + 1) / 2).all().float()
        dist.all_reduce(correct, op=dist.ReduceOp.MIN)  # every rank's verdict
        tensor = torch.zeros(size_mb * 2**20 // 4, device=device)
        reduce = {"all_reduce": lambda: dist.all_reduce(tensor)}
        seconds = time_calls(reduce, repeats=20, warmup=5)["all_reduce"].p50
        if rank == 0:
            algbw = tensor.numel() * 4 / seconds / 1e9
            # nccl-tests' bus bandwidth, what each link carried: 0 for a single rank.
            busbw = algbw * 2 * (world_size - 1) / world_size
            report = {"sum_correct": bool(correct.item()), "algbw_GBps": algbw}
            Path(result).write_text(json.dumps(report | {"busbw_GBps": busbw}))
    finally:
        dist.destroy_process_group()


def all_reduce_bandwidth(
    backend: str, world_size: int, size_mb: int, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Spawn `world_size` ranks (one GPU each under nccl): whether an all-reduce sums right,
    and the algorithm and bus bandwidth (GB/s) of all-reducing `size_mb` MB."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="llmlab-allreduce-") as folder:
        result = Path(folder) / "rank0.json"
        store = f"file://{folder}/store"  # rendezvous through a file: no port to pick
        arguments = (world_size, backend, store, size_mb, str(result))
        ranks = mp.spawn(_all_reduce_worker, arguments, nprocs=world_size, join=False)
        deadline = time.monotonic() + timeout_s
        while not ranks.join(timeout=1):
            if time.monotonic() > deadline:
                for process in ranks.processes:
                    process.kill()
                raise TimeoutError(f"{backend} all-reduce over {world_size} ranks hung")
        measured = json.loads(result.read_text())
    return {"backend": backend, "world_size": world_size, "size_mb": size_mb} | measured
