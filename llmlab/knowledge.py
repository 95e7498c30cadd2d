"""Where knowledge lives (lab 15): masked-LM masking, a small encoder from lab 03's blocks
pretrained with a masked or a causal objective and fine-tuned as a classifier, a k-nearest-
neighbour vote over embeddings, and the helpers of the continual-learning experiment."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmlab.attention import EncoderBlock, padding_mask

IGNORE_INDEX = -100  # positions cross_entropy skips: every unmasked token of a masked-LM batch
OBJECTIVES = ("masked", "causal")


def mask_tokens(
    input_ids: Tensor,
    special_tokens_mask: Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: (inputs, labels); labels are IGNORE_INDEX except at the chosen positions.

    Each non-special token is chosen with `probability`; of the chosen, 80 % become the mask
    token, 10 % a random token and 10 % stay as they are (the model must predict all of them).
    """
    chosen = torch.rand(input_ids.shape, generator=generator) < probability
    chosen &= ~special_tokens_mask.bool()
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    draw = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    inputs = torch.where(to_mask, mask_token_id, input_ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


class TinyEncoder(nn.Module):
    """Token and position embeddings, lab 03's pre-norm blocks and a final norm.

    `causal=True` lets each position see only itself and earlier ones (a GPT body); otherwise
    every position sees the whole text (a BERT body). Padded keys are never attended to.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        max_positions: int,
        causal: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.causal = causal
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_positions, d_model)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, n_heads, 4 * d_model, dropout=dropout, norm_first=True)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(batch, seq) ids -> (batch, seq, d_model) hidden states."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask, causal=self.causal)
        return self.norm(x)


class PretrainingModel(nn.Module):
    """An encoder with a vocabulary head, trained on the masked or the causal objective.

    masked: predict the tokens at the positions whose label is not IGNORE_INDEX (`mask_tokens`).
    causal: predict token t+1 from positions <= t (labels are the inputs; padding is ignored).
    """

    def __init__(self, encoder: TinyEncoder, vocab_size: int, objective: str):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if encoder.causal != (objective == "causal"):
            raise ValueError("the causal objective needs a causal encoder, the masked one not")
        self.encoder, self.objective = encoder, objective
        self.head = nn.Linear(encoder.norm.normalized_shape[0], vocab_size)

    def forward(
        self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None
    ) -> dict[str, Tensor]:
        """{'loss', 'logits'}: mean cross-entropy over the predicted positions."""
        logits = self.head(self.encoder(input_ids, attention_mask))
        if self.objective == "causal":
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return {"loss": loss, "logits": logits}


class EncoderClassifier(nn.Module):
    """An encoder, the mean of its hidden states over real tokens, and a linear head."""

    def __init__(self, encoder: TinyEncoder, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.norm.normalized_shape[0], n_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, seq) -> (batch, n_classes) logits."""
        hidden = self.encoder(input_ids, attention_mask)
        return self.head(mean_pool(hidden, attention_mask))


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of `hidden` (batch, seq, d) over the positions where attention_mask is 1."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def token_blocks(ids: Sequence[Sequence[int]], length: int) -> Tensor:
    """Concatenate tokenized texts into one stream cut into (n, length) blocks, tail dropped."""
    stream = torch.tensor([token for text in ids for token in text])
    usable = len(stream) // length * length
    if usable == 0:
        raise ValueError(f"{len(stream)} tokens do not fill one block of {length}")
    return stream[:usable].view(-1, length)


def knn_vote(neighbour_labels: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
    """Each row's label: the class with the largest sum of neighbour similarities (ties: lowest)."""
    votes = np.zeros((len(neighbour_labels), n_classes))
    np.add.at(votes, (np.arange(len(votes))[:, None], neighbour_labels), scores)
    return votes.argmax(1)


def label_mix(labels: pd.Series, groups: pd.Series) -> pd.DataFrame:
    """Share of each label within each group (rows: groups, columns: labels)."""
    return pd.crosstab(groups, labels, normalize="index")


def most_shifted_group(labels: pd.Series, groups: pd.Series) -> str:
    """The group whose label mix is furthest (total variation) from that of all other rows."""
    distance = {}
    for group in sorted(groups.unique()):
        inside = labels[groups == group].value_counts(normalize=True)
        outside = labels[groups != group].value_counts(normalize=True)
        distance[group] = 0.5 * inside.sub(outside, fill_value=0).abs().sum()
    return max(distance, key=distance.get)


def replay_rows(
    new_rows: np.ndarray, old_rows: np.ndarray, ratio: float, seed: int = 0
) -> np.ndarray:
    """The new rows plus round(ratio * len(new_rows)) old rows drawn without replacement."""
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    count = min(len(old_rows), round(ratio * len(new_rows)))
    replayed = np.random.default_rng(seed).choice(old_rows, count, replace=False)
    return np.concatenate([new_rows, replayed])
