"""One fixture per port, parameterised over every adapter of that port.

Each fixture yields a harness (``tests/contract/harness.py``): the adapter under test plus the
test-side controls the suite needs. To run a suite against a new adapter, add one
``pytest.param(HarnessClass, id="<adapter-id>")`` to the list of its port below (mark it
``pytest.mark.stack`` when it needs the real peers of ``scripts/stack``); nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from obp_workflow.adapters.fake.system import ManualClock, RecordingPublisher, SequentialIds
from obp_workflow.adapters.local.system import LogPublisher, SystemClock, UuidIds
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator
from tests.contract.harness import (
    T0,
    ClusterHarness,
    FakeClusterHarness,
    FakeGraphHarness,
    FakeInstancesHarness,
    FakeProvisionerHarness,
    FakeRunRepositoryHarness,
    FakeSecretStoreHarness,
    FakeSyncHarness,
    FakeVerifierHarness,
    GraphHarness,
    InstancesHarness,
    ProvisionerHarness,
    RunRepositoryHarness,
    SecretStoreHarness,
    SyncHarness,
    VerifierHarness,
)
from tests.contract.harness_aws import EcsInstancesHarness, SecretsManagerHarness
from tests.contract.harness_keycloak import KeycloakVerifierHarness
from tests.contract.harness_nexus import NexusGraphHarness
from tests.contract.harness_provisioner import HttpProvisionerHarness
from tests.contract.harness_repositories import (
    DynamoRunRepositoryHarness,
    SqliteRunRepositoryHarness,
)
from tests.contract.harness_slurm import SlurmClusterHarness
from tests.contract.harness_sync import LustreHsmSyncHarness, NexusUploadSyncHarness

RUN_REPOSITORIES = [
    pytest.param(FakeRunRepositoryHarness, id="fake"),
    pytest.param(SqliteRunRepositoryHarness, id="sqlite"),
    pytest.param(DynamoRunRepositoryHarness, id="dynamodb"),
]
CLUSTER_GATEWAYS = [
    pytest.param(FakeClusterHarness, id="fake"),
    pytest.param(SlurmClusterHarness, id="ssh-slurm", marks=pytest.mark.stack),
]
PROVISIONERS = [
    pytest.param(FakeProvisionerHarness, id="fake"),
    pytest.param(HttpProvisionerHarness, id="provisioner-http"),
]
SECRET_STORES = [
    pytest.param(FakeSecretStoreHarness, id="fake"),
    pytest.param(SecretsManagerHarness, id="secretsmanager"),
]
INSTANCE_ORCHESTRATORS = [
    pytest.param(FakeInstancesHarness, id="fake"),
    pytest.param(EcsInstancesHarness, id="ecs"),
]
# The two ways out of a cluster, each in memory and for real.
DATA_SYNCHRONIZERS = [
    pytest.param(lambda: FakeSyncHarness(lustre=True), id="fake-lustre"),
    pytest.param(lambda: FakeSyncHarness(lustre=False), id="fake-upload"),
    pytest.param(LustreHsmSyncHarness, id="lustre-hsm", marks=pytest.mark.stack),
    pytest.param(NexusUploadSyncHarness, id="nexus-upload", marks=pytest.mark.stack),
]
# Later: nexus-http.
KNOWLEDGE_GRAPHS = [
    pytest.param(FakeGraphHarness, id="fake"),
    pytest.param(NexusGraphHarness, id="nexus-http"),
]
TOKEN_VERIFIERS = [
    pytest.param(FakeVerifierHarness, id="fake"),
    pytest.param(KeycloakVerifierHarness, id="keycloak"),
]
CLOCKS = [
    pytest.param(lambda: ManualClock(T0), id="manual"),
    pytest.param(SystemClock, id="system"),
]
ID_GENERATORS = [
    pytest.param(SequentialIds, id="sequential"),
    pytest.param(UuidIds, id="uuid"),
]
EVENT_PUBLISHERS = [
    pytest.param(RecordingPublisher, id="recording"),
    pytest.param(LogPublisher, id="log"),
]


def _harness(request: pytest.FixtureRequest) -> Iterator[Any]:
    # A harness class that names fixtures in ``FIXTURES`` (e.g. ``("moto",)``) gets them as
    # keyword arguments; every other harness is built with no arguments.
    needs = getattr(request.param, "FIXTURES", ())
    harness = request.param(**{name: request.getfixturevalue(name) for name in needs})
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(params=RUN_REPOSITORIES)
def repo_harness(request: pytest.FixtureRequest) -> Iterator[RunRepositoryHarness]:
    yield from _harness(request)


@pytest.fixture(params=CLUSTER_GATEWAYS)
def cluster_harness(request: pytest.FixtureRequest) -> Iterator[ClusterHarness]:
    yield from _harness(request)


@pytest.fixture(params=PROVISIONERS)
def provisioner_harness(request: pytest.FixtureRequest) -> Iterator[ProvisionerHarness]:
    yield from _harness(request)


@pytest.fixture(params=SECRET_STORES)
def secrets_harness(request: pytest.FixtureRequest) -> Iterator[SecretStoreHarness]:
    yield from _harness(request)


@pytest.fixture(params=INSTANCE_ORCHESTRATORS)
def instances_harness(request: pytest.FixtureRequest) -> Iterator[InstancesHarness]:
    yield from _harness(request)


@pytest.fixture(params=DATA_SYNCHRONIZERS)
def sync_harness(request: pytest.FixtureRequest) -> Iterator[SyncHarness]:
    yield from _harness(request)


@pytest.fixture(params=KNOWLEDGE_GRAPHS)
def graph_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], GraphHarness]]:
    """Builds harnesses of one adapter: a suite may need a second, fault-free graph to compare."""
    made: list[GraphHarness] = []

    def make() -> GraphHarness:
        made.append(request.param())
        return made[-1]

    try:
        yield make
    finally:
        for harness in made:
            harness.close()


@pytest.fixture
def graph_harness(graph_factory: Callable[[], GraphHarness]) -> GraphHarness:
    return graph_factory()


@pytest.fixture(params=TOKEN_VERIFIERS)
def verifier_harness(request: pytest.FixtureRequest) -> Iterator[VerifierHarness]:
    yield from _harness(request)


@pytest.fixture(params=CLOCKS)
def clock(request: pytest.FixtureRequest) -> Clock:
    return request.param()  # type: ignore[no-any-return]


@pytest.fixture(params=ID_GENERATORS)
def id_generator(request: pytest.FixtureRequest) -> IdGenerator:
    return request.param()  # type: ignore[no-any-return]


@pytest.fixture(params=EVENT_PUBLISHERS)
def publisher(request: pytest.FixtureRequest) -> EventPublisher:
    return request.param()  # type: ignore[no-any-return]
