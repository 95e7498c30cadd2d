"""The service's contract, checked: schemathesis, every check, against `llmlab serve` running.

Usage: python tools/contract.py OUT_DIR ST_PROGRAM [extra `st run` options]

Lab 10's service serves two tiny classifiers (champion and challenger, so every admin route can
succeed) and lab 15's `/similar` over a tiny index, with an admin token; schemathesis reads the
OpenAPI schema the service publishes and sends schema-valid and schema-violating requests to every
route, authenticated, checking that each status code, content type, header and body the service
answers is one the schema describes. It
runs from its own environment (tools/contract-requirements.txt), not the lock's.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny models the service tests use

# What schemathesis runs: every check, its seed fixed so a CI failure replays; examples per route
# sized so the stage stays within two minutes on two cores.
ST_OPTIONS = ["--checks", "all", "--seed", "20261207", "--max-examples", "60", "--workers", "2"]


def main(out: Path, st: str, extra: list[str]) -> int:
    """Serve the tiny models, run `st run` against them; its exit code is ours."""
    from serving_helpers import save_models, save_tiny_index

    from llmlab.serving.manager import BackgroundServer

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["LLMLAB_BUILD_DIR"] = str(out / "build")
    token = secrets.token_hex(16)
    os.environ["LLMLAB_ADMIN_TOKEN"] = token  # the server inherits it
    models = save_models(out / "models")
    encoder, index = save_tiny_index(out / "models", "encoder", 0)  # lab 15's /similar too
    server = BackgroundServer(
        str(models["v1"]),
        *("--challenger", str(models["v2"]), "--index", str(index)),
        *("--embedding-model", str(encoder)),
    )
    with server:
        print(f"contract: service ready at {server.url} in {time.monotonic() - started:.1f} s")
        command = [st, "run", f"{server.url}/openapi.json", *ST_OPTIONS, "--no-color"]
        command += ["--header", f"Authorization: Bearer {token}", "--generation-database", "none"]
        command += ["--report", "junit", "--report-dir", str(out / "report"), *extra]
        code = subprocess.run(command, cwd=out).returncode
    elapsed = time.monotonic() - started
    print(f"contract: st exit code {code}, {elapsed:.1f} s in all; service log {server.log}")
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
