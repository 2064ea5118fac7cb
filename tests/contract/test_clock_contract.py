"""The Clock contract: timezone-aware UTC."""

from __future__ import annotations

from datetime import timedelta

from obp_workflow.ports.system import Clock


def test_now_is_timezone_aware_utc(clock: Clock) -> None:
    for _ in range(3):
        now = clock.now()
        assert now.tzinfo is not None
        assert now.utcoffset() == timedelta(0)


def test_now_does_not_go_back_between_two_reads(clock: Clock) -> None:
    first = clock.now()
    assert clock.now() >= first
