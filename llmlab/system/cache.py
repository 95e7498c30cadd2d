"""A Redis server for the labs (started on loopback, stopped after) and a prediction cache keyed
by (model version, sha256 of the text), so a promoted model never answers from old entries.
Built and used in lab 12."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from typing import Any

from llmlab.serving.manager import free_port

REDIS_MISSING = (
    "redis-server not found: install it with `make redis` or `sudo apt-get install redis-server`"
)


def cache_key(version: str, text: str) -> str:
    """The cache key of `text` answered by model `version`."""
    return f"llmlab:prediction:{version}:{hashlib.sha256(text.encode()).hexdigest()}"


class RedisServer:
    """`redis-server` on 127.0.0.1, a free port, no persistence, in a temp dir; `with` starts it,
    waits (bounded) until it answers PING, and stops it."""

    def __init__(self, binary: str = "redis-server", max_memory_mb: int = 64) -> None:
        found = shutil.which(binary)
        if found is None:
            raise FileNotFoundError(REDIS_MISSING)
        self.binary = found
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.max_memory_mb = max_memory_mb
        self.process: subprocess.Popen | None = None
        self.directory: tempfile.TemporaryDirectory | None = None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Launch the server and wait until it answers PING (at most `timeout_s`)."""
        import redis

        self.directory = tempfile.TemporaryDirectory(prefix="llmlab-redis-")
        command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", self.directory.name]
        command += ["--maxmemory", f"{self.max_memory_mb}mb", "--maxmemory-policy", "allkeys-lru"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read() if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {error}")
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    client.close()
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING in {timeout_s} s")

    def stop(self) -> None:
        """Terminate the server (SIGKILL after 5 s) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        if self.directory is not None:
            self.directory.cleanup()
            self.directory = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PredictionCache:
    """Predictions in Redis under `cache_key(version, text)`, with a time to live; every hit
    is checked to carry the version it was asked for."""

    def __init__(self, url: str, ttl_s: int = 3600) -> None:
        import redis.asyncio

        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=1.0)
        self.ttl_s = ttl_s

    async def get(self, version: str, text: str) -> dict[str, Any] | None:
        """The cached answer of model `version` for `text`, or None."""
        raw = await self.client.get(cache_key(version, text))
        if raw is None:
            return None
        answer = json.loads(raw)
        if answer["model_version"] != version:  # a key collision would be a bug: never serve it
            raise RuntimeError(f"cache entry for {version} holds {answer['model_version']}")
        return answer

    async def put(self, version: str, text: str, answer: dict[str, Any]) -> None:
        """Store `answer` (which must come from model `version`)."""
        if answer["model_version"] != version:
            raise ValueError(f"answer of {answer['model_version']} offered for {version}")
        await self.client.set(cache_key(version, text), json.dumps(answer), ex=self.ttl_s)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
