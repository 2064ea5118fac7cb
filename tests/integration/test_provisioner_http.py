"""HttpClusterProvisioner against the SigV4-checking provisioner server: what is specific to HTTP.

The port's behaviour is proven by the contract suite (id ``provisioner-http``); here: the exact
requests (paths, query order, signatures), the server's refusals, retries and their bounds, the
mapping of statuses, storage, keys and host keys, and the answers older provisioners give.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from botocore.credentials import Credentials
from botocore.session import Session as BotocoreSession

from obp_workflow.adapters.fake.secret_store import FakeSecretStore
from obp_workflow.adapters.provisioner.description import host_key_from_secrets, phase_of
from obp_workflow.adapters.provisioner.http import HttpClusterProvisioner
from obp_workflow.core.cluster import (
    AcceptNewHostKey,
    ClusterHandle,
    LustreStorage,
    ProvisioningPhase,
    SecretRef,
    SharedStorage,
)
from obp_workflow.core.errors import SecretNotFound, ServiceUnavailable
from obp_workflow.core.identity import ProjectRef
from tests.contract.harness import PROJECT_A, PROJECT_B
from tests.contract.harness_provisioner import (
    NEXUS_BUCKET,
    TEST_SETTINGS,
    HttpClusterProvisionerHarness,
    fake_host_key,
)
from tests.provisioner_server import (
    CREDENTIALS,
    INVALID_TOKEN,
    MISSING_TOKEN,
    PCLUSTER,
    REGION,
    SERVER_VERSION,
    SIGNATURE_MISMATCH,
    Lifecycle,
    sign,
)

P = ProvisioningPhase
A_IDS = f"project_id={PROJECT_A.project_id}&vlab_id={PROJECT_A.virtual_lab_id}"


@pytest.fixture
def h() -> Iterator[HttpClusterProvisionerHarness]:
    harness = HttpClusterProvisionerHarness()
    try:
        yield harness
    finally:
        harness.close()


def make(**options: object) -> HttpClusterProvisionerHarness:
    return HttpClusterProvisionerHarness(**options)  # type: ignore[arg-type]


def ready(h: HttpClusterProvisionerHarness, project: ProjectRef = PROJECT_A) -> ClusterHandle:
    h.provisioner.request(project)
    h.let_creation_finish(project)
    status = h.provisioner.describe(project)
    assert status.phase is P.READY, status.detail
    assert status.cluster is not None
    return status.cluster


class Sleeps:
    """Records the delays the adapter asks for, and sleeps them for real."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        time.sleep(seconds)


# ==================================================================== the requests


def test_query_parameters_are_sent_in_alphabetical_order(h: HttpClusterProvisionerHarness) -> None:
    h.provisioner.request(PROJECT_A)
    h.provisioner.describe(PROJECT_A)
    h.provisioner.delete(PROJECT_A)
    (post,) = h.server.requests_to("POST")
    assert post.query == f"include_lustre=true&{A_IDS}"
    assert {r.query for r in h.server.requests_to("GET")} == {A_IDS}
    assert [r.query for r in h.server.requests_to("DELETE")] == [A_IDS]


def test_the_tier_goes_between_the_ids_and_no_lustre_is_said_explicitly() -> None:
    settings = dataclasses.replace(TEST_SETTINGS, tier="debug", include_lustre=False)
    h = make(settings=settings)
    try:
        h.provisioner.request(PROJECT_A)
        (post,) = h.server.requests_to("POST")
        assert post.query == (
            f"include_lustre=false&project_id={PROJECT_A.project_id}&tier=debug"
            f"&vlab_id={PROJECT_A.virtual_lab_id}"
        )
    finally:
        h.close()


def test_every_request_is_signed_for_execute_api_in_the_region(
    h: HttpClusterProvisionerHarness,
) -> None:
    h.provisioner.request(PROJECT_A)
    for recorded in h.server.requests:
        auth = recorded.headers["Authorization"]
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={CREDENTIALS.access_key}/")
        assert f"/{REGION}/execute-api/aws4_request" in auth
        assert recorded.headers["X-Amz-Security-Token"] == CREDENTIALS.token
        assert recorded.status != 403


def test_a_base_url_with_a_stage_keeps_its_path(h: HttpClusterProvisionerHarness) -> None:
    adapter = HttpClusterProvisioner(
        h.server.url + "/production/",
        credentials=CREDENTIALS,
        region=REGION,
        settings=TEST_SETTINGS,
        host_key_for=fake_host_key,
    )
    try:
        with pytest.raises(ServiceUnavailable, match="Missing Authentication Token"):
            adapter.describe(PROJECT_A)
        assert h.server.requests[-1].path == "/production" + PCLUSTER
    finally:
        adapter.close()


def test_version(h: HttpClusterProvisionerHarness) -> None:
    assert h.http.version() == SERVER_VERSION


# ==================================================================== the server checks signatures


def _raw(method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, url, headers=headers, timeout=5)


def test_the_server_accepts_a_correct_signature(h: HttpClusterProvisionerHarness) -> None:
    url = f"{h.server.url}{PCLUSTER}?{A_IDS}"
    response = _raw("GET", url, sign("GET", url))
    assert response.status_code == 404, response.text  # signed right; no such cluster
    assert "does not exist" in response.json()["message"]


def test_the_server_refuses_a_tampered_request(h: HttpClusterProvisionerHarness) -> None:
    """Signed for project A, sent for project B: API Gateway's 403."""
    signed_url = f"{h.server.url}{PCLUSTER}?{A_IDS}"
    headers = sign("GET", signed_url)
    tampered = signed_url.replace(PROJECT_A.project_id, PROJECT_B.project_id)
    response = _raw("GET", tampered, headers)
    assert response.status_code == 403
    assert response.json() == {"message": SIGNATURE_MISMATCH}


def test_the_server_refuses_a_tampered_signature(h: HttpClusterProvisionerHarness) -> None:
    url = f"{h.server.url}{PCLUSTER}?{A_IDS}"
    headers = sign("GET", url)
    signature = headers["Authorization"][-64:]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    headers["Authorization"] = headers["Authorization"][:-64] + flipped
    response = _raw("GET", url, headers)
    assert response.status_code == 403
    assert response.json() == {"message": SIGNATURE_MISMATCH}


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", MISSING_TOKEN),
        ("other-secret", SIGNATURE_MISMATCH),
        ("other-key", INVALID_TOKEN),
        ("other-service", "Credential should be scoped to correct service: 'execute-api'."),
        ("stale", "Signature expired: "),
        ("future", "Signature not yet current: "),
    ],
)
def test_the_server_refuses_bad_missing_and_stale_signatures(
    h: HttpClusterProvisionerHarness, how: str, message: str
) -> None:
    url = f"{h.server.url}{PCLUSTER}?{A_IDS}"
    key, secret, token = CREDENTIALS.access_key, CREDENTIALS.secret_key, CREDENTIALS.token
    if how == "other-secret":
        secret = "x" * 40
    if how == "other-key":
        key = "AKIAOTHERKEY00000000"
    headers = sign(
        "GET",
        url,
        credentials=Credentials(key, secret, token),
        service="lambda" if how == "other-service" else "execute-api",
    )
    if how == "missing":
        headers = {}
    h.server.clock_skew_seconds = {"stale": 600, "future": -600}.get(how, 0)
    response = _raw("GET", url, headers)
    assert response.status_code == 403
    assert response.json()["message"].startswith(message)


def test_an_unknown_resource_is_missing_authentication_token(
    h: HttpClusterProvisionerHarness,
) -> None:
    url = f"{h.server.url}/hpc-provisioner/nothing"
    response = _raw("GET", url, sign("GET", url))
    assert (response.status_code, response.json()) == (403, {"message": MISSING_TOKEN})


def test_the_listing_without_ids_names_clusters_without_ids(
    h: HttpClusterProvisionerHarness,
) -> None:
    h.provisioner.request(PROJECT_A)
    url = f"{h.server.url}{PCLUSTER}"
    response = _raw("GET", url, sign("GET", url))
    assert response.status_code == 200
    (cluster,) = response.json()["clusters"]
    assert cluster["clusterName"] == f"pcluster-{PROJECT_A.virtual_lab_id}-{PROJECT_A.project_id}"
    assert "vlab_id" not in cluster
    assert "project_id" not in cluster


@pytest.mark.parametrize("how", ["other-secret", "stale"])
def test_refused_credentials_are_service_unavailable_and_not_retried(
    h: HttpClusterProvisionerHarness, how: str
) -> None:
    credentials = CREDENTIALS
    if how == "other-secret":
        credentials = Credentials(CREDENTIALS.access_key, "y" * 40, CREDENTIALS.token)
    else:
        h.server.clock_skew_seconds = 900  # the service's clock is 15 minutes late
    adapter = h.adapter(credentials=credentials)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            adapter.describe(PROJECT_A)
    finally:
        adapter.close()
    text = caught.value.message
    assert "the provisioner refused the service's credentials" in text
    assert "403" in text
    assert str(CREDENTIALS.token) not in text
    assert "y" * 40 not in text
    assert len(h.server.requests) == 1, "a refusal of the credentials is not retried"


# ==================================================================== retries


def test_500s_then_success_are_retried(h: HttpClusterProvisionerHarness) -> None:
    sleeps = Sleeps()
    adapter = h.adapter(sleep=sleeps)
    try:
        h.server.fail_next(2, 500, "Internal server error")
        assert adapter.describe(PROJECT_A).phase is P.NOT_FOUND
    finally:
        adapter.close()
    assert [r.status for r in h.server.requests] == [500, 500, 404]
    assert len(sleeps.delays) == 2
    assert all(0 < d <= TEST_SETTINGS.backoff_cap_seconds for d in sleeps.delays)


def test_a_retried_request_is_signed_anew(h: HttpClusterProvisionerHarness) -> None:
    adapter = h.adapter(sleep=lambda _s: time.sleep(1.05))  # a new second, a new X-Amz-Date
    try:
        h.server.fail_next(1, 502, "Bad Gateway")
        adapter.describe(PROJECT_A)
    finally:
        adapter.close()
    first, second = h.server.requests
    assert first.headers["X-Amz-Date"] != second.headers["X-Amz-Date"]
    assert second.status == 404


def test_429_honours_retry_after(h: HttpClusterProvisionerHarness) -> None:
    sleeps = Sleeps()
    adapter = h.adapter(sleep=sleeps)
    try:
        h.server.throttle_next(1, retry_after="1")
        started = time.monotonic()
        status = adapter.request(PROJECT_A)
        elapsed = time.monotonic() - started
    finally:
        adapter.close()
    assert status.phase is P.IN_PROGRESS
    assert sleeps.delays == [1.0]
    assert elapsed >= 1.0
    assert [r.status for r in h.server.requests_to("POST")] == [429, 200]
    assert h.creations() == 1


def test_a_retry_after_longer_than_the_cap_is_capped(h: HttpClusterProvisionerHarness) -> None:
    sleeps = Sleeps()
    capped = dataclasses.replace(TEST_SETTINGS, max_retry_after_seconds=0.2)
    adapter = h.adapter(capped, sleep=sleeps)
    try:
        h.server.throttle_next(1, retry_after="3600")
        h.server.throttle_next(1, retry_after="Wed, 21 Oct 2099 07:28:00 GMT")
        adapter.describe(PROJECT_A)
    finally:
        adapter.close()
    assert sleeps.delays == [0.2, 0.2], "seconds and HTTP dates alike"


def test_retries_are_bounded_and_end_in_service_unavailable(
    h: HttpClusterProvisionerHarness,
) -> None:
    h.server.fail_next(100, 500, "pcluster exploded")
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        h.provisioner.describe(PROJECT_A)
    assert time.monotonic() - started < 2
    assert len(h.server.requests) == TEST_SETTINGS.max_attempts
    assert "500: pcluster exploded" in caught.value.message
    assert f"after {TEST_SETTINGS.max_attempts} attempts" in caught.value.message
    assert str(PROJECT_A) in caught.value.message


def test_throttling_without_end_is_bounded_too(h: HttpClusterProvisionerHarness) -> None:
    h.server.throttle_next(100, retry_after="0")
    with pytest.raises(ServiceUnavailable, match="429: Too Many Requests"):
        h.provisioner.request(PROJECT_A)
    assert len(h.server.requests) == TEST_SETTINGS.max_attempts
    assert h.creations() == 0


def test_a_slow_reply_times_out_and_is_retried() -> None:
    settings = dataclasses.replace(TEST_SETTINGS, read_timeout=0.3)
    h = make(settings=settings)
    try:
        h.server.slow_next(1, seconds=1.0)
        status = h.provisioner.request(PROJECT_A)
        assert status.phase is P.IN_PROGRESS
        assert len(h.server.requests_to("POST")) == 2, "the POST was sent again"
        assert h.creations() == 1, "the repeated POST created nothing"
    finally:
        h.close()


def test_an_unreachable_provisioner_is_service_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = HttpClusterProvisioner(
        f"http://127.0.0.1:{port}",
        credentials=CREDENTIALS,
        region=REGION,
        settings=TEST_SETTINGS,
        host_key_for=fake_host_key,
    )
    try:
        with pytest.raises(ServiceUnavailable, match="ConnectError"):
            adapter.describe(PROJECT_A)
    finally:
        adapter.close()


def test_request_after_a_post_whose_describe_fails_is_in_progress(
    h: HttpClusterProvisionerHarness,
) -> None:
    """The POST went through; the GET after it did not: still asked for, not an error."""
    original = h.server.handle

    def fail_gets(method: str, target: str, headers: dict[str, str], body: bytes):  # type: ignore[no-untyped-def]
        if method == "GET":
            h.server.fail_next(1, 503, "Service Unavailable")
        return original(method, target, headers, body)

    h.server.handle = fail_gets  # type: ignore[method-assign]
    status = h.provisioner.request(PROJECT_A)
    assert status.phase is P.IN_PROGRESS
    assert status.detail.startswith("CREATE_REQUEST_RECEIVED (its description could not be read")
    assert h.creations() == 1


# ==================================================================== statuses


@pytest.mark.parametrize(
    "status",
    [
        "CREATE_REQUEST_RECEIVED",
        "CREATE_IN_PROGRESS",
        "UPDATE_IN_PROGRESS",
        "UPDATE_FAILED",
        "ROLLBACK_IN_PROGRESS",
        "SOMETHING_NEW_IN_PCLUSTER_4",
        "",
    ],
)
def test_unknown_and_transitional_statuses_are_in_progress_never_failed(
    h: HttpClusterProvisionerHarness, status: str
) -> None:
    h.provisioner.request(PROJECT_A)
    h.server.force_status(PROJECT_A.virtual_lab_id, PROJECT_A.project_id, status)
    described = h.provisioner.describe(PROJECT_A)
    assert described.phase is P.IN_PROGRESS
    assert described.cluster is None
    assert described.detail == status
    assert phase_of(status) is P.IN_PROGRESS


@pytest.mark.parametrize("status", ["CREATE_COMPLETE", "UPDATE_COMPLETE"])
def test_complete_statuses_are_ready(h: HttpClusterProvisionerHarness, status: str) -> None:
    h.provisioner.request(PROJECT_A)
    h.server.force_status(PROJECT_A.virtual_lab_id, PROJECT_A.project_id, status)
    described = h.provisioner.describe(PROJECT_A)
    assert described.phase is P.READY
    assert described.detail == status


@pytest.mark.parametrize(
    "status", ["CREATE_FAILED", "DELETE_IN_PROGRESS", "DELETE_FAILED", "DELETE_COMPLETE"]
)
def test_failed_and_deleting_statuses_are_failed_with_a_reason(
    h: HttpClusterProvisionerHarness, status: str
) -> None:
    h.provisioner.request(PROJECT_A)
    h.server.force_status(PROJECT_A.virtual_lab_id, PROJECT_A.project_id, status)
    described = h.provisioner.describe(PROJECT_A)
    assert described.phase is P.FAILED
    assert described.detail.startswith(status)
    assert len(described.detail) > len(status)


def test_a_failed_creation_reports_parallelclusters_failures(
    h: HttpClusterProvisionerHarness,
) -> None:
    h.fail_next_creation(PROJECT_A, "HeadNode c7i.48xlarge: InsufficientInstanceCapacity")
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    status = h.provisioner.describe(PROJECT_A)
    assert status.phase is P.FAILED
    assert status.detail == (
        "CREATE_FAILED: ClusterCreationFailure: HeadNode c7i.48xlarge: "
        "InsufficientInstanceCapacity; stack ROLLBACK_COMPLETE"
    )


def test_a_young_cluster_without_head_node_is_in_progress() -> None:
    h = make(lifecycle=Lifecycle(unseen_gets=0, young_gets=2, in_progress_gets=0))
    try:
        assert h.provisioner.request(PROJECT_A).phase is P.IN_PROGRESS
        young = h.provisioner.describe(PROJECT_A)
        assert (young.phase, young.cluster, young.detail) == (
            P.IN_PROGRESS,
            None,
            "CREATE_IN_PROGRESS",
        )
    finally:
        h.close()


def test_a_complete_cluster_without_head_node_is_not_ready(
    h: HttpClusterProvisionerHarness,
) -> None:
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    original = h.server._described

    def headless(stack, status, *, head):  # type: ignore[no-untyped-def]
        return original(stack, status, head=False)

    h.server._described = headless  # type: ignore[method-assign]
    status = h.provisioner.describe(PROJECT_A)
    assert (status.phase, status.cluster) == (P.IN_PROGRESS, None)
    assert status.detail == "CREATE_COMPLETE (no head node described yet)"


def test_creation_by_time(h: HttpClusterProvisionerHarness) -> None:
    h.server.lifecycle = Lifecycle(in_progress_seconds=0.4)
    h.provisioner.request(PROJECT_A)
    assert h.provisioner.describe(PROJECT_A).phase is P.IN_PROGRESS
    time.sleep(0.45)
    assert h.provisioner.describe(PROJECT_A).phase is P.READY


def test_a_404_right_after_our_post_is_in_progress_and_later_not_found() -> None:
    clock = [1000.0]
    h = make(lifecycle=Lifecycle(unseen_gets=3))
    adapter = h.adapter(monotonic=lambda: clock[0])
    try:
        assert adapter.request(PROJECT_A).detail.startswith("CREATE_REQUEST_RECEIVED")
        assert adapter.describe(PROJECT_A).phase is P.IN_PROGRESS
        clock[0] += TEST_SETTINGS.request_grace_seconds + 1
        assert adapter.describe(PROJECT_A).phase is P.NOT_FOUND
        other = h.adapter()  # another instance of the service never asked
        try:
            assert other.describe(PROJECT_B).phase is P.NOT_FOUND
        finally:
            other.close()
    finally:
        adapter.close()
        h.close()


def test_a_deletion_is_failed_while_in_progress_then_not_found() -> None:
    h = make(lifecycle=Lifecycle(unseen_gets=0, delete_gets=1))
    try:
        ready(h)
        h.provisioner.delete(PROJECT_A)
        deleting = h.provisioner.describe(PROJECT_A)
        assert deleting.phase is P.FAILED
        assert deleting.detail.startswith("DELETE_IN_PROGRESS")
        assert h.provisioner.describe(PROJECT_A).phase is P.NOT_FOUND
        h.provisioner.delete(PROJECT_A)  # gone already: not an error
    finally:
        h.close()


def test_a_description_of_another_project_is_never_ready(h: HttpClusterProvisionerHarness) -> None:
    ready(h)
    original = h.server._described

    def lying(stack, status, *, head):  # type: ignore[no-untyped-def]
        return {**original(stack, status, head=head), "project_id": PROJECT_B.project_id}

    h.server._described = lying  # type: ignore[method-assign]
    status = h.provisioner.describe(PROJECT_A)
    assert status.phase is P.UNKNOWN
    assert status.cluster is None
    assert PROJECT_B.project_id in status.detail


@pytest.mark.parametrize("bodies", ["json", "text"])
def test_not_found_and_500_messages_are_read_from_json_or_plain_text(bodies: str) -> None:
    h = make(error_bodies=bodies)
    try:
        missing = h.provisioner.describe(PROJECT_A)
        assert missing.phase is P.NOT_FOUND
        assert missing.detail.startswith("Cluster 'pcluster-")
        h.server.fail_next(100, 500, "<class 'botocore.exceptions.ClientError'>")
        with pytest.raises(ServiceUnavailable, match="500: <class 'botocore"):
            h.provisioner.describe(PROJECT_A)
    finally:
        h.close()


# ==================================================================== the handle


def test_a_lustre_cluster_has_lustre_storage_with_its_fsx_id(
    h: HttpClusterProvisionerHarness,
) -> None:
    handle = ready(h)
    assert isinstance(handle.storage, LustreStorage)
    assert handle.storage.fsx_id.startswith("fs-")
    described = _described(h, PROJECT_A)
    assert handle.storage == LustreStorage(
        described["clusterFsxId"], "/obi/data", "/project", NEXUS_BUCKET, ""
    )
    assert handle.runs_root == (
        f"/obi/data/project/{PROJECT_A.virtual_lab_id}/{PROJECT_A.project_id}/runs"
    )
    assert handle.storage.s3_key(handle.run_folder("r1") + "/out.h5") == (
        f"{PROJECT_A.virtual_lab_id}/{PROJECT_A.project_id}/runs/r1/out.h5"
    )


def test_a_cluster_without_lustre_has_shared_storage() -> None:
    h = make(settings=dataclasses.replace(TEST_SETTINGS, include_lustre=False))
    try:
        handle = ready(h)
        assert _described(h, PROJECT_A)["clusterFsxId"] is None
        assert handle.storage == SharedStorage("/sbo/home")
        assert handle.runs_root == "/sbo/home/sim/runs"
    finally:
        h.close()


def test_a_cluster_made_without_lustre_whatever_was_asked_has_shared_storage(
    h: HttpClusterProvisionerHarness,
) -> None:
    h.server.create_without_lustre(PROJECT_B.virtual_lab_id, PROJECT_B.project_id)
    assert isinstance(ready(h, PROJECT_A).storage, LustreStorage)
    handle = ready(h, PROJECT_B)
    assert [r.params for r in h.server.requests_to("POST")][-1][0] == ("include_lustre", "true")
    assert _described(h, PROJECT_B)["clusterFsxId"] is None
    assert handle.storage == SharedStorage("/sbo/home")


def test_the_deployments_head_node_user_and_key_secrets_are_answered() -> None:
    arns = {"n": 0}

    def key_arn(name: str) -> str:
        arns["n"] += 1
        return f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{name}-AbCdEf"

    h = make(ssh_user="obpsim", head_node_address="127.0.0.1", key_arn=key_arn)
    try:
        handle = ready(h)
        head = _described(h, PROJECT_A)["headNode"]
        assert head["privateIpAddress"] == head["publicIpAddress"] == "127.0.0.1"
        assert (handle.host, handle.ssh_user) == ("127.0.0.1", "obpsim")
        assert handle.user_key.ref.endswith(f":secret:{handle.name}_sim-AbCdEf")
        assert handle.admin_key.ref.endswith(f":secret:{handle.name}-AbCdEf")
        assert arns["n"] == 2
    finally:
        h.close()


def test_the_handle_reaches_the_head_node(h: HttpClusterProvisionerHarness) -> None:
    handle = ready(h)
    head = _described(h, PROJECT_A)["headNode"]
    assert handle.name == f"pcluster-{PROJECT_A.virtual_lab_id}-{PROJECT_A.project_id}"
    assert (handle.host, handle.port) == (head["privateIpAddress"], 22)
    assert (handle.ssh_user, handle.admin_user) == ("sim", "ec2-user")
    assert handle.host_key == fake_host_key(handle.name)
    public = h.adapter(dataclasses.replace(TEST_SETTINGS, address="public"))
    try:
        found = public.describe(PROJECT_A).cluster
        assert found is not None
        assert found.host == head["publicIpAddress"]
    finally:
        public.close()


def test_a_head_node_without_the_chosen_address_is_not_ready() -> None:
    h = make(public_ip=False)
    public = h.adapter(dataclasses.replace(TEST_SETTINGS, address="public"))
    try:
        ready(h)
        status = public.describe(PROJECT_A)
        assert status.phase is P.IN_PROGRESS
        assert "no public address" in status.detail
    finally:
        public.close()
        h.close()


@pytest.mark.parametrize(
    ("keys", "user_secret", "admin_secret"),
    [("current", "_sim", ""), ("transitional", "_sim", ""), ("single", "_sim", "_sim")],
)
def test_key_references_come_from_the_post_answer(
    keys: str, user_secret: str, admin_secret: str
) -> None:
    h = make(keys=keys)
    try:
        handle = ready(h)
        prefix = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{handle.name}"
        assert handle.user_key.ref.startswith(prefix + user_secret + "-")
        assert handle.admin_key.ref.startswith(prefix + admin_secret + "-")
        if keys == "single":
            assert handle.user_key == handle.admin_key, "the older answer: one key for both"
        else:
            assert handle.user_key != handle.admin_key
    finally:
        h.close()


def test_after_a_restart_keys_are_the_provisioners_secret_names(
    h: HttpClusterProvisionerHarness,
) -> None:
    before = ready(h)
    restarted = h.adapter()  # never POSTed: knows the cluster only from GET
    try:
        after = restarted.describe(PROJECT_A).cluster
    finally:
        restarted.close()
    assert after is not None
    assert (after.user_key.ref, after.admin_key.ref) == (f"{after.name}_sim", after.name)
    assert before.user_key.ref.split(":secret:")[1].startswith(after.user_key.ref + "-")
    assert dataclasses.replace(after, user_key=before.user_key, admin_key=before.admin_key) == (
        before
    ), "everything else is the same"


def test_without_key_templates_a_cluster_is_ready_only_once_requested(
    h: HttpClusterProvisionerHarness,
) -> None:
    ready(h)
    settings = dataclasses.replace(TEST_SETTINGS, user_key_template=None)
    restarted = h.adapter(settings)
    try:
        status = restarted.describe(PROJECT_A)
        assert status.phase is P.UNKNOWN
        assert "SSH key references are unknown" in status.detail
        assert restarted.request(PROJECT_A).phase is P.READY
    finally:
        restarted.close()


def test_without_a_host_key_the_cluster_is_never_ready(h: HttpClusterProvisionerHarness) -> None:
    store = FakeSecretStore({})
    adapter = h.adapter(host_key_for=host_key_from_secrets(store, policy="pinned"))
    try:
        ready(h)
        status = adapter.describe(PROJECT_A)
        assert status.phase is P.UNKNOWN
        assert status.cluster is None
        assert "host key is not available" in status.detail
        name = f"pcluster-{PROJECT_A.virtual_lab_id}-{PROJECT_A.project_id}"
        store.put(f"{name}-host-key", fake_host_key(name) + "\n")
        found = adapter.describe(PROJECT_A).cluster
        assert found is not None
        assert found.host_key == fake_host_key(name)
    finally:
        adapter.close()


def test_accept_new_makes_a_cluster_without_a_host_key_ready_to_pin_its_first_one(
    h: HttpClusterProvisionerHarness,
) -> None:
    store = FakeSecretStore({})
    host_key_for = host_key_from_secrets(store, "hk/{cluster_name}", policy="accept-new")
    adapter = h.adapter(host_key_for=host_key_for)
    try:
        ready(h)
        name = f"pcluster-{PROJECT_A.virtual_lab_id}-{PROJECT_A.project_id}"
        status = adapter.describe(PROJECT_A)
        assert status.phase is P.READY, status.detail
        assert status.cluster is not None
        assert status.cluster.host_key == AcceptNewHostKey(SecretRef(f"hk/{name}"))
        store.create(SecretRef(f"hk/{name}"), fake_host_key(name))  # pinned on first use
        found = adapter.describe(PROJECT_A).cluster
        assert found is not None
        assert found.host_key == fake_host_key(name)
    finally:
        adapter.close()


def test_accept_new_still_refuses_a_malformed_published_host_key(
    h: HttpClusterProvisionerHarness,
) -> None:
    store = FakeSecretStore({})
    adapter = h.adapter(host_key_for=host_key_from_secrets(store, policy="accept-new"))
    try:
        ready(h)
        name = f"pcluster-{PROJECT_A.virtual_lab_id}-{PROJECT_A.project_id}"
        store.put(f"{name}-host-key", "not-a-key")
        status = adapter.describe(PROJECT_A)
        assert status.phase is P.UNKNOWN
        assert "host key must be pinned" in status.detail
    finally:
        adapter.close()


def test_a_malformed_host_key_is_not_ready(h: HttpClusterProvisionerHarness) -> None:
    adapter = h.adapter(host_key_for=lambda _name: "not-a-key")
    try:
        ready(h)
        status = adapter.describe(PROJECT_A)
        assert status.phase is P.UNKNOWN
        assert "host key must be pinned" in status.detail
    finally:
        adapter.close()


def test_host_key_lookups_that_fail_transiently_raise(h: HttpClusterProvisionerHarness) -> None:
    def flaky(_name: str) -> str:
        raise ServiceUnavailable("Secrets Manager is down")

    adapter = h.adapter(host_key_for=flaky)
    try:
        ready(h)
        with pytest.raises(ServiceUnavailable, match="Secrets Manager is down"):
            adapter.describe(PROJECT_A)
    finally:
        adapter.close()


def test_secret_not_found_is_the_domain_error_the_host_key_lookup_raises() -> None:
    with pytest.raises(SecretNotFound):
        host_key_from_secrets(FakeSecretStore({}))("pcluster-x")


def test_the_host_key_lookup_trims_the_published_line_and_knows_only_two_policies() -> None:
    key = fake_host_key("pcluster-x")
    store = FakeSecretStore({"pcluster-x-host-key": key + " root@head\n"})
    for policy in ("pinned", "accept-new"):
        found = host_key_from_secrets(store, policy=policy)("pcluster-x")
        assert found == key + " root@head"
    with pytest.raises(ValueError, match="unknown host key policy 'trust-all'"):
        host_key_from_secrets(store, policy="trust-all")  # type: ignore[arg-type]


def _described(h: HttpClusterProvisionerHarness, project: ProjectRef) -> dict[str, Any]:
    query = f"project_id={quote(project.project_id)}&vlab_id={quote(project.virtual_lab_id)}"
    url = f"{h.server.url}{PCLUSTER}?{query}"
    response = _raw("GET", url, sign("GET", url))
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_an_explicit_deny_is_a_refusal_of_the_credentials(h: HttpClusterProvisionerHarness) -> None:
    denial = "User: arn:aws:sts::123456789012:assumed-role/wf/x is not authorized to perform"
    h.server.fail_next(1, 403, denial)
    with pytest.raises(ServiceUnavailable) as caught:
        h.provisioner.request(PROJECT_A)
    assert "the provisioner refused the service's credentials (403: User: arn:aws" in str(
        caught.value
    )
    assert h.creations() == 0


def test_credentials_and_region_from_a_botocore_session(h: HttpClusterProvisionerHarness) -> None:
    session = BotocoreSession()
    session.set_credentials(CREDENTIALS.access_key, CREDENTIALS.secret_key, CREDENTIALS.token)
    adapter = HttpClusterProvisioner.from_session(
        h.server.url,
        settings=TEST_SETTINGS,
        host_key_for=fake_host_key,
        session=session,
        region=REGION,
    )
    try:
        assert adapter.describe(PROJECT_A).phase is P.NOT_FOUND
        assert adapter.request(PROJECT_A).phase is P.IN_PROGRESS
    finally:
        adapter.close()


def test_one_adapter_serves_many_threads(h: HttpClusterProvisionerHarness) -> None:
    ready(h)
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _i: h.provisioner.describe(PROJECT_A), range(40)))
    assert {status.phase for status in found} == {P.READY}
    assert len({status.cluster for status in found}) == 1
