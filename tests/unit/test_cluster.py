"""The cluster handle: what it accepts, which key acts, where outputs land in S3."""

from __future__ import annotations

import pytest

from obp_workflow.core.cluster import (
    AcceptNewHostKey,
    ClusterHandle,
    KeyRole,
    LustreStorage,
    ProvisioningPhase,
    ProvisioningStatus,
    SecretRef,
)

from .factories import cluster


@pytest.mark.parametrize(
    "changes",
    [
        {"name": ""},
        {"name": "-cluster"},
        {"name": "a b"},
        {"name": "c" * 129},
        {"name": "pcluster\n"},
        {"runs_root": "relative/runs"},
        {"runs_root": "/home/sim/../../etc"},
        {"runs_root": "/home/sim/runs dir"},
        {"runs_root": "/home/sim/$(id)"},
        {"runs_root": "/home/sim/runs\n"},
        {"port": 0},
        {"port": 65536},
        {"host_key": ""},
        {"host_key": "ssh-ed25519"},
    ],
    ids=repr,
)
def test_an_unusable_cluster_handle_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"invalid|host key"):
        cluster(**changes)


def test_a_handle_may_accept_its_host_key_on_first_use_pinning_it_in_a_named_secret() -> None:
    pin = AcceptNewHostKey(SecretRef("pcluster-x-host-key"))
    assert cluster(host_key=pin).host_key == pin
    with pytest.raises(ValueError, match="secret to pin it in"):
        AcceptNewHostKey(SecretRef(" "))


def test_the_user_key_runs_jobs_and_the_admin_key_the_elevated_ones() -> None:
    handle = cluster(ssh_user="sim", admin_user="sim-admin")

    assert handle.key_for(KeyRole.USER) == handle.user_key
    assert handle.key_for(KeyRole.ADMIN) == handle.admin_key
    assert handle.user_key != handle.admin_key
    assert (handle.user_for(KeyRole.USER), handle.user_for(KeyRole.ADMIN)) == ("sim", "sim-admin")


def test_the_admin_falls_back_to_the_ssh_user() -> None:
    assert cluster(admin_user=None).user_for(KeyRole.ADMIN) == cluster().ssh_user


def test_the_run_folder_is_under_the_runs_root() -> None:
    assert cluster(runs_root="/home/sim/runs").run_folder("run-1234abcd") == (
        "/home/sim/runs/run-1234abcd"
    )


@pytest.mark.parametrize(
    ("mount", "dra", "root"),
    [
        ("/obi/data", "/project", "/obi/data/project"),
        ("/obi/data/", "project/", "/obi/data/project"),
        ("/fsx", "/a/b", "/fsx/a/b"),
    ],
)
def test_the_dra_root_joins_mount_and_association_path(mount: str, dra: str, root: str) -> None:
    assert LustreStorage("fs-1", mount, dra, "bucket").dra_root == root


@pytest.mark.parametrize(
    ("prefix", "path", "key"),
    [
        ("", "/obi/data/project/x/y.h5", "x/y.h5"),
        ("nexus", "/obi/data/project/x/y.h5", "nexus/x/y.h5"),
        ("/org/proj/", "/obi/data/project/x/y.h5", "org/proj/x/y.h5"),
        ("", "/obi/data/project/x/../y.h5", "y.h5"),
        ("", "/obi/data/project", None),
        ("", "/obi/data/project2/y.h5", None),
        ("", "/obi/data/y.h5", None),
        ("", "/obi/data/project/../other/y.h5", None),
        ("", "/home/sim/y.h5", None),
    ],
)
def test_s3_key_is_the_path_under_the_dra_with_the_prefix(
    prefix: str, path: str, key: str | None
) -> None:
    storage = LustreStorage("fs-1", "/obi/data", "/project", "bucket", prefix)

    assert storage.s3_key(path) == key


def test_a_ready_status_and_only_a_ready_one_carries_the_cluster() -> None:
    handle: ClusterHandle = cluster()

    assert ProvisioningStatus(ProvisioningPhase.READY, handle).cluster is handle
    with pytest.raises(ValueError, match="ready"):
        ProvisioningStatus(ProvisioningPhase.READY)
    with pytest.raises(ValueError, match="ready"):
        ProvisioningStatus(ProvisioningPhase.IN_PROGRESS, handle)
