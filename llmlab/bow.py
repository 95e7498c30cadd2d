"""A small, fast bag-of-words classifier (built in lab 13, used by lab 13 and `llmlab.federated`).

Hashed words and character trigrams into an MLP: what lab 13 trains many times over, for the
augmentation defence, the membership-inference comparison and the federated clients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from llmlab.train import TrainConfig, classification_loss, train


def hashed_features(texts: Sequence[str], dim: int = 2048) -> torch.Tensor:
    """Hashed counts of words and of character trigrams inside words, log-scaled.

    The trigrams let a misspelt word keep most of its features; the hashing lets every process
    featurise alone, with no shared vocabulary.
    """
    from sklearn.feature_extraction.text import HashingVectorizer

    counts = sum(
        HashingVectorizer(
            n_features=dim, alternate_sign=False, norm=None, analyzer=analyzer, ngram_range=n
        ).transform(texts)
        for analyzer, n in (("word", (1, 1)), ("char_wb", (3, 3)))
    )
    return torch.from_numpy(np.log1p(counts.toarray()).astype(np.float32))


def bag_of_words_model(dim: int = 2048, hidden: int = 64, dropout: float = 0.0) -> nn.Module:
    """An MLP over hashed features: trains in seconds on two CPU cores."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 3)
    )


def fit(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Train `model` with llmlab.train (AdamW, constant rate, shuffled mini-batches); eval mode."""

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + epoch))
        return [(features[rows], labels[rows]) for rows in order.split(batch_size)]

    steps = epochs * -(-len(labels) // batch_size)
    config = TrainConfig(
        max_steps=steps,
        lr=lr,
        min_lr_ratio=1.0,  # a constant learning rate
        warmup_steps=0,
        weight_decay=weight_decay,
        betas=(0.9, 0.999),
        grad_clip=None,
        log_every=steps,
        device="cpu",
        seed=seed,
        progress=False,
    )
    train(model, batches, config, loss_fn=classification_loss)
    return model.eval()
