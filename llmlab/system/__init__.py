"""The classifier as a system: Ray Serve deployments (`app`), a Redis prediction cache
(`cache`) and asynchronous bulk scoring on Ray tasks (`bulk`)."""
