"""Embeddings (lab 15): our mean pooling equals sentence-transformers' encode for the packaged
MiniLM, padding and batching do not change a vector, and the model version follows the files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmlab.embeddings import embed, embedding_model_dir, load_embedding_model, model_version

# Short, long (past the 256-token truncation), punctuation, digits, non-ASCII, repeated.
TEXTS = [
    "no picture",
    "the remote stopped working after a week and support never answered my emails",
    "great!!!",
    "1234 5678",
    "café ü 你好",
    "no picture",
    " ".join(["the sound drops out whenever the picture changes"] * 40),
    "ok",
]


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    """The packaged all-MiniLM-L6-v2, loaded once for this module."""
    return load_embedding_model()


def test_embed_equals_sentence_transformers_encode(minilm: tuple[Any, Any]) -> None:
    """Catches pooling over padding, a missing normalisation, a wrong truncation length or rows
    returned in sorted rather than input order: each moves some vector by far more than 1e-5."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedding_model_dir()), device="cpu")
    expected = reference.encode(TEXTS, batch_size=3, convert_to_numpy=True)
    ours = embed(TEXTS, *minilm, batch_size=3)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert np.abs(ours - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)


def test_a_vector_does_not_depend_on_its_batch(minilm: tuple[Any, Any]) -> None:
    """A short text padded next to a long one gets the vector it gets alone (mask-aware mean)."""
    alone = embed(["no picture"], *minilm)
    padded = embed(["no picture", TEXTS[6]], *minilm, batch_size=2)[:1]
    assert np.abs(alone - padded).max() < 1e-5
    assert embed([], *minilm).shape == (0, 384)


def _fake_model(path: Path, weights: bytes = b"w1", config: str = "{}") -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "config.json").write_text(config)
    (path / "README.md").write_text("about the model")
    return path


def test_model_version_follows_weights_and_config_not_docs(tmp_path: Path) -> None:
    """Two models that differ in weights or config never share a version; a copy keeps it."""
    original = model_version(_fake_model(tmp_path / "a"))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "a", copy)
    (copy / "README.md").write_text("edited prose")
    assert model_version(copy) == original
    assert model_version(_fake_model(tmp_path / "b", weights=b"w2")) != original
    assert model_version(_fake_model(tmp_path / "c", config='{"layers": 2}')) != original
    assert original.startswith("sha256-") and original != model_version()
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        model_version(tmp_path / "config-only")
