"""Vector search for lab 15: exact search, an approximate HNSW index, their recall, latency and
memory at several sizes, and a saved index that knows which embedding model made its vectors.

Why FAISS (faiss-cpu) rather than hnswlib: one library holds the exact index (IndexFlatIP) and
the approximate ones (IndexHNSWFlat, and IVF or product quantisation when an index outgrows
memory), so exact and approximate search run the same code paths, on the same vectors and the
same OpenMP threads (`faiss.omp_set_num_threads`): a fair comparison. It also serialises any
index to bytes (`faiss.serialize_index`), which is both the saved file and its memory figure.
Vectors are unit length (see `llmlab.embeddings`), so inner product is cosine similarity."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROW_COLUMNS = ("text", "label", "source_id")
KINDS = ("flat", "hnsw")
HNSW_M = 16  # links per node: more, better recall, more memory and slower builds
HNSW_EF_CONSTRUCTION = 40  # candidates while linking a new vector (FAISS default)
HNSW_EF_SEARCH = 64  # candidates while searching: the recall/latency knob at query time
FORMAT = 1
MANIFEST, INDEX_FILE, ROWS_FILE = "manifest.json", "index.faiss", "rows.parquet"


class IndexVersionError(ValueError):
    """An index whose vectors another embedding model made: its scores would be meaningless."""


def set_threads(threads: int) -> None:
    """The OpenMP threads every FAISS call uses from now on (set explicitly: timings say it)."""
    import faiss

    faiss.omp_set_num_threads(threads)


def _as_vectors(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


def build_index(
    vectors: np.ndarray,
    kind: str = "hnsw",
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = HNSW_EF_SEARCH,
) -> Any:
    """An inner-product FAISS index of `vectors`: "flat" (exact) or "hnsw" (approximate)."""
    import faiss

    vectors = _as_vectors(vectors)
    if kind == "flat":
        index = faiss.IndexFlatIP(vectors.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}: use one of {KINDS}")
    index.add(vectors)
    return index


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids of the `k` largest inner products of each query, by comparing with all."""
    return build_index(vectors, "flat").search(_as_vectors(queries), k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact top-k that the approximate top-k found, averaged over queries."""
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if approx_ids.shape != exact_ids.shape:
        raise ValueError(f"shapes differ: {approx_ids.shape} vs {exact_ids.shape}")
    found = [
        len(set(approx[approx >= 0]) & set(exact[exact >= 0])) / max(int((exact >= 0).sum()), 1)
        for approx, exact in zip(approx_ids, exact_ids, strict=True)
    ]
    return float(np.mean(found))


def memory_bytes(index: Any) -> int:
    """Bytes of the serialised index: the vectors, plus the graph for HNSW."""
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def _time_queries(index: Any, queries: np.ndarray, k: int) -> tuple[list[float], float]:
    """Milliseconds of each query alone, and of all of them as one batch, per query."""
    single = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None, :], k)
        single.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    index.search(queries, k)
    return single, (time.perf_counter() - start) * 1e3 / len(queries)


def sweep(
    vectors: np.ndarray,
    queries: np.ndarray,
    sizes: list[int],
    k: int = 10,
    threads: int = 1,
    repeats: int = 3,
    **hnsw: int,
) -> pd.DataFrame:
    """Exact (flat) against HNSW on the first `size` vectors, for each size: build seconds,
    median and p95 ms of one query at a time (the serving case), ms per query in one batch,
    bytes, recall@k against exact. Both kinds answer the same queries on `threads` threads,
    after a warm-up pass, in `repeats` rounds that alternate between them."""
    set_threads(threads)
    vectors, queries = _as_vectors(vectors), _as_vectors(queries)
    records = []
    for size in sizes:
        if size > len(vectors):
            raise ValueError(f"size {size} > {len(vectors)} vectors")
        built, seconds = {}, {}
        for kind in KINDS:
            start = time.perf_counter()
            built[kind] = build_index(vectors[:size], kind, **hnsw)
            seconds[kind] = time.perf_counter() - start
        _, exact_ids = built["flat"].search(queries, k)
        single: dict[str, list[float]] = {kind: [] for kind in KINDS}
        batch: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for kind in KINDS:
            _time_queries(built[kind], queries, k)  # warm-up: caches, pages, thread pool
        for _ in range(repeats):
            for kind in KINDS:
                times, per_query = _time_queries(built[kind], queries, k)
                single[kind] += times
                batch[kind].append(per_query)
        for kind in KINDS:
            _, ids = built[kind].search(queries, k)
            records.append(
                {
                    "size": size,
                    "kind": kind,
                    "build_s": seconds[kind],
                    "query_ms_median": float(np.median(single[kind])),
                    "query_ms_p95": float(np.percentile(single[kind], 95)),
                    "batch_ms_per_query": float(np.median(batch[kind])),
                    "memory_bytes": memory_bytes(built[kind]),
                    f"recall_at_{k}": recall_at_k(ids, exact_ids),
                    "threads": threads,
                    "queries": len(queries),
                }
            )
    return pd.DataFrame.from_records(records)


def crossover(frame: pd.DataFrame, column: str = "query_ms_median") -> int | None:
    """The smallest size from which HNSW is faster than exact at every larger size (None: never)."""
    table = frame.pivot(index="size", columns="kind", values=column).sort_index()
    faster = (table["hnsw"] < table["flat"]).to_numpy()
    for position, size in enumerate(table.index):
        if faster[position:].all():
            return int(size)
    return None


def _as_rows(rows: pd.DataFrame | list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows).reset_index(drop=True)
    missing = [column for column in ROW_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"rows lack the columns {missing}: each row needs {ROW_COLUMNS}")
    return frame.astype({column: str for column in ROW_COLUMNS})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(directory: Path | str) -> dict[str, Any]:
    """The manifest of a saved index (model version, kind, rows, ...) without loading it."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved vector index: no {MANIFEST}")
    return json.loads(path.read_text())


def check_version(manifest: dict[str, Any], expected_model_version: str, where: Any) -> None:
    """Raise IndexVersionError unless the index was built by `expected_model_version`."""
    if manifest["model_version"] != expected_model_version:
        raise IndexVersionError(
            f"the index at {where} was built by embedding model {manifest['model_version']},"
            f" but the loaded embedding model is {expected_model_version}: rebuild the index"
            " with this model (vectors of two models are not comparable)"
        )


@dataclass
class VectorIndex:
    """A FAISS index, the rows its vectors stand for, and the embedding model that made them."""

    index: Any
    rows: pd.DataFrame
    model_version: str
    kind: str = "hnsw"
    params: dict[str, int] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        rows: pd.DataFrame | list[dict[str, Any]],
        model_version: str,
        kind: str = "hnsw",
        **hnsw: int,
    ) -> VectorIndex:
        """Index `vectors` (one per row: text, label, source_id) made by `model_version`."""
        frame = _as_rows(rows)
        if len(frame) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors for {len(frame)} rows")
        params = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
        params = params | hnsw if kind == "hnsw" else {}
        return cls(build_index(vectors, kind, **params), frame, model_version, kind, params)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        """Length of the vectors it holds."""
        return int(self.index.d)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (cosine for unit vectors) and row ids of the `k` nearest rows of each vector;
        id -1 and score -inf pad when the index holds fewer than `k` rows."""
        vectors = _as_vectors(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(f"vectors of shape {vectors.shape}; this index holds {self.dimension}")
        scores, ids = self.index.search(vectors, k)
        return scores, ids

    def neighbours(self, vectors: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """The `k` nearest rows of each vector (text, label, source_id, score), nearest first."""
        scores, ids = self.search(vectors, k)
        records = self.rows[list(ROW_COLUMNS)].to_dict("records")
        return [
            [
                records[i] | {"score": float(s)}
                for s, i in zip(row_scores, row_ids, strict=True)
                if i >= 0
            ]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]

    def add(self, vectors: np.ndarray, rows: pd.DataFrame | list[dict[str, Any]]) -> None:
        """Append rows and their vectors (same embedding model): searchable at once, no training."""
        frame = _as_rows(rows)
        vectors = _as_vectors(vectors)
        if len(frame) != len(vectors) or vectors.shape[1] != self.dimension:
            raise ValueError(f"{vectors.shape} vectors for {len(frame)} rows of {self.dimension}")
        self.index.add(vectors)
        self.rows = pd.concat([self.rows, frame], ignore_index=True)

    def manifest(self) -> dict[str, Any]:
        """What the saved index says of itself."""
        return {
            "format": FORMAT,
            "model_version": self.model_version,
            "created": self.created,
            "rows": len(self),
            "kind": self.kind,
            "dimension": self.dimension,
            "params": self.params,
        }

    def save(self, directory: Path | str) -> Path:
        """Write manifest, FAISS file and rows into a temporary folder, then rename it into
        place: a reader sees the old index or the new one, never half of one."""
        import faiss

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            faiss.write_index(self.index, str(staging / INDEX_FILE))
            self.rows.to_parquet(staging / ROWS_FILE, index=False)
            manifest = self.manifest() | {"index_sha256": _sha256(staging / INDEX_FILE)}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if target.exists():  # a directory cannot be renamed over: move the old one aside
                old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
                os.rename(target, old)
                os.rename(staging, target)
                shutil.rmtree(old)
            else:
                os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, directory: Path | str, expected_model_version: str) -> VectorIndex:
        """Read a saved index; IndexVersionError if another embedding model built it,
        ValueError if its files disagree with its manifest."""
        import faiss

        path = Path(directory)
        manifest = read_manifest(path)
        check_version(manifest, expected_model_version, path)
        if _sha256(path / INDEX_FILE) != manifest["index_sha256"]:
            raise ValueError(f"{path / INDEX_FILE} does not match its manifest's digest")
        index = faiss.read_index(str(path / INDEX_FILE))
        rows = pd.read_parquet(path / ROWS_FILE)
        if not index.ntotal == len(rows) == manifest["rows"]:
            raise ValueError(
                f"{path}: {index.ntotal} vectors, {len(rows)} rows, manifest {manifest['rows']}"
            )
        if manifest["kind"] == "hnsw":
            index.hnsw.efSearch = manifest["params"]["ef_search"]
        params, kind = manifest["params"], manifest["kind"]
        return cls(index, rows, manifest["model_version"], kind, params, manifest["created"])
