"""Batches for the training loop: device moves, sizes, an endless resumable stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

Batch = Any
BatchSource = Iterable[Batch] | Callable[[int], Iterable[Batch]]


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """Move every tensor of a (nested) dict/list/tuple batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {name: to_device(value, device) for name, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def examples_in(batch: Batch) -> int:
    """Number of examples: the first dimension of the batch's first tensor."""
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
    return len(first)


def count_tokens(batch: Batch) -> int:
    """Token positions the model processes (input_ids.numel()), else the number of examples."""
    if isinstance(batch, Mapping) and "input_ids" in batch:
        return batch["input_ids"].numel()
    return examples_in(batch)


def stream(source: BatchSource, epoch: int, skip: int) -> Iterator[tuple[int, int, Batch]]:
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


def check_resumable(source: BatchSource) -> None:
    """A DataLoader shuffled by the global RNG would give a resumed run different batches."""
    if isinstance(source, torch.utils.data.DataLoader):
        sampler = source.sampler
        if isinstance(sampler, torch.utils.data.RandomSampler) and sampler.generator is None:
            if source.generator is None:
                raise ValueError(
                    "a checkpointed run needs a reproducible shuffle: use shuffled_batches"
                    "(dataset, batch_size, seed) instead of DataLoader(shuffle=True)"
                )
