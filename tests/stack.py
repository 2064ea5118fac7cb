"""The real test stack started by ``scripts/stack/up.sh``: where it is and how to steer it.

The stack runs on this machine (Slurm with accounting, sshd on 127.0.0.1:2222). Tests reach it
through the production adapters over SSH, and steer it behind the adapters' backs as root with
the Slurm command line (release a held job, read accounting), as an operator would.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from obp_workflow.core.jobspec import JOB_SCRIPT, JobSpec

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("OBP_STACK_DIR", "/var/tmp/obp-workflow-stack"))


class StackMissing(RuntimeError):
    """The real peers are not running: a test that needs them fails, it is never skipped."""


@dataclass(frozen=True)
class Stack:
    raw: dict[str, Any]

    @property
    def host(self) -> str:
        return str(self.raw["ssh"]["host"])

    @property
    def port(self) -> int:
        return int(self.raw["ssh"]["port"])

    @property
    def host_key(self) -> str:
        return str(self.raw["ssh"]["host_key"])

    def user(self, role: str) -> str:
        return str(self.raw["users"][role]["name"])

    def home(self, role: str) -> str:
        return str(self.raw["users"][role]["home"])

    def private_key(self, role: str) -> str:
        return Path(self.raw["users"][role]["private_key"]).read_text()

    @property
    def partition(self) -> str:
        return str(self.raw["slurm"]["partition"])

    @property
    def cluster_name(self) -> str:
        return str(self.raw["slurm"]["cluster"])

    def sshd(self, action: str) -> None:
        """Stop or start the stack's sshd (``scripts/stack/sshd.sh``)."""
        subprocess.run(
            ["bash", str(REPO / "scripts/stack/sshd.sh"), action],
            check=True,
            capture_output=True,
            timeout=60,
        )


@contextmanager
def sshd_with_another_host_key(folder: Path) -> Iterator[tuple[int, str]]:
    """A second real sshd, configured as the stack's (same users, same keys) but with a host
    key of its own, on a free loopback port: the head node after its host key changed. Yields
    the port and the new public key (``<type> <base64>``); stopped by its PID on leaving (close
    the connections to it first). The stack's own sshd is not touched."""
    key = folder / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "obp-changed-host", "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with socket.socket() as probe:
        probe.bind((stack().host, 0))
        port = int(probe.getsockname()[1])
    config = (STACK_DIR / "etc" / "sshd_config").read_text()
    for word, value in (("Port", port), ("HostKey", key), ("PidFile", folder / "sshd.pid")):
        config = re.sub(rf"^{word} .*$", f"{word} {value}", config, flags=re.MULTILINE)
    (folder / "sshd_config").write_text(config)
    (folder / "sshd_config").chmod(0o600)
    daemon = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-f", str(folder / "sshd_config"), "-E", str(folder / "sshd.log")]
    )
    try:
        wait_until(lambda: _banner(stack().host, port), 10, f"the second sshd on port {port}")
        kind, body, *_ = (folder / "ssh_host_ed25519_key.pub").read_text().split()
        yield port, f"{kind} {body}"
    finally:
        daemon.terminate()
        daemon.wait(10)


def _banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as conn:
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


@cache
def stack() -> Stack:
    path = STACK_DIR / "stack.json"
    if not path.exists():
        raise StackMissing(
            f"the test stack is not running ({path} is missing): start it with `make stack-up`"
        )
    return Stack(json.loads(path.read_text()))


def slurm(*argv: str, check: bool = True) -> str:
    """A Slurm command run locally as root (the operator's view of the cluster)."""
    done = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def job_state(job_id: str) -> str | None:
    """The job's state as accounting knows it, else as the controller does; None if unknown."""
    live = slurm(
        "squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T", check=False
    )
    if live.strip():
        return live.split()[0]
    past = slurm("sacct", "-X", "-n", "-P", "-a", f"--jobs={job_id}", "--format=State", check=False)
    return past.split()[0] if past.strip() else None


def in_controller(job_id: str) -> bool:
    """Whether slurmctld still knows the job (it forgets finished jobs after MinJobAge)."""
    return bool(
        slurm(
            "squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%i", check=False
        ).strip()
    )


def accounted(job_id: str, name: str, fields: str = "State,User") -> tuple[str, ...]:
    """The accounting record (``fields``) of the job ``job_id`` named ``name``, once slurmdbd
    holds it (until then it keeps a placeholder named "allocation"). The name tells this job
    from an older one of the same id: the stack's controller starts its ids again when it is
    started afresh, and slurmdbd keeps the earlier jobs."""
    argv = ["sacct", "-X", "-n", "-P", "-a", f"--jobs={job_id}", f"--name={name}"]
    wait_until(lambda: slurm(*argv).strip() != "", 30, f"the accounting of job {job_id}")
    (line,) = slurm(*argv, f"--format={fields}").strip().split("\n")
    return tuple(line.split("|"))


def tagged_ids(tag: str) -> set[str]:
    """Every job id, live or accounted, whose name is ``tag``."""
    live = slurm(
        "squeue", "--noheader", "--states=all", f"--name={tag}", "--format=%i", check=False
    ).split()
    past = slurm(
        "sacct",
        "-X",
        "-n",
        "-P",
        "-a",
        f"--name={tag}",
        "--starttime=now-1days",
        "--endtime=now",
        "--format=JobID",
        check=False,
    ).split()
    return set(live) | set(past)


def held(spec: JobSpec) -> JobSpec:
    """The same job, submitted held (PENDING until released): added by tests, never by the
    adapter."""
    script = spec.files[JOB_SCRIPT].replace("#!/bin/bash\n", "#!/bin/bash\n#SBATCH --hold\n", 1)
    return dataclasses.replace(spec, files={**spec.files, JOB_SCRIPT: script})


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
