"""How long to wait before trying an outside service again (the clock and the randomness stay
outside: callers pass the current time and their random draw)."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest wait before retry number ``attempt`` (1, 2, ...): ``base`` doubling up to
    ``cap``. Callers draw the actual wait below it (jitter), so that clients spread out."""
    return min(cap, base * 2.0 ** (attempt - 1))


def retry_wait(
    attempt: int,
    asked: float | None,
    base: float,
    cap: float,
    draw: Callable[[float, float], float],
) -> float:
    """The wait before retry number ``attempt``: what the service ``asked`` for (Retry-After),
    else a draw between half the backoff ceiling and the ceiling."""
    if asked is not None:
        return asked
    ceiling = backoff_ceiling(attempt, base, cap)
    return draw(ceiling / 2, ceiling)


def retry_after_seconds(raw: str | None, now: datetime, cap: float) -> float | None:
    """The delay a ``Retry-After`` header asks for (seconds, or an HTTP date after ``now``),
    between 0 and ``cap``; None when absent or unreadable."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    return max(0.0, min(cap, seconds))
