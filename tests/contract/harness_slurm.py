"""The ClusterGateway contract against the real thing: SlurmClusterGateway over SSH to the test
stack.

Jobs are submitted held (``#SBATCH --hold`` added to the spec's script by the harness, never by
the adapter), so "a new job stays PENDING until let_start" holds on a real scheduler too. The
harness steers the cluster as root with the Slurm command line (release, time limit, accounting)
and cuts the connection with the stack's own means (sshd stopped, the sbatch fixture).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from pathlib import Path

from obp_workflow.adapters.fake.secret_store import FakeSecretStore
from obp_workflow.adapters.ssh.connection import PoolSettings, SshPool
from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway
from obp_workflow.core.cluster import ClusterHandle, SecretRef, SharedStorage
from obp_workflow.core.jobspec import LOG_FILE, build_job_spec
from obp_workflow.ports.cluster import ClusterGateway
from tests.contract.harness import (
    ENDING_COMMANDS,
    PROJECT_A,
    Ending,
    Job,
    make_header,
    make_request,
)
from tests.stack import (
    STACK_DIR,
    held,
    in_controller,
    job_state,
    slurm,
    stack,
    tagged_ids,
    wait_until,
)

GATES = STACK_DIR / "gates"
_gates = itertools.count()
GATE_SCRIPT = 'gate=$1; shift; until [ -e "$gate" ]; do sleep 0.2; done; exec "$@"'
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
#: Pool settings for tests: quick to give up, quick to retry, no budget in the way.
TEST_POOL = PoolSettings(
    connect_timeout=5,
    command_timeout=30,
    connects_per_minute=600,
    queries_per_minute=60_000,
    backoff_base_seconds=0.05,
    backoff_cap_seconds=0.2,
)


def stack_cluster() -> tuple[ClusterHandle, FakeSecretStore]:
    """The test stack as a ClusterHandle, with its keys in a secret store."""
    st = stack()
    secrets = FakeSecretStore(
        {"stack/user-key": st.private_key("sim"), "stack/admin-key": st.private_key("admin")}
    )
    home = st.home("sim")
    cluster = ClusterHandle(
        name=st.cluster_name,
        host=st.host,
        port=st.port,
        ssh_user=st.user("sim"),
        admin_user=st.user("admin"),
        user_key=SecretRef("stack/user-key"),
        admin_key=SecretRef("stack/admin-key"),
        host_key=st.host_key,
        storage=SharedStorage(home),
        runs_root=f"{home}/runs",
        partition=st.partition,
    )
    return cluster, secrets


class SlurmClusterGatewayHarness:
    def __init__(self) -> None:
        self.cluster, self.secrets = stack_cluster()
        self.pool = SshPool(self.secrets, TEST_POOL)
        self.gateway: ClusterGateway = SlurmClusterGateway(self.pool)
        self._endings: dict[str, Ending] = {}
        self._gates: dict[str, Path] = {}
        GATES.mkdir(mode=0o755, exist_ok=True)

    def job(
        self,
        ending: Ending = Ending.COMPLETE,
        *,
        outputs: Sequence[str] = (),
        command: Sequence[str] | None = None,
        script: str | None = None,
        name: str | None = None,
    ) -> Job:
        tag_gate = None
        if command is None and script is None:
            command = [*ENDING_COMMANDS[ending]]
            if ending is Ending.COMPLETE:
                command += outputs
            # The job runs, then waits at a gate until let_finish opens it, so that a real
            # scheduler shows it RUNNING for as long as the test needs.
            tag_gate = GATES / f"gate-{next(_gates)}"
            command = ["bash", "-c", GATE_SCRIPT, "gate", str(tag_gate), *command]
        request = make_request(
            command=command,
            script=script,
            outputs=outputs,
            name=name,
            time_limit_minutes=1 if ending is Ending.TIMEOUT else 60,
        )
        header = make_header(PROJECT_A, request=request)
        spec = build_job_spec(header, self.cluster)
        spec = held(spec)
        self._endings[spec.tag] = ending
        if tag_gate is not None:
            self._gates[spec.tag] = tag_gate
        return Job(header, spec)

    def let_start(self, job_id: str) -> None:
        slurm("scontrol", "release", job_id, check=False)
        wait_until(lambda: job_state(job_id) != "PENDING", 60, f"job {job_id} to start")

    def let_finish(self, job_id: str) -> None:
        slurm("scontrol", "release", job_id, check=False)
        tag = slurm(
            "squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%j", check=False
        ).strip()
        gate = self._gates.get(tag)
        if gate is not None:
            gate.touch()
        if self._endings.get(tag) is Ending.TIMEOUT:
            wait_until(lambda: job_state(job_id) != "PENDING", 60, f"job {job_id} to start")
            slurm("scontrol", "update", f"JobId={job_id}", "TimeLimit=0", check=False)
        # Finished, and accounting agrees: then squeue and sacct tell the same story.
        wait_until(lambda: _accounted_end(job_id), 120, f"job {job_id} to end")

    def purge(self, job_id: str) -> None:
        wait_until(
            lambda: not in_controller(job_id),
            60,
            f"slurmctld to forget job {job_id} (MinJobAge)",
            interval=1.0,
        )

    def lose_next_submit_reply(self) -> None:
        flag = Path(stack().home("sim")) / ".obp-test-cut-after-sbatch"
        flag.touch()
        shutil.chown(flag, stack().user("sim"))

    def set_reachable(self, reachable: bool) -> None:
        stack().sshd("start" if reachable else "stop")

    def jobs_tagged(self, tag: str) -> int:
        return len(tagged_ids(tag))

    def read_file(self, path: str) -> bytes | None:
        file = Path(path)
        return file.read_bytes() if file.is_file() else None

    def append_log(self, folder: str, text: str) -> None:
        log = Path(folder) / LOG_FILE
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(text.encode())

    def close(self) -> None:
        stack().sshd("start")  # whatever a test did, leave the way in open
        for tag in self._endings:
            slurm("scancel", f"--name={tag}", check=False)
        for gate in self._gates.values():
            gate.unlink(missing_ok=True)
        self.pool.close()


def _accounted_end(job_id: str) -> bool:
    """Accounting has the job's end (its own record may still be slurmdbd's placeholder, named
    "allocation", for a few seconds more)."""
    past = (
        slurm("sacct", "-X", "-n", "-P", "-a", f"--jobs={job_id}", "--format=State", check=False)
        .split("\n")[0]
        .strip()
    )
    return bool(past) and past.split()[0] not in LIVE
