"""An in-memory Slurm cluster behind the ClusterGateway port.

Jobs move PENDING -> RUNNING -> their scripted outcome when ``step`` is called (or on every poll
with ``auto_progress``). Like Slurm, a finished job can be ``forget``-ed by the live queue and
is then known only to accounting. Completed simulation jobs write their expected outputs.
"""

from __future__ import annotations

import json
import posixpath
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from obp_workflow.core.cluster import ClusterHandle, KeyRole
from obp_workflow.core.errors import ClusterUnreachable, NotFound
from obp_workflow.core.jobs import JobAccounting, JobObservation, JobPhase, JobState
from obp_workflow.core.jobspec import LOG_FILE, REQUEST_FILE, JobSpec, confined
from obp_workflow.core.text import utf8_tail
from obp_workflow.ports.cluster import ClusterGateway, OutputFile

from .faults import Faults

ACTIVE = (JobState.PENDING, JobState.RUNNING)


@dataclass
class FakeJob:
    job_id: str
    tag: str
    role: KeyRole
    run_folder: str
    outcome: JobState = JobState.COMPLETED
    exit_code: int = 0
    state: JobState = JobState.PENDING
    in_queue: bool = True  # False once forgotten: only accounting knows it
    nodes: int = 1
    steps_running: int = 0  # the fake's elapsed time: steps taken while RUNNING
    on_complete: list[Callable[[FakeJob], None]] = field(default_factory=list)

    def accounting(self) -> JobAccounting:
        started = self.state is not JobState.PENDING
        done = self.state not in ACTIVE
        return JobAccounting(
            job_id=self.job_id,
            state=self.state,
            exit_code=self.exit_code if done else None,
            signal=0 if done else None,
            nodes=self.nodes,
            node_list=(f"fake-[1-{self.nodes}]" if self.nodes > 1 else "fake-1") if started else "",
            elapsed_seconds=self.steps_running,
            started=None,
            ended=None,
            name=self.tag,
            raw=f"{self.job_id}|{self.state.value}|{self.nodes}|{self.steps_running}",
        )

    def observation(self) -> JobObservation:
        code = None if self.state in ACTIVE else self.exit_code
        source = "squeue" if self.in_queue else "sacct"
        raw = f"{self.job_id}|{self.tag}|{self.state.value}|{code if code is not None else ''}:0"
        return JobObservation(
            self.job_id, self.state, code, 0 if code is not None else None, raw, source
        )


class FakeClusterGateway(ClusterGateway):
    """One in-memory cluster (the fake serves every ClusterHandle it is given)."""

    def __init__(self, *, auto_progress: bool = False, output_size: int = 64) -> None:
        self.jobs: dict[str, FakeJob] = {}
        self.files: dict[str, bytes] = {}
        self.faults = Faults()
        self.unreachable = False
        self.auto_progress = auto_progress
        self.output_size = output_size
        self.submitted_tags: list[str] = []
        self.scheduler_queries = 0
        self.late_answers = 0  # the next N polls repeat the previous answer (late news)
        self._last: dict[str, JobObservation] = {}
        self._outcomes: dict[str, tuple[JobState, int]] = {}
        self._next_id = 1000
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- the port

    def submit(self, cluster: ClusterHandle, spec: JobSpec) -> str:
        self._reachable()
        self.faults.before("submit")
        with self._lock:
            for name, content in spec.files.items():
                self.files[posixpath.join(spec.run_folder, name)] = content.encode()
            self._next_id += 1
            job_id = str(self._next_id)
            outcome, code = self._outcomes.get(spec.tag, (JobState.COMPLETED, 0))
            job = FakeJob(job_id, spec.tag, spec.role, spec.run_folder, outcome, code)
            job.nodes = _requested_nodes(spec)
            if spec.role is KeyRole.USER:
                job.on_complete.append(self._write_outputs)
            self.jobs[job_id] = job
            self.submitted_tags.append(spec.tag)
        self.faults.after("submit")
        return job_id

    def find_by_tag(
        self, cluster: ClusterHandle, tag: str, role: KeyRole = KeyRole.USER
    ) -> str | None:
        self._reachable()
        self.faults.before("find_by_tag")
        self.scheduler_queries += 1
        with self._lock:
            found = [j for j in self.jobs.values() if j.tag == tag]
        return found[-1].job_id if found else None

    def poll(self, cluster: ClusterHandle, job_ids: Sequence[str]) -> Mapping[str, JobObservation]:
        self._reachable()
        self.faults.before("poll")
        self.scheduler_queries += 1
        with self._lock:
            if self.auto_progress:
                self.step()
            answer = {
                job_id: (
                    self.jobs[job_id].observation()
                    if job_id in self.jobs
                    else JobObservation.unknown(job_id, "not in squeue nor in sacct")
                )
                for job_id in job_ids
            }
            if self.late_answers > 0:
                self.late_answers -= 1
                answer = {j: self._last.get(j, obs) for j, obs in answer.items()}
            else:
                self._last.update(answer)
        self.faults.after("poll")
        return answer

    def accounting(
        self, cluster: ClusterHandle, job_id: str, tag: str | None = None
    ) -> JobAccounting | None:
        self._reachable()
        self.faults.before("accounting")
        self.scheduler_queries += 1
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or (tag is not None and job.tag != tag):
                return None
            return job.accounting()

    def cancel(self, cluster: ClusterHandle, job_id: str, role: KeyRole = KeyRole.USER) -> None:
        self._reachable()
        self.faults.before("cancel")
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and job.state in ACTIVE:
                job.state = JobState.CANCELLED
                job.exit_code = 0
        self.faults.after("cancel")

    def tail_log(self, cluster: ClusterHandle, run_folder: str, max_bytes: int = 65536) -> str:
        self._reachable()
        data = self.files.get(posixpath.join(run_folder, LOG_FILE), b"")
        return utf8_tail(data, max_bytes)

    def list_outputs(self, cluster: ClusterHandle, run_folder: str) -> Sequence[OutputFile]:
        self._reachable()
        self.faults.before("list_outputs")
        prefix = run_folder.rstrip("/") + "/"
        with self._lock:
            return [
                OutputFile(path[len(prefix) :], len(data))
                for path, data in sorted(self.files.items())
                if path.startswith(prefix)
            ]

    def fetch_output(self, cluster: ClusterHandle, run_folder: str, path: str) -> Iterator[bytes]:
        self._reachable()
        full = confined(run_folder, path)
        with self._lock:
            data = self.files.get(full)
        if data is None:
            raise NotFound(f"output {path} not found in {run_folder}")
        for i in range(0, max(len(data), 1), 65536):
            yield data[i : i + 65536]

    # ---------------------------------------------------------------- driving it

    def script_outcome(self, tag: str, state: JobState, exit_code: int = 0) -> None:
        """Make the job tagged ``tag`` end as ``state`` (set before it is submitted)."""
        self._outcomes[tag] = (state, exit_code)

    def step(self, job_id: str | None = None) -> None:
        """Move one job (or every live job) one step along its life."""
        with self._lock:
            jobs = [self.jobs[job_id]] if job_id else list(self.jobs.values())
            for job in jobs:
                if job.state is JobState.PENDING:
                    job.state = JobState.RUNNING
                elif job.state is JobState.RUNNING:
                    job.steps_running += 1
                    self.finish(job.job_id, job.outcome, job.exit_code)

    def finish(self, job_id: str, state: JobState, exit_code: int = 0) -> None:
        with self._lock:
            job = self.jobs[job_id]
            job.state, job.exit_code = state, exit_code
            if state is JobState.COMPLETED:
                for hook in job.on_complete:
                    hook(job)

    def forget(self, job_id: str) -> None:
        """Drop a finished job from the live queue, as slurmctld does after MinJobAge."""
        with self._lock:
            job = self.jobs[job_id]
            if JobObservation(job_id, job.state).phase in (JobPhase.WAITING, JobPhase.RUNNING):
                raise ValueError("only finished jobs leave the queue")
            job.in_queue = False

    def on_complete(self, job_id: str, hook: Callable[[FakeJob], None]) -> None:
        with self._lock:
            self.jobs[job_id].on_complete.append(hook)

    def jobs_tagged(self, tag: str) -> list[FakeJob]:
        return [j for j in self.jobs.values() if j.tag == tag]

    def _reachable(self) -> None:
        if self.unreachable:
            raise ClusterUnreachable("cannot reach the cluster's head node (fake: unreachable)")

    def _write_outputs(self, job: FakeJob) -> None:
        request = json.loads(self.files.get(posixpath.join(job.run_folder, REQUEST_FILE), b"{}"))
        run_id = request.get("run_id", "?")
        for rel in request.get("request", {}).get("outputs", []):
            body = f"{run_id}:{rel}:".encode()
            self.files[posixpath.join(job.run_folder, rel)] = body.ljust(self.output_size, b".")
        log = posixpath.join(job.run_folder, LOG_FILE)
        self.files[log] = self.files.get(log, b"") + f"job {job.job_id} done\n".encode()


def _requested_nodes(spec: JobSpec) -> int:
    """The nodes a job asks for (its request's resources; one when it names none)."""
    try:
        request = json.loads(spec.files.get(REQUEST_FILE, "{}")).get("request", {})
        return int(request.get("resources", {}).get("nodes", 1))
    except (ValueError, TypeError, AttributeError):
        return 1
