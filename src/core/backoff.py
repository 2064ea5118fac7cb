"""How long to wait before trying an outside service again (the randomness stays outside)."""

from __future__ import annotations


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest wait before retry number ``attempt`` (1, 2, ...): ``base`` doubling up to
    ``cap``. Callers draw the actual wait below it (jitter), so that clients spread out."""
    return min(cap, base * 2.0 ** (attempt - 1))
