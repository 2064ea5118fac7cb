"""The service's own token (Keycloak client credentials) against the Keycloak-shaped test issuer
over HTTP, and Nexus (the test server) accepting exactly the tokens that realm signed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from obp_workflow.adapters.fake.secret_store import FakeSecretStore
from obp_workflow.adapters.keycloak.service_token import ClientCredentials, ServiceTokenProvider
from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.core.sync import SyncedFile, SyncOutcome
from obp_workflow.ports.knowledge_graph import RunProvenance
from tests.contract.harness import PROJECT_A, T0, make_header
from tests.contract.harness_nexus import PUBLIC_BASE, nexus_settings
from tests.keycloak_issuer import KeycloakIssuer
from tests.nexus_server import NexusServer

CLIENT = "obp-workflow-service"
SECRET = "s3cr3t-client-value-7f0c"  # a test credential
SECRET_REF = SecretRef("obp/keycloak-client")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[KeycloakIssuer]:
    with KeycloakIssuer() as realm:
        realm.add_client(CLIENT, SECRET, lifetime=300)
        yield realm


def tokens_for(
    issuer: KeycloakIssuer,
    secret: str = SECRET,
    clock: Clock | None = None,
    client: str = CLIENT,
) -> tuple[ServiceTokenProvider, FakeSecretStore]:
    store = FakeSecretStore({SECRET_REF.ref: secret})
    credentials = ClientCredentials(
        ClientCredentials.token_url_of(issuer.issuer), client, SECRET_REF
    )
    return ServiceTokenProvider(credentials, store, clock=clock or Clock()), store


def test_the_token_is_the_service_accounts_and_is_reused_until_near_its_expiry(
    issuer: KeycloakIssuer,
) -> None:
    clock = Clock()
    tokens, _ = tokens_for(issuer, clock=clock)
    first = tokens()
    claims = issuer.check(first)
    assert claims is not None
    assert claims["azp"] == CLIENT
    assert claims["sub"] == issuer.service_account(CLIENT)
    assert claims["preferred_username"] == f"service-account-{CLIENT}"
    clock.now += 269  # lifetime 300 s, renewed 30 s before its end
    assert tokens() == first
    assert issuer.requests["token"] == 1
    clock.now += 1
    assert tokens() != first
    assert issuer.requests["token"] == 2


def test_concurrent_callers_share_one_fetch(issuer: KeycloakIssuer) -> None:
    tokens, _ = tokens_for(issuer)
    issuer.delay["token"] = 0.2
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(tokens())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8
    assert len(set(seen)) == 1
    assert issuer.requests["token"] == 1


def test_a_rotated_secret_is_read_at_the_next_fetch(issuer: KeycloakIssuer) -> None:
    tokens, store = tokens_for(issuer)
    tokens()
    issuer.add_client(CLIENT, "rotated-secret-9a1e")
    store.put(SECRET_REF.ref, "rotated-secret-9a1e")
    tokens.invalidate()
    assert issuer.check(tokens()) is not None


@pytest.mark.parametrize(
    ("client", "secret", "expected"),
    [
        pytest.param(CLIENT, "wrong-secret-4d2b", "invalid_client", id="wrong-secret"),
        pytest.param("no-such-client", SECRET, "invalid_client", id="unknown-client"),
    ],
)
def test_a_refused_client_is_named_without_its_secret(
    issuer: KeycloakIssuer,
    caplog: pytest.LogCaptureFixture,
    client: str,
    secret: str,
    expected: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens, _ = tokens_for(issuer, secret=secret, client=client)
    with pytest.raises(ServiceUnavailable) as caught:
        tokens()
    message = caught.value.message
    assert expected in message
    assert repr(client) in message
    assert secret not in message
    assert secret not in caplog.text
    assert caught.value.__cause__ is None


def test_a_realm_that_fails_or_is_gone_is_service_unavailable(issuer: KeycloakIssuer) -> None:
    tokens, _ = tokens_for(issuer)
    issuer.status["token"] = 503
    with pytest.raises(ServiceUnavailable, match="HTTP 503"):
        tokens()
    issuer.close()
    with pytest.raises(ServiceUnavailable, match="did not answer"):
        tokens()


def test_nexus_refusing_a_stale_token_gets_a_fresh_one_once(issuer: KeycloakIssuer) -> None:
    """The realm rotates its keys and drops the old one: Nexus refuses the cached token; the
    adapter asks for a new one and the write goes through."""

    def authenticate(token: str) -> str | None:
        claims = issuer.check(token)
        return None if claims is None else f"{PUBLIC_BASE}/realms/obp/users/{claims['sub']}"

    server = NexusServer(base_uri=PUBLIC_BASE, tokens=authenticate).start()
    try:
        settings = nexus_settings(server)
        server.create_project(*settings.project_for(PROJECT_A))
        tokens, _ = tokens_for(issuer)
        graph = NexusKnowledgeGraph(settings, tokens)
        header = make_header(PROJECT_A)
        provenance = RunProvenance(
            header=header,
            cluster_name="pcluster-a",
            job_id="77",
            started_at=T0,
            ended_at=T0 + timedelta(minutes=5),
            outcome=SyncOutcome("nexus-upload", (SyncedFile("a.dat", 3, "s3://elsewhere/a"),)),
        )
        graph.register(provenance)
        assert issuer.requests["token"] == 1
        issuer.rotate(keep_old=False)
        graph.register(provenance)
        assert issuer.requests["token"] == 2
        refused = [r for r in server.requests if r.status == 401]
        assert len(refused) == 1
        # A client that is refused outright is reported, not retried forever.
        issuer.clients.clear()
        issuer.rotate(keep_old=False)
        with pytest.raises(ServiceUnavailable, match="Keycloak refused the service's client"):
            graph.register(provenance)
        graph.close()
    finally:
        server.stop()
