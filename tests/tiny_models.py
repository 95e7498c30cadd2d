"""Tiny random sequence classifiers saved like Lab 05's, for the service and pipeline tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from llmlab.text import pretrained_model_dir


def save_tiny_classifier(path: Path, seed: int, labels: Sequence[str]) -> Path:
    """A one-layer random BERT classifier with the packaged MiniLM tokenizer, saved to `path`."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    BertForSequenceClassification(config).eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(pretrained_model_dir()).save_pretrained(path)
    return path
