"""Shared by the service tests: tiny models, a client that waits until the app is ready."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tiny_models import save_tiny_classifier

from llmlab.serve import free_port

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


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    """Poll /ready until 200 (models load in the background)."""
    deadline = time.monotonic() + timeout_s
    while client.get("/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready: {client.get('/health').json()}")
        time.sleep(0.01)


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
