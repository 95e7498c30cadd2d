"""The Serve application as an import path (`llmlab.system.entrypoint:app`) for `serve run`,
`serve deploy` and KubeRay: the model and Redis come from the environment. Built for lab 12's
system (deploy/); no lab imports it."""

from __future__ import annotations

import os

from llmlab.serving.classifier import resolve_model
from llmlab.system.app import build_app

_path, _version = resolve_model(os.environ.get("LLMLAB_MODEL", "classifier@champion"))
app = build_app(_path, _version, redis_url=os.environ.get("LLMLAB_REDIS_URL") or None)
