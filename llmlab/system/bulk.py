"""Asynchronous bulk scoring on Ray tasks: a job id, a status to poll, one Parquet part per
chunk written under a temporary name and renamed, so a retried task never duplicates rows.
Built and used in lab 12."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import ray

from llmlab.serving.classifier import Classifier, load_classifier

FORWARD_BATCH = 64  # texts per forward pass inside a task


@functools.lru_cache(maxsize=2)
def _classifier(path: str, version: str) -> Classifier:
    """The model, loaded once per worker process and reused by its next tasks."""
    return load_classifier(Path(path), version)


def _write_atomically(frame: pd.DataFrame, target: Path) -> None:
    """Write `frame` to a unique temporary name beside `target`, then rename (atomic on POSIX):
    readers see the whole part or none of it."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, target)


@ray.remote(num_cpus=1)
def score_chunk(
    path: str, version: str, directory: str, chunk: int, ids: list[Any], texts: list[str]
) -> int:
    """Score one chunk into `part-<chunk>.parquet`; rows written."""
    attempts = Path(directory) / "attempts"
    (attempts / f"{chunk:05d}-{uuid.uuid4().hex[:8]}.pid").write_text(str(os.getpid()))
    classifier = _classifier(path, version)
    answers = []
    for start in range(0, len(texts), FORWARD_BATCH):
        answers += classifier.predict(texts[start : start + FORWARD_BATCH])
    frame = pd.DataFrame(
        {
            "id": ids,
            "label": [answer["label"] for answer in answers],
            "score": [answer["score"] for answer in answers],
            "model_version": [answer["model_version"] for answer in answers],
        }
    )
    _write_atomically(frame, Path(directory) / f"part-{chunk:05d}.parquet")
    return len(frame)


class BulkJob:
    """A submitted job: its id, directory and the Ray tasks scoring its chunks."""

    def __init__(self, job_id: str, directory: Path, chunks: int, refs: list[ray.ObjectRef]):
        self.job_id = job_id
        self.directory = directory
        self.chunks = chunks
        self.refs = refs

    def status(self) -> dict[str, Any]:
        """What a client polling the job id sees (read from the job's directory only)."""
        return job_status(self.directory)

    def wait(self, timeout_s: float = 600.0) -> BulkJob:
        """Block until every chunk is written; raise if a chunk failed past its retries."""
        ray.get(self.refs, timeout=timeout_s)
        return self

    def results(self) -> pd.DataFrame:
        """Every written part, concatenated."""
        return read_results(self.directory)

    def attempts(self) -> pd.DataFrame:
        """One row per task attempt: its chunk and the worker process that ran it."""
        rows = [
            {"chunk": int(file.name[:5]), "pid": int(file.read_text())}
            for file in sorted((self.directory / "attempts").glob("*.pid"))
        ]
        return pd.DataFrame(rows, columns=["chunk", "pid"])


def submit_job(
    texts: Sequence[str],
    ids: Sequence[Any],
    model_path: Path,
    version: str,
    root: Path,
    chunk_size: int = 256,
    max_retries: int = 3,
) -> BulkJob:
    """Split the texts into chunks and start one Ray task per chunk (each retried up to
    `max_retries` times if its worker dies); returns at once with the job."""
    if len(texts) != len(ids) or len(set(ids)) != len(ids):
        raise ValueError("need one unique id per text")
    if not texts:
        raise ValueError("a bulk job needs at least one text")
    job_id = uuid.uuid4().hex[:12]
    directory = Path(root) / job_id
    (directory / "attempts").mkdir(parents=True)
    starts = range(0, len(texts), chunk_size)
    manifest = {"job_id": job_id, "rows": len(texts), "chunks": len(starts), "version": version}
    temporary = directory / ".job.json.tmp"
    temporary.write_text(json.dumps(manifest))
    os.replace(temporary, directory / "job.json")
    task = score_chunk.options(max_retries=max_retries)
    refs = [
        task.remote(
            str(model_path),
            version,
            str(directory),
            chunk,
            list(ids[start : start + chunk_size]),
            list(texts[start : start + chunk_size]),
        )
        for chunk, start in enumerate(starts)
    ]
    return BulkJob(job_id, directory, len(starts), refs)


def job_status(directory: Path) -> dict[str, Any]:
    """Job id, chunks written out of all, and state (running or done), from its directory."""
    manifest = json.loads((Path(directory) / "job.json").read_text())
    written = len(list(Path(directory).glob("part-*.parquet")))
    state = "done" if written == manifest["chunks"] else "running"
    return manifest | {"written": written, "state": state}


def read_results(directory: Path) -> pd.DataFrame:
    """The job's rows from its finished parts (temporary files are never read)."""
    parts = sorted(Path(directory).glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)


def kill_worker_of(job: BulkJob, chunk: int, timeout_s: float = 60.0) -> int:
    """SIGKILL the worker process as soon as it starts on `chunk`; its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = sorted((job.directory / "attempts").glob(f"{chunk:05d}-*.pid"))
        if started and (pid_text := started[0].read_text()):
            pid = int(pid_text)
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.005)
    raise TimeoutError(f"no worker started chunk {chunk} within {timeout_s} s")
