"""Shared by the service tests: tiny models, a client that waits until the app is ready."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tiny_models import save_tiny_classifier
from transformers import AutoTokenizer, BertConfig, BertModel

from llmlab.embeddings import embed, load_embedding_model, model_version
from llmlab.serving.manager import free_port
from llmlab.text import pretrained_model_dir
from llmlab.vectorindex import VectorIndex

LABELS = ("greeting", "card_lost", "balance")
TEXTS = ["hello there", "I lost my card yesterday", "what is my balance", "bye", "card?"]
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def save_models(root: Path) -> dict[str, Path]:
    """Two versions of a tiny classifier, v1 and v2, that disagree."""
    return {
        name: save_tiny_classifier(root / name, seed, LABELS)
        for seed, name in enumerate(("v1", "v2"))
    }


SENTENCES = [
    "the picture is black and white",
    "no sound from the left speaker",
    "the remote control stopped working",
    "great value, works as described",
    "returned it after two days",
    "setup took five minutes",
    "the screen flickers at night",
    "customer support never called back",
]


def save_tiny_encoder(path: Path, seed: int) -> Path:
    """A one-layer random BERT encoder (no head) with the packaged MiniLM tokenizer."""
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(path)
    AutoTokenizer.from_pretrained(pretrained_model_dir()).save_pretrained(path)
    return path


def save_tiny_index(root: Path, name: str, seed: int) -> tuple[Path, Path]:
    """A tiny encoder saved as root/name and a flat index of SENTENCES it embedded."""
    encoder = save_tiny_encoder(root / name, seed)
    vectors = embed(SENTENCES, *load_embedding_model(encoder))
    rows = [{"text": t, "label": f"l{i % 3}", "source_id": i} for i, t in enumerate(SENTENCES)]
    index = VectorIndex.build(vectors, rows, model_version(encoder), kind="flat")
    return encoder, index.save(root / f"{name}_index")


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    """Poll /ready until 200 (models load in the background)."""
    deadline = time.monotonic() + timeout_s
    while client.get("/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready: {client.get('/health').json()}")
        time.sleep(0.01)


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds: how a test waits for another thread to reach a point
    (a fixed sleep is too short on a busy machine and wasted on an idle one)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def running(app: FastAPI) -> Iterator[TestClient]:
    """The app in-process, models loaded."""
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@dataclass
class LiveServer:
    """The app under uvicorn in a thread of this process: real HTTP, injectable faults."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextlib.contextmanager
def live(app: FastAPI) -> Iterator[LiveServer]:
    """Serve `app` on a free 127.0.0.1 port until the block ends; wait until it is ready."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        if time.monotonic() > deadline or not thread.is_alive():
            raise TimeoutError(f"server at {url} not ready")
        time.sleep(0.02)
    try:
        yield LiveServer(url, server, thread)
    finally:
        server.should_exit = True
        thread.join(30)
