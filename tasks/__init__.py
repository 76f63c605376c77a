"""Celery tasks: thin, synchronous wrappers over `sessions/`."""
