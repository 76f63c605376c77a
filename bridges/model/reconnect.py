"""How the realtime client retries opening a session after the server ended its last one."""

from __future__ import annotations

import logging

from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from bridges.errors import ModelRefused, ModelUnavailable


def reconnect_policy(
    attempts: int, backoff_s: float, max_backoff_s: float, logger: logging.Logger
) -> AsyncRetrying:
    """`attempts` tries: the first at once, the next after `backoff_s`, doubling each time up to
    `max_backoff_s`. A refusal (`ModelRefused`) is raised at once, never retried; when every try
    failed, the last `ModelUnavailable` is raised. Each retry is logged at WARNING."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff_s, max=max_backoff_s),
        retry=retry_if_exception_type(ModelUnavailable) & retry_if_not_exception_type(ModelRefused),
        before_sleep=before_sleep_log(logger, logging.WARNING),
        reraise=True,
    )
