"""The SecretStore contract: secrets come out only through ``reveal()``, and never in errors;
``create`` never overwrites, and of creations racing for a name exactly one wins."""

from __future__ import annotations

import logging
import threading

import pytest

from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import Conflict, SecretExists, SecretNotFound
from tests.contract.harness import SecretStoreHarness

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBQ7yVbX2cQm7Jz1vT0o4xR0sN9Uu9hY5y2aZ3rP0LhHwAAAJhzZWNyZXQ=\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
VALUES = {"pem": PEM, "short": "hunter2-Qx9", "unicode": "mot-de-passe-été-🙂"}


@pytest.mark.parametrize("kind", list(VALUES))
def test_get_returns_the_value_through_reveal(
    secret_store_harness: SecretStoreHarness, kind: str
) -> None:
    ref = secret_store_harness.put(f"pcluster-aaaaaaaa-{kind}", VALUES[kind])
    assert secret_store_harness.store.get(ref).reveal() == VALUES[kind]


@pytest.mark.parametrize("kind", list(VALUES))
def test_a_secret_never_shows_its_value(
    secret_store_harness: SecretStoreHarness, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ref = secret_store_harness.put(f"pcluster-aaaaaaaa-{kind}", VALUES[kind])
    secret = secret_store_harness.store.get(ref)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("contract").info("loaded %s %r", secret, secret)
    shown = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        "%s" % (secret,),  # noqa: UP031
        format(secret),
        repr([secret]),
        str({"key": secret}),
        caplog.text,
    ]
    for text in shown:
        assert VALUES[kind] not in text
        assert VALUES[kind][:8] not in text


def test_a_missing_secret_is_secret_not_found_naming_the_reference(
    secret_store_harness: SecretStoreHarness,
) -> None:
    h = secret_store_harness
    present = [h.put(f"pcluster-aaaaaaaa-{kind}", value) for kind, value in VALUES.items()]
    missing = SecretRef(present[0].ref + "-does-not-exist")
    with pytest.raises(SecretNotFound) as caught:
        h.store.get(missing)
    message = str(caught.value)
    assert missing.ref in message
    everything = " ".join([message, repr(caught.value), *map(str, caught.value.args)])
    for value in VALUES.values():
        assert value not in everything
        assert value[:8] not in everything


@pytest.mark.parametrize("kind", list(VALUES))
def test_a_created_secret_is_read_back_at_once(
    secret_store_harness: SecretStoreHarness, kind: str
) -> None:
    store = secret_store_harness.store
    ref = SecretRef(f"pcluster-aaaaaaaa-{kind}-host-key")
    with pytest.raises(SecretNotFound):
        store.get(ref)
    store.create(ref, VALUES[kind])
    assert store.get(ref).reveal() == VALUES[kind]


def test_create_never_overwrites_and_names_the_reference_not_a_value(
    secret_store_harness: SecretStoreHarness,
) -> None:
    store = secret_store_harness.store
    ref = SecretRef("pcluster-aaaaaaaa-host-key")
    store.create(ref, VALUES["pem"])
    assert store.get(ref).reveal() == VALUES["pem"]
    with pytest.raises(SecretExists) as caught:
        store.create(ref, VALUES["short"])
    assert isinstance(caught.value, Conflict)
    message = str(caught.value)
    assert ref.ref in message
    everything = " ".join([message, repr(caught.value), *map(str, caught.value.args)])
    for value in (VALUES["pem"], VALUES["short"]):
        assert value not in everything
        assert value[:8] not in everything
    assert store.get(ref).reveal() == VALUES["pem"]


def test_of_creations_racing_for_a_name_exactly_one_wins(
    secret_store_harness: SecretStoreHarness,
) -> None:
    store = secret_store_harness.store
    ref = SecretRef("pcluster-aaaaaaaa-raced-host-key")
    racers = 8
    start = threading.Barrier(racers)
    won: list[str] = []
    refused: list[BaseException] = []
    lock = threading.Lock()

    def create(value: str) -> None:
        start.wait()
        try:
            store.create(ref, value)
        except BaseException as exc:  # collected: the test looks at each one
            with lock:
                refused.append(exc)
        else:
            with lock:
                won.append(value)

    threads = [threading.Thread(target=create, args=(f"value-{i}",)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, won
    assert len(refused) == racers - 1
    assert all(isinstance(exc, SecretExists) for exc in refused), refused
    assert store.get(ref).reveal() == won[0]
