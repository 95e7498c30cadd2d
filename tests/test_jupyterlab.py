"""`llmlab lab` serves the labs: listed through the contents API and runnable in its kernels."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import nbformat
import pytest
import websocket

from llmlab.cli import lab_paths

TOKEN = uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, path: str, method: str = "GET", body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}{path}", data=data, method=method, headers={"Authorization": f"token {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    build = tmp_path_factory.mktemp("build")  # a build dir of the smoke profile's own
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "LLMLAB_PROFILE": "smoke"}
    env |= {"LLMLAB_BUILD_DIR": str(build)}
    process = subprocess.Popen(
        [sys.executable, "-m", "llmlab.cli", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={TOKEN}", "--ServerApp.port_retries=0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            api(base, "/api/status")
            break
        except OSError:
            assert process.poll() is None, "jupyter lab exited during start-up"
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("jupyter lab did not answer within 60 s")
    yield base
    process.terminate()
    process.wait(timeout=20)
    with pytest.raises(OSError):  # `llmlab lab` is the server: stopping it leaves none behind
        api(base, "/api/status")


def test_contents_api_lists_every_lab(server):
    listed = {item["name"] for item in api(server, "/api/contents")["content"]}
    assert {path.name for path in lab_paths()} <= listed


def run_cell(channel: websocket.WebSocket, session: str, code: str) -> tuple[str, list[str]]:
    """Execute `code` in the kernel; return the reply status and any error tracebacks."""
    msg_id = uuid.uuid4().hex
    channel.send(json.dumps({
        "header": {"msg_id": msg_id, "session": session, "username": "test",
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))  # fmt: skip
    errors = []
    while True:
        message = json.loads(channel.recv())
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "error":
            errors.append("\n".join(message["content"]["traceback"]))
        if message["channel"] == "shell" and message["msg_type"] == "execute_reply":
            return message["content"]["status"], errors


def test_first_lab_runs_in_a_kernel_of_the_server(server):
    kernel = api(server, "/api/kernels", method="POST", body={"name": "python3"})
    ws_url = server.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
    channel = websocket.create_connection(
        ws_url, header=[f"Authorization: token {TOKEN}"], timeout=300
    )
    session = uuid.uuid4().hex
    try:
        run_cell(channel, session, f"import os; os.chdir({str(lab_paths()[0].parent)!r})")
        cells = nbformat.read(lab_paths()[0], as_version=4).cells
        for number, cell in enumerate(c for c in cells if c.cell_type == "code"):
            status, errors = run_cell(channel, session, cell.source)
            assert status == "ok", f"code cell {number} failed:\n{''.join(errors)}"
    finally:
        channel.close()
        api(server, f"/api/kernels/{kernel['id']}", method="DELETE")
