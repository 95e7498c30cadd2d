"""Generating text (lab 14): next-token choice by greedy, temperature, top-k and top-p sampling."""

from __future__ import annotations

import torch
from torch import Tensor


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """(batch, vocab) logits scaled by 1/temperature, with tokens outside top-k / top-p at -inf.

    The order (temperature, then top-k, then top-p) is the one `transformers`' `generate` uses,
    so seeded sampling draws the same tokens.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature}")
    logits = logits / temperature
    if top_k is not None:
        kth_best = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        # Keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits, order = logits.sort(dim=-1)  # ascending, as transformers does
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1 - top_p
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(batch, vocab) logits of the last position -> (batch,) chosen token ids."""
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
