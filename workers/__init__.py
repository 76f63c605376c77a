"""The Celery application and its worker start-up hooks."""
