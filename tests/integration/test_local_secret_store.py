"""The file SecretStore beyond the contract: private files and folder, names confined to the
folder, read-only aliases of key files kept elsewhere, and creations racing across processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from obp_workflow.adapters.local.secret_store import SECRETS_FOLDER, FileSecretStore
from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import SecretExists, SecretNotFound

KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def test_secrets_are_private_files_in_a_private_folder(tmp_path: Path) -> None:
    store = FileSecretStore(tmp_path)
    store.create(SecretRef("cluster-host-key"), "ssh-ed25519 AAAAC3Nza")
    folder = tmp_path / SECRETS_FOLDER
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "cluster-host-key").stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == ["cluster-host-key"]  # no temporary left


def test_a_wider_folder_is_narrowed(tmp_path: Path) -> None:
    (tmp_path / SECRETS_FOLDER).mkdir(mode=0o755)
    os.chmod(tmp_path / SECRETS_FOLDER, 0o755)
    FileSecretStore(tmp_path)
    assert stat.S_IMODE((tmp_path / SECRETS_FOLDER).stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "name", ["../escape", "a/b", "/etc/passwd", ".hidden", "..", "", "x" * 300, "sp ace", "nl\n"]
)
def test_names_never_lead_out_of_the_folder(tmp_path: Path, name: str) -> None:
    store = FileSecretStore(tmp_path / "home")
    with pytest.raises(ValueError, match="invalid secret name"):
        store.create(SecretRef(name), "value-Qx9")
    with pytest.raises(SecretNotFound, match="not a valid secret name"):
        store.get(SecretRef(name))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["home", SECRETS_FOLDER]


def test_a_secret_others_may_read_is_refused_in_one_line(tmp_path: Path) -> None:
    store = FileSecretStore(tmp_path)
    store.create(SecretRef("loose"), "value-Qx9")
    os.chmod(tmp_path / SECRETS_FOLDER / "loose", 0o644)
    with pytest.raises(ValueError, match="chmod 600") as caught:
        store.get(SecretRef("loose"))
    assert "value-Qx9" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_symbolic_link_in_the_folder_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("not-a-secret-of-ours")
    os.chmod(outside, 0o600)
    store = FileSecretStore(tmp_path / "home")
    (tmp_path / "home" / SECRETS_FOLDER / "linked").symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link"):
        store.get(SecretRef("linked"))


def test_an_alias_reads_a_key_file_in_place_and_is_never_written(tmp_path: Path) -> None:
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(KEY)
    os.chmod(key_file, 0o600)
    store = FileSecretStore(tmp_path / "home", aliases={"cluster-user-key": key_file})
    ref = SecretRef("cluster-user-key")
    assert store.get(ref).reveal() == KEY
    with pytest.raises(SecretExists, match="read-only alias"):
        store.create(ref, "another value")
    assert key_file.read_text() == KEY
    assert not (tmp_path / "home" / SECRETS_FOLDER / "cluster-user-key").exists()
    key_file.write_text(KEY + "rotated\n")  # read each time: a replaced key file is seen
    assert store.get(ref).reveal().endswith("rotated\n")
    key_file.unlink()
    with pytest.raises(SecretNotFound) as caught:
        store.get(ref)
    assert "cluster-user-key" in str(caught.value)
    assert str(key_file) in str(caught.value)
    assert KEY[:40] not in repr(store)


def test_an_alias_others_may_read_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "id_ed25519"
    key_file.write_text(KEY)
    os.chmod(key_file, 0o644)
    store = FileSecretStore(tmp_path / "home", aliases={"cluster-user-key": key_file})
    with pytest.raises(ValueError, match="chmod 600"):
        store.get(SecretRef("cluster-user-key"))


def test_an_alias_with_a_bad_name_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid secret name"):
        FileSecretStore(tmp_path, aliases={"../key": tmp_path / "k"})


def test_of_processes_racing_to_create_a_name_exactly_one_wins(tmp_path: Path) -> None:
    script = (
        "import sys, pathlib, time\n"
        "from obp_workflow.adapters.local.secret_store import FileSecretStore\n"
        "from obp_workflow.core.cluster import SecretRef\n"
        "from obp_workflow.core.errors import SecretExists\n"
        "store = FileSecretStore(pathlib.Path(sys.argv[1]))\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "try:\n"
        "    store.create(SecretRef('raced-host-key'), sys.argv[3])\n"
        "    print('won')\n"
        "except SecretExists:\n"
        "    print('lost')\n"
    )
    start = str(time.time() + 1.5)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), start, f"value-{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outcomes = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]
    winner = outcomes.index("won")
    assert FileSecretStore(tmp_path).get(SecretRef("raced-host-key")).reveal() == f"value-{winner}"
