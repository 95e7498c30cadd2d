"""Run `llmlab serve` in a subprocess on 127.0.0.1: start, wait until ready, stop. Built in lab
10; lab 11's pipeline (its serve check), lab 12 (lab 10's service as the baseline) and lab 15
(/similar) start the service with it, and lab 14's `GenerationServer` extends it."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time

from llmlab.config import build_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so no server outlives a crashed
    notebook kernel."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class BackgroundServer:
    """`llmlab serve --model MODEL OPTIONS` in a subprocess on 127.0.0.1.

    `start()` returns at once (start several, then wait for each); `with` starts and waits."""

    def __init__(self, model: str, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = build_dir() / "serving" / f"server-{self.port}.log"
        self.command = [sys.executable, "-m", "llmlab.cli", "serve", "--model", model]
        self.command += ["--host", "127.0.0.1", "--port", str(self.port), *options]
        self.process: subprocess.Popen | None = None

    def start(self) -> BackgroundServer:
        """Launch the server process (output goes to `self.log`)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as output:
            self.process = subprocess.Popen(
                self.command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> str:
        """Poll GET /ready until 200; fail with the server's log if it exits or takes too long."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-2000:]
                raise RuntimeError(f"server exited with code {self.process.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=1.0).status_code == 200:
                    return self.url
            time.sleep(0.1)
        raise TimeoutError(f"server at {self.url} not ready after {timeout_s:g} s; log: {self.log}")

    def stop(self) -> None:
        """SIGTERM (uvicorn finishes requests in flight), SIGKILL if that takes over 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> BackgroundServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
