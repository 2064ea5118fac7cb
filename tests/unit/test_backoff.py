from datetime import UTC, datetime

import pytest

from obp_workflow.core.backoff import backoff_ceiling, retry_after_seconds, retry_wait

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_ceiling(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_wait_asked_for_is_taken_as_it_is() -> None:
    assert retry_wait(3, 7.5, 0.5, 3.0, lambda low, high: pytest.fail("no draw")) == 7.5


def test_otherwise_the_wait_is_drawn_from_the_upper_half_of_the_ceiling() -> None:
    drawn: list[tuple[float, float]] = []

    def draw(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    assert retry_wait(3, None, 0.5, 3.0, draw) == 2.0
    assert drawn == [(1.0, 2.0)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("2", 2.0),
        ("0.25", 0.25),
        ("-4", 0.0),
        ("600", 60.0),
        ("Wed, 25 Nov 2026 12:00:30 GMT", 30.0),
        ("Wed, 25 Nov 2026 11:59:00 GMT", 0.0),
        ("soon", None),
    ],
    ids=["absent", "seconds", "fraction", "negative", "capped", "date", "past-date", "junk"],
)
def test_retry_after_reads_seconds_or_a_date_and_keeps_within_the_cap(
    raw: str | None, expected: float | None
) -> None:
    assert retry_after_seconds(raw, NOW, 60.0) == expected
