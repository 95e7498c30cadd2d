"""The classifier service, one module per concern: loading, batching, state, metrics, schemas,
app, the subprocess manager and the load generator. `llmlab.serve` re-exports the public API."""
