"""The ClusterGateway contract against the process scheduler of this machine.

Like the Slurm harness, jobs are submitted held (``#SBATCH --hold``, added by the harness, never
by the adapter), so a new job stays PENDING until ``let_start`` releases it, and each job's
command waits at a gate (a file) that ``let_finish`` opens, so it stays RUNNING for as long as a
test needs. A TIMEOUT job gets a time limit already passed (``set_time_limit``, the scheduler's
``scontrol update TimeLimit=``). The runs root is a temporary folder: an unreachable cluster is
that folder moved away; a lost reply is a submit that gives the wrapper no time to confirm.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from obp_workflow.adapters.local.cluster_gateway import ProcessClusterGateway
from obp_workflow.adapters.local.scheduler_state import SchedulerDir
from obp_workflow.core.cluster import ClusterHandle, SecretRef, SharedStorage
from obp_workflow.core.jobs import JobPhase
from obp_workflow.core.jobspec import LOG_FILE, JobSpec, build_job_spec
from obp_workflow.ports.cluster import ClusterGateway
from tests.contract.harness import (
    ENDING_COMMANDS,
    PROJECT_A,
    Ending,
    Job,
    make_header,
    make_request,
)
from tests.stack import held, wait_until

GATE_SCRIPT = 'gate=$1; shift; until [ -e "$gate" ]; do sleep 0.05; done; exec "$@"'
_gates = itertools.count()


def local_cluster(runs_root: str) -> ClusterHandle:
    """A cluster that is this machine: only its runs root means anything."""
    return ClusterHandle(
        name="local",
        host="127.0.0.1",
        port=22,
        ssh_user="local",
        user_key=SecretRef("local/none"),
        admin_key=SecretRef("local/none"),
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILocalMachineNoSshHostKey000000000000000",
        storage=SharedStorage(runs_root),
        runs_root=runs_root,
    )


class _ReplyLosingGateway(ProcessClusterGateway):
    """The adapter, whose next submit can be given no time to hear from its wrapper: the job is
    queued, and the submit answers SubmissionUnclear, as it does on a machine too slow."""

    lose_next = False

    def submit(self, cluster: ClusterHandle, spec: JobSpec) -> str:
        if not self.lose_next:
            return super().submit(cluster, spec)
        self.lose_next = False
        patience, self.confirm_seconds = self.confirm_seconds, 0.0
        try:
            return super().submit(cluster, spec)
        finally:
            self.confirm_seconds = patience


class ProcessClusterGatewayHarness:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="obp-local-"))
        self.runs_root = self.base / "runs"
        self.runs_root.mkdir()
        self.gates = self.base / "gates"
        self.gates.mkdir()
        self.cluster = local_cluster(str(self.runs_root))
        self.process = _ReplyLosingGateway(slots=4, kill_grace_seconds=2.0)
        self.gateway: ClusterGateway = self.process
        self.state = SchedulerDir(self.runs_root)
        self._endings: dict[str, Ending] = {}
        self._gates: dict[str, Path] = {}

    def job(
        self,
        ending: Ending = Ending.COMPLETE,
        *,
        outputs: Sequence[str] = (),
        command: Sequence[str] | None = None,
        script: str | None = None,
        name: str | None = None,
    ) -> Job:
        gate = None
        if command is None and script is None:
            command = [*ENDING_COMMANDS[ending]]
            if ending is Ending.COMPLETE:
                command += outputs
            gate = self.gates / f"gate-{next(_gates)}"
            command = ["bash", "-c", GATE_SCRIPT, "gate", str(gate), *command]
        request = make_request(
            command=command,
            script=script,
            outputs=outputs,
            name=name,
            time_limit_minutes=1 if ending is Ending.TIMEOUT else 60,
        )
        header = make_header(PROJECT_A, request=request)
        spec = held(build_job_spec(header, self.cluster))
        self._endings[spec.tag] = ending
        if gate is not None:
            self._gates[spec.tag] = gate
        return Job(header, spec)

    def _state_of(self, job_id: str) -> str:
        return self.process.poll(self.cluster, [job_id])[job_id].state.value

    def _ended(self, job_id: str) -> bool:
        phase = self.process.poll(self.cluster, [job_id])[job_id].phase
        return phase not in (JobPhase.WAITING, JobPhase.RUNNING)

    def let_start(self, job_id: str) -> None:
        self.process.release(self.cluster, job_id)
        wait_until(lambda: self._state_of(job_id) != "PENDING", 30, f"job {job_id} to start")

    def let_finish(self, job_id: str) -> None:
        self.process.release(self.cluster, job_id)
        tag = self._tag(job_id)
        gate = self._gates.get(tag)
        if gate is not None:
            gate.touch()
        if self._endings.get(tag) is Ending.TIMEOUT:
            wait_until(lambda: self._state_of(job_id) != "PENDING", 30, f"job {job_id} to start")
            self.process.set_time_limit(self.cluster, job_id, 0)
        wait_until(lambda: self._ended(job_id), 60, f"job {job_id} to end", interval=0.05)

    def purge(self, job_id: str) -> None:
        """The live record goes, as slurmctld forgets a job; accounting keeps its own."""
        self.state.record(job_id).unlink()

    def lose_next_submit_reply(self) -> None:
        self.process.lose_next = True

    def set_reachable(self, reachable: bool) -> None:
        away = self.base / "runs-away"
        if reachable and away.exists():
            away.rename(self.runs_root)
        elif not reachable and self.runs_root.exists():
            self.runs_root.rename(away)

    def jobs_tagged(self, tag: str) -> int:
        """Counted from accounting's records, not from the adapter's index of tags."""
        return sum(
            1
            for path in self.state.accounting.glob("*.json")
            if json.loads(path.read_text()).get("tag") == tag
        )

    def read_file(self, path: str) -> bytes | None:
        file = Path(path)
        return file.read_bytes() if file.is_file() else None

    def append_log(self, folder: str, text: str) -> None:
        log = Path(folder) / LOG_FILE
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(text.encode())

    def _tag(self, job_id: str) -> str:
        loaded = self.state.load(job_id)
        return loaded[0].tag if loaded else ""

    def close(self) -> None:
        """Cancel every job still live and wait for its wrapper to end, then remove it all."""
        self.set_reachable(True)
        live = [
            path.stem
            for path in self.state.jobs.glob("*.json")
            if json.loads(path.read_text()).get("state") in ("PENDING", "RUNNING")
        ]
        for job_id in live:
            self.process.cancel(self.cluster, job_id)
        for job_id in live:
            wait_until(lambda j=job_id: self._ended(j), 30, f"job {job_id} to end", 0.05)
        shutil.rmtree(self.base, ignore_errors=True)
