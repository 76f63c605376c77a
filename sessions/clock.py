"""Timestamps: timezone-aware UTC datetimes and their integer-microsecond form."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def now_us() -> int:
    """The current time in integer microseconds since the Unix epoch."""
    return time.time_ns() // 1000


def to_us(moment: datetime) -> int:
    """Exact integer microseconds since the epoch of an aware datetime."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """The aware UTC datetime of integer microseconds since the epoch (exact)."""
    return _EPOCH + timedelta(microseconds=us)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; naive values are taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
