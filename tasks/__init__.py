"""Prefect tasks: thin wrappers over pipeline_lib that add retries, caching, tags and artifacts."""
