"""Scripted faults for the fakes: fail before an operation, or do it and lose the reply."""

from __future__ import annotations

from collections import defaultdict, deque


class Faults:
    """Queues of faults per operation name.

    ``fail_next(op, error)``: the next call of ``op`` raises ``error`` and does nothing.
    ``lose_reply_next(op, error)``: the next call of ``op`` does its work, then raises ``error``
    (the caller cannot tell whether it happened).
    """

    def __init__(self) -> None:
        self._before: dict[str, deque[Exception]] = defaultdict(deque)
        self._after: dict[str, deque[Exception]] = defaultdict(deque)
        self.calls: dict[str, int] = defaultdict(int)

    def fail_next(self, op: str, error: Exception, times: int = 1) -> None:
        self._before[op].extend([error] * times)

    def lose_reply_next(self, op: str, error: Exception, times: int = 1) -> None:
        self._after[op].extend([error] * times)

    def clear(self) -> None:
        self._before.clear()
        self._after.clear()

    def before(self, op: str) -> None:
        self.calls[op] += 1
        if self._before[op]:
            raise self._before[op].popleft()

    def after(self, op: str) -> None:
        if self._after[op]:
            raise self._after[op].popleft()
