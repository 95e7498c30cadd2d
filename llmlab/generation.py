"""Generating text (lab 14): next-token choice by greedy, temperature, top-k and top-p sampling,
and a KV cache for lab 04's BlockGPT with a row per sequence, each at its own length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from llmlab.attention import scaled_dot_product_attention
from llmlab.models import BlockGPT


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


# ---------------------------------------------------------------- a KV cache for BlockGPT


@dataclass
class KVCache:
    """Keys and values of every layer for `rows` sequences, each with its own cached length.

    keys[layer] and values[layer] are (rows, heads, max_len, head_size); row r holds
    `lengths[r]` valid positions. Rows are independent, so each can be at its own position:
    what continuous batching needs.
    """

    keys: list[Tensor]
    values: list[Tensor]
    lengths: Tensor

    @classmethod
    def empty(
        cls,
        model: BlockGPT,
        rows: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A zeroed cache sized for `model` (max_len defaults to its context)."""
        attention = model.blocks[0].attention
        max_len = max_len or model.positions.num_embeddings
        embedding = model.tokens.weight  # stays float when the Linear layers are quantised
        shape = (rows, attention.n_heads, max_len, attention.d_head)
        dtype = dtype or embedding.dtype

        def zeros() -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=embedding.device)

        keys, values = [zeros() for _ in model.blocks], [zeros() for _ in model.blocks]
        return cls(keys, values, torch.zeros(rows, dtype=torch.long, device=embedding.device))

    def nbytes(self) -> int:
        """Bytes held by the key and value tensors."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def move_row(self, source: int, target: int) -> None:
        """Copy row `source` (keys, values, length) into row `target`: keeps active rows packed."""
        for tensor in self.keys + self.values:
            tensor[target] = tensor[source]
        self.lengths[target] = self.lengths[source]


def _cached_attention(
    attention: nn.Module, x: Tensor, cache: KVCache, layer: int, rows: slice, positions: Tensor
) -> Tensor:
    """Self-attention of the new tokens x over each row's cached keys plus their own."""
    batch, n_new, d_model = x.shape

    def heads(t: Tensor) -> Tensor:
        return t.view(batch, n_new, attention.n_heads, attention.d_head).transpose(1, 2)

    row_ids = torch.arange(rows.start, rows.stop, device=x.device)[:, None]
    keys, values = cache.keys[layer], cache.values[layer]
    # Write the new keys/values at each row's own positions, then attend over the prefix.
    keys[row_ids, :, positions] = heads(attention.key(x)).transpose(1, 2).to(keys.dtype)
    values[row_ids, :, positions] = heads(attention.value(x)).transpose(1, 2).to(values.dtype)
    n_keys = int(positions.max()) + 1
    # Query at absolute position p sees keys 0..p: the causal mask shifted by the row's offset.
    mask = torch.arange(n_keys, device=x.device) <= positions[:, :, None]
    attended, _ = scaled_dot_product_attention(
        heads(attention.query(x)),
        keys[rows, :, :n_keys].to(x.dtype),
        values[rows, :, :n_keys].to(x.dtype),
        mask[:, None],
    )
    return attention.out(attended.transpose(1, 2).reshape(batch, n_new, d_model))


@torch.no_grad()
def cached_forward(model: BlockGPT, cache: KVCache, ids: Tensor, start_row: int = 0) -> Tensor:
    """Logits (batch, n_new, vocab) of `ids` appended to cache rows start_row.., which advance.

    Only the new tokens are embedded and projected; attention reads the earlier keys and values
    from the cache. A decode step is ids of shape (batch, 1); a prefill passes the whole prompt.
    """
    rows = slice(start_row, start_row + ids.shape[0])
    positions = cache.lengths[rows][:, None] + torch.arange(ids.shape[1], device=ids.device)
    x = model.tokens(ids) + model.positions(positions)
    for layer, block in enumerate(model.blocks):
        x = x + _cached_attention(block.attention, block.norm1(x), cache, layer, rows, positions)
        x = x + block.feed_forward(block.norm2(x))
    cache.lengths[rows] += ids.shape[1]
    return model.head(model.norm(x))


def prefill(model: BlockGPT, cache: KVCache, prompts: list[Tensor], start_row: int = 0) -> Tensor:
    """Cache prompts of any lengths in fresh rows start_row..; their last logits (batch, vocab).

    The prompts are right-padded into one forward. Padding sits after each prompt, so causal
    attention keeps it out of every real query, and the row's length is set to the prompt's:
    the first decode step overwrites the padding.
    """
    rows = slice(start_row, start_row + len(prompts))
    cache.lengths[rows] = 0
    lengths = torch.tensor([len(p) for p in prompts], device=cache.lengths.device)
    padded = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long, device=lengths.device)
    for row, prompt in enumerate(prompts):
        padded[row, : len(prompt)] = prompt
    logits = cached_forward(model, cache, padded, start_row)
    cache.lengths[rows] = lengths
    return logits[torch.arange(len(prompts)), lengths - 1]


@torch.no_grad()
def generate_cached(
    model: BlockGPT, prompt: Tensor, max_new_tokens: int, **sampling: Any
) -> Tensor:
    """Continue one (seq,) prompt by `max_new_tokens` tokens with a KV cache; the new tokens.

    `sampling` goes to `next_token` (do_sample, temperature, top_k, top_p, generator).
    """
    cache = KVCache.empty(model, 1, len(prompt) + max_new_tokens)
    token = next_token(prefill(model, cache, [prompt]), **sampling)
    new = [token]
    for _ in range(max_new_tokens - 1):
        token = next_token(cached_forward(model, cache, token[:, None])[:, -1], **sampling)
        new.append(token)
    return torch.cat(new)
