"""Shared test settings: hypothesis profiles (a smaller one in CI, never a skip)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.moto_server import MotoServer, start_moto

settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The service's default family is the one-machine ``local`` one, with state in the user's
# home: tests choose their family explicitly, and the in-memory one unless they say otherwise
# (subprocesses inherit it); a test of the local family gives it its own OBP_HOME.
os.environ.setdefault("OBP_ADAPTERS", "fake")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real moto server on loopback for the whole session (see tests/moto_server.py)."""
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied before the test."""
    moto_server.reset()
    return moto_server


@pytest.fixture(autouse=True)
def _service_log_level_restored() -> Iterator[None]:
    """Ways in run in-process by tests (the command line, the Lambdas) apply ``OBP_LOG_LEVEL``
    to the service's logger: each test starts from the level the session had."""
    logger = logging.getLogger("obp_workflow")
    before = logger.level
    try:
        yield
    finally:
        logger.setLevel(before)
