"""The vector index (lab 15): exact search is exact, HNSW finds most true neighbours, the sweep
reports what it says, and a saved index refuses an embedding model other than its own."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmlab.vectorindex import (
    IndexVersionError,
    VectorIndex,
    build_index,
    crossover,
    exact_search,
    recall_at_k,
    sweep,
)

HNSW_RECALL_BOUND = 0.9  # 2,000 random unit vectors in 32 dimensions, k=10, default M/efSearch


def unit_vectors(rows: int, seed: int, dimension: int = 32) -> np.ndarray:
    """Random directions, float32, unit length (what the embedding model returns)."""
    vectors = np.random.default_rng(seed).normal(size=(rows, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows_for(count: int, start: int = 0) -> pd.DataFrame:
    """Rows with text, label and source id for `count` vectors."""
    ids = range(start, start + count)
    return pd.DataFrame({"text": [f"row {i}" for i in ids], "label": "x", "source_id": list(ids)})


def test_exact_search_matches_numpy_brute_force() -> None:
    """Every id of the exact top-10 is numpy's, scores equal the inner products."""
    vectors, queries = unit_vectors(500, 0), unit_vectors(20, 1)
    scores, ids = exact_search(vectors, queries, 10)
    products = queries @ vectors.T
    expected = np.argsort(-products, axis=1)[:, :10]
    assert recall_at_k(ids, expected) == 1.0
    assert np.allclose(scores, np.take_along_axis(products, expected, axis=1), atol=1e-5)


def test_hnsw_recall_is_high_but_measured() -> None:
    """HNSW at the default parameters finds at least 90 % of the true top-10; with efSearch at 1
    and M at 4 it finds fewer, so the recall figure measures something."""
    vectors, queries = unit_vectors(2000, 2), unit_vectors(100, 3)
    _, exact = exact_search(vectors, queries, 10)
    _, approx = build_index(vectors, "hnsw").search(queries, 10)
    _, poor = build_index(vectors, "hnsw", m=4, ef_search=1).search(queries, 10)
    assert recall_at_k(approx, exact) >= HNSW_RECALL_BOUND
    assert recall_at_k(poor, exact) < recall_at_k(approx, exact)


def test_recall_at_k_counts_shared_ids() -> None:
    """Half of one query's neighbours found, all of the other's: 0.75; -1 padding never counts."""
    assert recall_at_k(np.array([[1, 5], [3, 4]]), np.array([[1, 2], [4, 3]])) == 0.75
    assert recall_at_k(np.array([[1, -1]]), np.array([[1, 2]])) == 0.5
    with pytest.raises(ValueError, match="shapes"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 2)))


def test_sweep_reports_both_kinds_at_each_size() -> None:
    """Flat is exact (recall 1) and holds exactly size x dimension float32 plus a header; HNSW
    adds its graph; latencies are positive and the p95 is not below the median."""
    frame = sweep(unit_vectors(400, 4), unit_vectors(10, 5), sizes=[100, 400], repeats=1)
    pairs = sorted(frame[["size", "kind"]].itertuples(index=False, name=None))
    assert pairs == [(100, "flat"), (100, "hnsw"), (400, "flat"), (400, "hnsw")]
    flat, hnsw = frame[frame.kind == "flat"], frame[frame.kind == "hnsw"]
    assert (flat.recall_at_10 == 1.0).all()
    assert ((flat.memory_bytes - flat["size"] * 32 * 4).between(0, 1024)).all()
    assert (hnsw.memory_bytes.to_numpy() > flat.memory_bytes.to_numpy()).all()
    assert (frame.query_ms_median > 0).all() and (frame.query_ms_p95 >= frame.query_ms_median).all()
    assert (frame.threads == 1).all()


def test_crossover_is_the_size_from_which_hnsw_stays_faster() -> None:
    """A win that does not last (size 100) is not the crossover; no lasting win gives None."""
    flat_hnsw = {100: (2.0, 1.0), 1000: (2.0, 3.0), 10000: (5.0, 1.0), 100000: (50.0, 2.0)}
    frame = pd.DataFrame(
        [
            {"size": size, "kind": kind, "query_ms_median": ms}
            for size, pair in flat_hnsw.items()
            for kind, ms in zip(("flat", "hnsw"), pair, strict=True)
        ]
    )
    assert crossover(frame) == 10000
    assert crossover(frame.assign(query_ms_median=1.0)) is None


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    """Loaded, the index answers as before with the same rows and manifest; saving over it
    replaces it and leaves no temporary folder behind."""
    vectors = unit_vectors(300, 6)
    index = VectorIndex.build(vectors, rows_for(300), "model-a", m=8, ef_search=32)
    index.save(tmp_path / "index")
    index.save(tmp_path / "index")
    assert os.listdir(tmp_path) == ["index"]
    loaded = VectorIndex.load(tmp_path / "index", "model-a")
    queries = unit_vectors(5, 7)
    assert np.array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    pd.testing.assert_frame_equal(loaded.rows, index.rows)
    assert loaded.manifest() == index.manifest()
    assert loaded.params["ef_search"] == loaded.index.hnsw.efSearch == 32


def test_loading_with_another_model_version_raises(tmp_path: Path) -> None:
    """The version check itself: this test fails if `VectorIndex.load` stops comparing the
    saved model version with the expected one. The error names both versions."""
    VectorIndex.build(unit_vectors(20, 8), rows_for(20), "model-a").save(tmp_path / "index")
    with pytest.raises(IndexVersionError, match="model-a.*model-b"):
        VectorIndex.load(tmp_path / "index", "model-b")


def test_a_tampered_index_file_is_refused(tmp_path: Path) -> None:
    """A FAISS file that is not the one the manifest describes does not load."""
    VectorIndex.build(unit_vectors(20, 9), rows_for(20), "m", kind="flat").save(tmp_path / "i")
    with open(tmp_path / "i" / "index.faiss", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="digest"):
        VectorIndex.load(tmp_path / "i", "m")


def test_added_rows_are_found_at_once() -> None:
    """Rows added after the build are their own nearest neighbours, score 1, no retraining."""
    index = VectorIndex.build(unit_vectors(200, 10), rows_for(200), "m")
    new = unit_vectors(5, 11)
    index.add(new, rows_for(5, start=200))
    nearest = index.neighbours(new, 3)
    assert len(index) == 205 == len(index.rows)
    assert [found[0]["source_id"] for found in nearest] == [str(i) for i in range(200, 205)]
    assert all(abs(found[0]["score"] - 1) < 1e-5 for found in nearest)
    with pytest.raises(ValueError, match="columns"):
        index.add(new, [{"text": "no label"}] * 5)
    with pytest.raises(ValueError, match="rows"):
        VectorIndex.build(unit_vectors(3, 12), rows_for(2), "m")
