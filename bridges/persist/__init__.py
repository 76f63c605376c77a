"""Persistence: the persister that hands state changes to the task queue (the only door from
the bridges to `tasks/`), and its wiring to Celery or the in-process executor."""
