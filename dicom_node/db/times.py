"""Time in the database: everything written is UTC.

SQLite hands datetimes back without a time zone; :func:`as_utc` is the one place that says a
naive datetime read from the database means UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import overload


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@overload
def as_utc(value: dt.datetime) -> dt.datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """``value`` with its time zone; a naive value (SQLite) is UTC. None stays None."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
