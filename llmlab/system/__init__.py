"""Lab 12's classifier as a system: Ray Serve deployments (`app`), a Redis prediction cache
(`cache`), asynchronous bulk scoring on Ray tasks (`bulk`), elasticity and the bill (`elastic`),
lab 12's view of the load-test client (`client`) and the deployable import path (`entrypoint`).
Built and used in lab 12; it reuses lab 10's `llmlab.serving.classifier` and `loadtest`."""
