"""One fixture per port, parameterised over every adapter of that port.

Each fixture yields a harness (``tests/contract/harness.py``): the adapter under test plus the
test-side controls the suite needs. To run a suite against a new adapter, add one
``pytest.param(HarnessClass, id="<adapter-id>")`` to the list of its port below (mark it
``pytest.mark.stack`` when it needs the real peers of ``scripts/stack``); nothing else changes.

Where adapters of a port promise different things, the suite is split, never skipped: every
provisioner passes the tests of ``cluster_provisioner_harness`` (over ``PROVISIONERS``); those
that create a cluster per project also pass those of ``creating_provisioner_harness`` (over
``CREATING_PROVISIONERS``), which a static cluster has no creation to show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from obp_workflow.adapters.fake.clock import FakeClock
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator
from obp_workflow.adapters.system.clock import SystemClock
from obp_workflow.adapters.system.event_publisher import LogEventPublisher
from obp_workflow.adapters.system.id_generator import UuidIdGenerator
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator
from tests.contract.harness import (
    T0,
    ClusterGatewayHarness,
    ClusterProvisionerHarness,
    CreatingProvisionerHarness,
    DataSynchronizerHarness,
    FakeClusterGatewayHarness,
    FakeClusterProvisionerHarness,
    FakeDataSynchronizerHarness,
    FakeInstanceOrchestratorHarness,
    FakeKnowledgeGraphHarness,
    FakeRunRepositoryHarness,
    FakeSecretStoreHarness,
    FakeTokenVerifierHarness,
    InstanceOrchestratorHarness,
    KnowledgeGraphHarness,
    RunRepositoryHarness,
    SecretStoreHarness,
    TokenVerifierHarness,
)
from tests.contract.harness_aws import (
    EcsInstanceOrchestratorHarness,
    SecretsManagerSecretStoreHarness,
)
from tests.contract.harness_keycloak import KeycloakTokenVerifierHarness
from tests.contract.harness_local import ProcessClusterGatewayHarness
from tests.contract.harness_local_graph import (
    LocalUploadSynchronizerHarness,
    SqliteKnowledgeGraphHarness,
)
from tests.contract.harness_local_instances import ProcessInstanceOrchestratorHarness
from tests.contract.harness_local_issuer import LocalIssuerTokenVerifierHarness
from tests.contract.harness_local_provisioner import StaticClusterProvisionerHarness
from tests.contract.harness_local_secrets import FileSecretStoreHarness
from tests.contract.harness_nexus import NexusKnowledgeGraphHarness
from tests.contract.harness_provisioner import HttpClusterProvisionerHarness
from tests.contract.harness_repositories import (
    DynamoRunRepositoryHarness,
    SqliteRunRepositoryHarness,
)
from tests.contract.harness_slurm import SlurmClusterGatewayHarness
from tests.contract.harness_sync import LustreHsmSynchronizerHarness, NexusUploadSynchronizerHarness

RUN_REPOSITORIES = [
    pytest.param(FakeRunRepositoryHarness, id="fake"),
    pytest.param(SqliteRunRepositoryHarness, id="sqlite"),
    pytest.param(DynamoRunRepositoryHarness, id="dynamodb"),
]
CLUSTER_GATEWAYS = [
    pytest.param(FakeClusterGatewayHarness, id="fake"),
    pytest.param(SlurmClusterGatewayHarness, id="ssh-slurm", marks=pytest.mark.stack),
    pytest.param(ProcessClusterGatewayHarness, id="local-process"),
]
# Those that create each project's cluster on request; then every provisioner.
CREATING_PROVISIONERS = [
    pytest.param(FakeClusterProvisionerHarness, id="fake"),
    pytest.param(HttpClusterProvisionerHarness, id="provisioner-http"),
]
PROVISIONERS = [
    *CREATING_PROVISIONERS,
    pytest.param(StaticClusterProvisionerHarness, id="local-static"),
]
SECRET_STORES = [
    pytest.param(FakeSecretStoreHarness, id="fake"),
    pytest.param(SecretsManagerSecretStoreHarness, id="secretsmanager"),
    pytest.param(FileSecretStoreHarness, id="local-secrets"),
]
INSTANCE_ORCHESTRATORS = [
    pytest.param(FakeInstanceOrchestratorHarness, id="fake"),
    pytest.param(EcsInstanceOrchestratorHarness, id="ecs"),
    pytest.param(ProcessInstanceOrchestratorHarness, id="local-instances"),
]
# The two ways out of a cluster, each in memory and for real.
DATA_SYNCHRONIZERS = [
    pytest.param(lambda: FakeDataSynchronizerHarness(lustre=True), id="fake-lustre"),
    pytest.param(lambda: FakeDataSynchronizerHarness(lustre=False), id="fake-upload"),
    pytest.param(LustreHsmSynchronizerHarness, id="lustre-hsm", marks=pytest.mark.stack),
    pytest.param(NexusUploadSynchronizerHarness, id="nexus-upload", marks=pytest.mark.stack),
    pytest.param(LocalUploadSynchronizerHarness, id="local-upload"),
]
KNOWLEDGE_GRAPHS = [
    pytest.param(FakeKnowledgeGraphHarness, id="fake"),
    pytest.param(NexusKnowledgeGraphHarness, id="nexus-http"),
    pytest.param(SqliteKnowledgeGraphHarness, id="local-graph"),
]
TOKEN_VERIFIERS = [
    pytest.param(FakeTokenVerifierHarness, id="fake"),
    pytest.param(KeycloakTokenVerifierHarness, id="keycloak"),
    pytest.param(LocalIssuerTokenVerifierHarness, id="local-issuer"),
]
CLOCKS = [
    pytest.param(lambda: FakeClock(T0), id="fake"),
    pytest.param(SystemClock, id="system"),
]
ID_GENERATORS = [
    pytest.param(FakeIdGenerator, id="fake"),
    pytest.param(UuidIdGenerator, id="uuid"),
]
EVENT_PUBLISHERS = [
    pytest.param(FakeEventPublisher, id="fake"),
    pytest.param(LogEventPublisher, id="log"),
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
def run_repository_harness(request: pytest.FixtureRequest) -> Iterator[RunRepositoryHarness]:
    yield from _harness(request)


@pytest.fixture(params=CLUSTER_GATEWAYS)
def cluster_gateway_harness(request: pytest.FixtureRequest) -> Iterator[ClusterGatewayHarness]:
    yield from _harness(request)


@pytest.fixture(params=PROVISIONERS)
def cluster_provisioner_harness(
    request: pytest.FixtureRequest,
) -> Iterator[ClusterProvisionerHarness]:
    yield from _harness(request)


@pytest.fixture(params=CREATING_PROVISIONERS)
def creating_provisioner_harness(
    request: pytest.FixtureRequest,
) -> Iterator[CreatingProvisionerHarness]:
    yield from _harness(request)


@pytest.fixture(params=SECRET_STORES)
def secret_store_harness(request: pytest.FixtureRequest) -> Iterator[SecretStoreHarness]:
    yield from _harness(request)


@pytest.fixture(params=INSTANCE_ORCHESTRATORS)
def instance_orchestrator_harness(
    request: pytest.FixtureRequest,
) -> Iterator[InstanceOrchestratorHarness]:
    yield from _harness(request)


@pytest.fixture(params=DATA_SYNCHRONIZERS)
def data_synchronizer_harness(request: pytest.FixtureRequest) -> Iterator[DataSynchronizerHarness]:
    yield from _harness(request)


@pytest.fixture(params=KNOWLEDGE_GRAPHS)
def knowledge_graph_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[], KnowledgeGraphHarness]]:
    """Builds harnesses of one adapter: a suite may need a second, fault-free graph to compare."""
    made: list[KnowledgeGraphHarness] = []

    def make() -> KnowledgeGraphHarness:
        made.append(request.param())
        return made[-1]

    try:
        yield make
    finally:
        for harness in made:
            harness.close()


@pytest.fixture
def knowledge_graph_harness(
    knowledge_graph_factory: Callable[[], KnowledgeGraphHarness],
) -> KnowledgeGraphHarness:
    return knowledge_graph_factory()


@pytest.fixture(params=TOKEN_VERIFIERS)
def token_verifier_harness(request: pytest.FixtureRequest) -> Iterator[TokenVerifierHarness]:
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
