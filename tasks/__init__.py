"""Prefect tasks: thin, idempotent wrappers of adamllm_core functions over dataset URIs."""
