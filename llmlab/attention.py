"""Attention and the Transformer encoder block, written from the formulas (lab 03)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(n_queries: int, n_keys: int | None = None, device: str | None = None) -> Tensor:
    """Boolean (n_queries, n_keys) mask, True where query i may look at key j (j <= i)."""
    n_keys = n_queries if n_keys is None else n_keys
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Turn a tokenizer's (batch, seq) 1/0 attention_mask into a (batch, 1, 1, seq) key mask."""
    if attention_mask.dim() != 2:
        shape = tuple(attention_mask.shape)
        raise ValueError(f"attention_mask must be (batch, seq), got shape {shape}")
    # Broadcasts over heads and queries: every query ignores the same padded keys.
    return attention_mask.bool()[:, None, None, :]


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """softmax(Q K^T / sqrt(d)) V with boolean `mask` (True = may attend); (output, weights)."""
    if query.size(-1) != key.size(-1):
        raise ValueError(f"query and key widths differ: {query.size(-1)} vs {key.size(-1)}")
    if key.size(-2) != value.size(-2):
        raise ValueError(f"{key.size(-2)} keys but {value.size(-2)} values")
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = attend), got {mask.dtype}")
    # Dividing by sqrt(d) keeps the scores' variance near 1, so softmax does not saturate.
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if causal:
        future = causal_mask(query.size(-2), key.size(-2), device=query.device)
        mask = future if mask is None else mask & future
    if mask is not None:
        # exp(-inf) = 0: masked keys get exactly zero weight.
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ value, weights


class MultiHeadAttention(nn.Module):
    """Self-attention with `n_heads` heads, each attending in its own d_model/n_heads subspace."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key = nn.Linear(d_model, d_model, bias=bias)
        self.value = nn.Linear(d_model, d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model); boolean mask, True = may attend."""
        batch, seq, d_model = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, seq, self.n_heads, self.d_head).transpose(1, 2)

        dropout_p = self.dropout if self.training else 0.0
        attended, _ = scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), mask, causal, dropout_p
        )
        # Concatenate the heads again, then mix them with the output projection.
        return self.out(attended.transpose(1, 2).reshape(batch, seq, d_model))


class EncoderBlock(nn.Module):
    """Attention then feed-forward, each wrapped in a residual connection and a layer norm.

    `causal=True` in forward() makes it a decoder-only (GPT) block; GPT-2 also uses
    `norm_first=True` and the tanh approximation of GELU (`gelu_approximate="tanh"`).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        gelu_approximate: str = "none",
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attention = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(gelu_approximate), nn.Linear(d_ff, d_model)
        )
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model)."""
        if self.norm_first:
            # Pre-norm (GPT-2 onwards): the residual path stays an identity, so deep stacks train.
            x = x + self.dropout(self.attention(self.norm1(x), mask, causal))
            return x + self.dropout(self.feed_forward(self.norm2(x)))
        # Post-norm, as in the original Transformer and BERT.
        x = self.norm1(x + self.dropout(self.attention(x, mask, causal)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


def encoder_block_from_bert(layer: nn.Module) -> EncoderBlock:
    """An EncoderBlock holding the weights of one `transformers` BertLayer."""
    from transformers.activations import GELUActivation

    self_attention, attention_output = layer.attention.self, layer.attention.output
    if not isinstance(layer.intermediate.intermediate_act_fn, GELUActivation):
        raise ValueError("only BERT layers with hidden_act='gelu' match EncoderBlock's nn.GELU")
    block = EncoderBlock(
        d_model=self_attention.query.in_features,
        n_heads=self_attention.num_attention_heads,
        d_ff=layer.intermediate.dense.out_features,
        dropout=attention_output.dropout.p,
        layer_norm_eps=attention_output.LayerNorm.eps,
    )
    ours_to_bert = {
        "attention.query": self_attention.query,
        "attention.key": self_attention.key,
        "attention.value": self_attention.value,
        "attention.out": attention_output.dense,
        "norm1": attention_output.LayerNorm,
        "feed_forward.0": layer.intermediate.dense,
        "feed_forward.2": layer.output.dense,
        "norm2": layer.output.LayerNorm,
    }
    state = {
        f"{ours}.{name}": tensor
        for ours, module in ours_to_bert.items()
        for name, tensor in module.state_dict().items()
    }
    # strict=True: every parameter of the block must be filled, and nothing left over.
    block.load_state_dict(state, strict=True)
    return block.to(self_attention.query.weight.device)


def sinusoidal_positions(n_positions: int, d_model: int, base: float = 10_000.0) -> Tensor:
    """(n_positions, d_model) table: sin on even, cos on odd dims, wavelengths 2pi..2pi*base."""
    if d_model % 2:
        raise ValueError(f"d_model must be even for sin/cos pairs, got {d_model}")
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    frequency = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    table = torch.empty(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table
