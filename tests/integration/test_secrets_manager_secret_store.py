"""SecretsManagerSecretStore beyond the SecretStore contract: its cache (also after a
creation), and its errors."""

from __future__ import annotations

import logging

import pytest

from obp_workflow.adapters.aws.secrets import SecretsManagerSecretStore
from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import SecretExists, SecretNotFound, ServiceUnavailable
from tests.contract.harness_aws import SecretsManagerSecretStoreHarness, aws_client

VALUE = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH"
ROTATED = "-----BEGIN OPENSSH PRIVATE KEY-----\nROTATEDrZXktdjEAAAAAAAA\n-----END OPENSSH"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_serves_within_the_ttl_and_refetches_after() -> None:
    clock = Clock()
    h = SecretsManagerSecretStoreHarness(ttl_seconds=300, clock=clock)
    ref = h.put("pcluster-aaaaaaaa-user", VALUE)

    assert h.store.get(ref).reveal() == VALUE
    assert h.gets() == 1
    h.client.put_secret_value(SecretId=ref.ref, SecretString=ROTATED)  # a rotation
    clock.now += 299
    assert h.store.get(ref).reveal() == VALUE  # from the cache, no call
    assert h.gets() == 1
    clock.now += 1
    assert h.store.get(ref).reveal() == ROTATED  # expired: asked again
    assert h.gets() == 2
    assert h.store.get(ref).reveal() == ROTATED
    assert h.gets() == 2


def test_each_reference_has_its_own_entry_and_misses_are_not_cached() -> None:
    clock = Clock()
    h = SecretsManagerSecretStoreHarness(ttl_seconds=300, clock=clock)
    user = h.put("pcluster-aaaaaaaa-user", VALUE)
    missing = SecretRef("pcluster-aaaaaaaa-admin")
    with pytest.raises(SecretNotFound):
        h.store.get(missing)
    admin = h.put("pcluster-aaaaaaaa-admin", ROTATED)  # created by the provisioner meanwhile
    assert h.store.get(missing).reveal() == ROTATED  # by name, as created
    assert h.store.get(admin).reveal() == ROTATED  # by ARN: another reference, another entry
    assert h.store.get(user).reveal() == VALUE
    assert h.gets() == 4


def test_a_ttl_of_zero_disables_the_cache() -> None:
    h = SecretsManagerSecretStoreHarness(ttl_seconds=0)
    ref = h.put("pcluster-aaaaaaaa-user", VALUE)
    for _ in range(3):
        assert h.store.get(ref).reveal() == VALUE
    assert h.gets() == 3


def test_other_errors_are_service_unavailable_naming_the_reference_not_the_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = SecretsManagerSecretStoreHarness()
    ref = h.put("pcluster-aaaaaaaa-user", VALUE)
    h.client.delete_secret(SecretId=ref.ref, RecoveryWindowInDays=7)  # scheduled for deletion
    with caplog.at_level(logging.DEBUG), pytest.raises(ServiceUnavailable) as caught:
        h.store.get(ref)
    assert ref.ref in str(caught.value)
    cut = SecretsManagerSecretStore(aws_client("secretsmanager", "http://127.0.0.1:9"))
    with pytest.raises(ServiceUnavailable) as unreachable:
        cut.get(ref)
    assert ref.ref in str(unreachable.value)
    for error in (caught.value, unreachable.value):
        assert error.__cause__ is None
        assert error.__context__ is None  # nothing the error replaced is kept
        shown = " ".join([str(error), repr(error), caplog.text])
        assert VALUE not in shown
        assert "b3BlbnNz" not in shown


def test_a_binary_secret_is_read_as_utf8_text_or_refused_without_its_bytes() -> None:
    h = SecretsManagerSecretStoreHarness()
    text = h.client.create_secret(Name="as-bytes", SecretBinary=VALUE.encode())["ARN"]
    assert h.store.get(SecretRef(text)).reveal() == VALUE
    raw = b"\xff\xfe" + VALUE.encode()
    binary = h.client.create_secret(Name="not-text", SecretBinary=raw)["ARN"]
    with pytest.raises(ServiceUnavailable, match="binary and not UTF-8") as caught:
        h.store.get(SecretRef(binary))
    assert caught.value.__context__ is None
    assert "b3BlbnNz" not in str(caught.value)


def test_the_store_shows_no_value() -> None:
    h = SecretsManagerSecretStoreHarness()
    ref = h.put("pcluster-aaaaaaaa-user", VALUE)
    h.store.get(ref)
    assert "b3BlbnNz" not in repr(h.store)
    assert "b3BlbnNz" not in str(vars(h.store))


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyPinnedOnFirstUse000000000000000000"
OTHER_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAnotherHostKey0000000000000000000000000"


def test_a_created_secret_is_served_from_the_cache_without_a_call() -> None:
    clock = Clock()
    h = SecretsManagerSecretStoreHarness(ttl_seconds=300, clock=clock)
    ref = SecretRef("pcluster-aaaaaaaa-host-key")
    h.store.create(ref, HOST_KEY)
    assert h.store.get(ref).reveal() == HOST_KEY
    assert h.gets() == 0
    stored = h.client.get_secret_value(SecretId=ref.ref)
    assert stored["SecretString"] == HOST_KEY
    clock.now += 300
    assert h.store.get(ref).reveal() == HOST_KEY  # expired: asked
    assert h.gets() == 2  # the harness's own look above, and this one


def test_a_refused_creation_drops_the_cached_copy_so_the_stored_value_is_read() -> None:
    clock = Clock()
    h = SecretsManagerSecretStoreHarness(ttl_seconds=300, clock=clock)
    ref = SecretRef("pcluster-aaaaaaaa-host-key")
    h.put(ref.ref, HOST_KEY)
    assert h.store.get(ref).reveal() == HOST_KEY  # cached
    h.client.put_secret_value(SecretId=ref.ref, SecretString=OTHER_HOST_KEY)  # an operator
    with pytest.raises(SecretExists, match="pcluster-aaaaaaaa-host-key exists already"):
        h.store.create(ref, HOST_KEY)
    assert h.store.get(ref).reveal() == OTHER_HOST_KEY  # what is stored, not the cached copy
    assert h.gets() == 2


def test_a_creation_that_cannot_reach_aws_is_service_unavailable_without_the_value() -> None:
    ref = SecretRef("pcluster-aaaaaaaa-host-key")
    cut = SecretsManagerSecretStore(aws_client("secretsmanager", "http://127.0.0.1:9"))
    with pytest.raises(ServiceUnavailable, match="unreachable while creating") as caught:
        cut.create(ref, VALUE)
    error = caught.value
    assert ref.ref in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None
    assert "b3BlbnNz" not in " ".join([str(error), repr(error)])
