"""The IdGenerator contract: fresh run ids matching RUN_ID, never twice."""

from __future__ import annotations

import threading

from obp_workflow.core.jobspec import RUN_ID
from obp_workflow.ports.system import IdGenerator

DRAWS = 10_000


def test_ids_match_run_id_and_are_unique_over_10000_draws(id_generator: IdGenerator) -> None:
    ids = [id_generator.new_run_id() for _ in range(DRAWS)]
    bad = [i for i in ids if not isinstance(i, str) or not RUN_ID.match(i)]
    assert bad == []
    assert len(set(ids)) == DRAWS


def test_ids_drawn_from_many_threads_are_unique(id_generator: IdGenerator) -> None:
    threads, each = 8, 500
    drawn: list[list[str]] = [[] for _ in range(threads)]
    together = threading.Barrier(threads)

    def draw(n: int) -> None:
        together.wait(timeout=10)
        drawn[n].extend(id_generator.new_run_id() for _ in range(each))

    pool = [threading.Thread(target=draw, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    everything = [i for ids in drawn for i in ids]
    assert len(everything) == threads * each
    assert len(set(everything)) == threads * each
