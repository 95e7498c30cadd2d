"""`llmlab lab` serves the labs: listed through the contents API, runnable in its kernels, and
rendered with MyST (jupyterlab-myst) in a real browser, solutions folded."""

from __future__ import annotations

import json
import os
import shutil
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
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


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
    settings = tmp_path_factory.mktemp("lab-settings")  # no user settings leak into the test
    # Every cell rendered at once (no windowing), so a lab's last cell is in the page.
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "LLMLAB_PROFILE": "smoke"}
    env |= {"LLMLAB_BUILD_DIR": str(build), "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    env |= {"JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("lab-workspaces"))}
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


def test_solutions_render_folded_in_jupyterlab(server):
    """jupyterlab-myst renders a lab's `{admonition} Solution` dropdown as a closed <details>."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    lab = lab_paths()[0]
    markdown = [
        c.source for c in nbformat.read(lab, as_version=4).cells if c.cell_type == "markdown"
    ]
    solutions = sum(source.count("{admonition} Solution") for source in markdown)
    assert solutions, f"{lab.name} has no solution to check"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{server}/lab/tree/{lab.name}?token={TOKEN}", wait_until="domcontentloaded")
        folded = page.locator(".jp-MarkdownCell details").filter(has_text="Solution")
        # Without jupyterlab-myst a solution is a code block, and no <details> ever appears.
        expect(folded).to_have_count(solutions, timeout=120_000)  # slow on a busy machine
        first = folded.first
        body = first.locator(":scope > :not(summary)").first
        assert first.evaluate("d => d.open") is False, "a solution is unfolded on opening"
        expect(body).to_be_hidden()
        first.locator("summary").click()
        expect(body).to_be_visible()
        raw = page.locator(".jp-MarkdownCell .jp-RenderedMarkdown").filter(has_text="{admonition}")
        assert not raw.count(), "a directive shows as raw MyST text"
        assert not errors, errors
        browser.close()
