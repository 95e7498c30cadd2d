"""Lab 10's classifier service (and lab 14's generation service), one module per concern:
`classifier` (loading and checking a model), `batching`, `state`, `metrics`, `schemas`, the
routers `predict`, `probes`, `admin`, `similar`, `errors`, the `app` that assembles them, the
subprocess `manager`, and `loadtest`, the one HTTP load-test client. Import from the module that
owns a name (`from llmlab.serving.app import create_app`): this file re-exports nothing, so
importing one module (lab 12's `system` takes `classifier`) never loads FastAPI or the rest."""
