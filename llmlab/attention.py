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
    """Attention with `n_heads` heads, each attending in its own d_model/n_heads subspace."""

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

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        memory: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """(batch, seq, d_model) -> same; keys and values from `memory` if given (cross-attention).

        Boolean mask, True = may attend; `return_weights` also returns the weights.
        """
        batch, seq, d_model = x.shape
        source = x if memory is None else memory

        def heads(t: Tensor) -> Tensor:
            return t.view(batch, t.size(1), self.n_heads, self.d_head).transpose(1, 2)

        dropout_p = self.dropout if self.training else 0.0
        attended, weights = scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(source)),
            heads(self.value(source)),
            mask,
            causal,
            dropout_p,
        )
        # Concatenate the heads again, then mix them with the output projection.
        out = self.out(attended.transpose(1, 2).reshape(batch, seq, d_model))
        return (out, weights) if return_weights else out


def feed_forward(d_model: int, d_ff: int, gelu_approximate: str = "none") -> nn.Sequential:
    """The position-wise network d_model -> d_ff -> d_model with a GELU, shared by both blocks."""
    return nn.Sequential(
        nn.Linear(d_model, d_ff), nn.GELU(gelu_approximate), nn.Linear(d_ff, d_model)
    )


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
        self.feed_forward = feed_forward(d_model, d_ff, gelu_approximate)
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


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder's output, feed-forward.

    Each sub-layer sits in a residual connection with its own layer norm, as in EncoderBlock;
    queries of the cross-attention come from the decoder, keys and values from `memory`.
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
        self.self_attention = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.cross_attention = MultiHeadAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.feed_forward = feed_forward(d_model, d_ff, gelu_approximate)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.cross_weights: Tensor | None = None  # the last forward's, for plots

    def _cross(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        out, weights = self.cross_attention(x, memory_mask, memory=memory, return_weights=True)
        self.cross_weights = weights.detach()
        return self.dropout(out)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """(batch, target, d_model), (batch, source, d_model) -> (batch, target, d_model).

        `mask` hides padded target tokens (the future is always hidden), `memory_mask` padded
        source tokens; both boolean, True = may attend.
        """
        if self.norm_first:
            x = x + self.dropout(self.self_attention(self.norm1(x), mask, causal=True))
            x = x + self._cross(self.norm2(x), memory, memory_mask)
            return x + self.dropout(self.feed_forward(self.norm3(x)))
        x = self.norm1(x + self.dropout(self.self_attention(x, mask, causal=True)))
        x = self.norm2(x + self._cross(x, memory, memory_mask))
        return self.norm3(x + self.dropout(self.feed_forward(x)))


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


def _load_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """Copy torch's packed q/k/v projection (one (3d, d) matrix) into our three Linear layers."""
    for linear, weight, bias in zip(
        (ours.query, ours.key, ours.value),
        theirs.in_proj_weight.chunk(3),
        theirs.in_proj_bias.chunk(3),
        strict=True,
    ):
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    ours.out.load_state_dict(theirs.out_proj.state_dict())


@torch.no_grad()
def decoder_block_from_torch(layer: nn.TransformerDecoderLayer) -> DecoderBlock:
    """A DecoderBlock holding the weights of a batch_first, GELU torch TransformerDecoderLayer."""
    if layer.activation is not F.gelu:
        raise ValueError("only layers with activation='gelu' match DecoderBlock's nn.GELU")
    if not layer.self_attn.batch_first:
        raise ValueError("only batch_first=True layers take (batch, seq, d_model) like ours")
    block = DecoderBlock(
        d_model=layer.linear1.in_features,
        n_heads=layer.self_attn.num_heads,
        d_ff=layer.linear1.out_features,
        dropout=layer.dropout.p,
        norm_first=layer.norm_first,
        layer_norm_eps=layer.norm1.eps,
    )
    _load_attention(block.self_attention, layer.self_attn)
    _load_attention(block.cross_attention, layer.multihead_attn)
    block.feed_forward[0].load_state_dict(layer.linear1.state_dict())
    block.feed_forward[2].load_state_dict(layer.linear2.state_dict())
    for name in ("norm1", "norm2", "norm3"):
        getattr(block, name).load_state_dict(getattr(layer, name).state_dict())
    return block.to(layer.linear1.weight.device)


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
