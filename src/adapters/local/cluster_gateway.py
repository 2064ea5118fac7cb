"""The ClusterGateway as a scheduler of processes on this machine, with Slurm's meaning.

The cluster's ``runs_root`` is a folder here; its scheduler keeps its state beside the run
folders, in ``<runs_root>/.scheduler`` (``scheduler_state.py``), so jobs outlive the service and
any number of gateways (processes, restarts) share them.

- Submit: the spec's files go into the run folder; the job gets the next number, its record
  (PENDING) and its tag; then a wrapper process (``job_wrapper.py``) is started, detached,
  holding the job's lock (``launch.py``). The wrapper waits for one of ``slots`` slots (file
  locks), runs the batch script with bash and records every state. Its ``#SBATCH`` directives
  are honoured as ``job_script.py`` says; a spec it cannot run is SubmissionRejected.
- A job whose wrapper is gone without recording an end (killed, the machine restarted) is
  FAILED, its left-over processes stopped: the wrapper's lock is free, its record still live
  (``reconcile.py``).
- An unusable runs root (missing, not a writable folder) is ClusterUnreachable, from every call.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

from obp_workflow.core.cluster import SAFE_PATH, ClusterHandle, KeyRole
from obp_workflow.core.errors import (
    ClusterUnreachable,
    FieldError,
    InvalidRequest,
    NotFound,
    SubmissionRejected,
)
from obp_workflow.core.jobs import JobAccounting, JobObservation, JobState
from obp_workflow.core.jobspec import LOG_FILE, JobSpec
from obp_workflow.ports.cluster import ClusterGateway, OutputFile

from . import run_folder as folders
from .job_script import job_options
from .launch import next_job_id, start_wrapper, withdraw
from .reconcile import settle
from .scheduler_state import STATE_DIR, JobRecord, SchedulerDir, try_lock, write_atomically

JOB_ID = re.compile(r"^[0-9]{1,18}$")
_TAG = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")


def _job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise InvalidRequest([FieldError("job_id", "must be a job number")])
    return job_id


def _tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise InvalidRequest(
            [FieldError("tag", "must be 1-200 of letters, digits, _ . -, not starting with '.'")]
        )
    return tag


def _when(epoch: float | None) -> str | None:
    """A time as Slurm prints it (local time, to the second)."""
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


class ProcessClusterGateway(ClusterGateway):
    """Jobs as processes of this machine, ``slots`` of them running at once (default: one per
    CPU). ``kill_grace_seconds`` pass between SIGTERM and SIGKILL when a job is stopped;
    a submit waits ``confirm_seconds`` for its wrapper to start, then is SubmissionUnclear."""

    def __init__(
        self,
        *,
        slots: int | None = None,
        kill_grace_seconds: float = 10.0,
        confirm_seconds: float = 30.0,
        python: str | None = None,
    ) -> None:
        if slots is not None and slots < 1:
            raise ValueError("a process scheduler needs at least one slot")
        self.slots = slots or os.cpu_count() or 1
        self.kill_grace_seconds = kill_grace_seconds
        self.confirm_seconds = confirm_seconds
        self.python = python or sys.executable
        self.host = socket.gethostname()

    # ---------------------------------------------------------------- submit

    def submit(self, cluster: ClusterHandle, spec: JobSpec) -> str:
        state = self._state(cluster)
        tag = _tag(spec.tag)
        folder = self._run_folder(cluster, spec.run_folder)
        for name in (spec.script, *spec.files):
            if not folders.FILE_NAME.fullmatch(name):
                raise InvalidRequest([FieldError("file", f"{name!r} is not a plain file name")])
        if spec.script not in spec.files:
            raise SubmissionRejected(f"the job script {spec.script} is not among the job's files")
        script = spec.files[spec.script]
        job_options(script, folder, "0", tag)  # refuse what cannot run before writing anything
        self._write_files(cluster, folder, spec.files)
        try:
            job_id = next_job_id(state)
            lock = try_lock(state.lock(job_id))
        except OSError as exc:
            raise ClusterUnreachable(f"the scheduler of {cluster.name}: {exc}") from None
        if lock is None:
            raise ClusterUnreachable(f"the scheduler of {cluster.name} gave a job id in use")
        try:
            options = job_options(script, folder, job_id, tag)
            record = JobRecord(
                job_id=job_id,
                tag=tag,
                run_folder=folder,
                script=f"{folder}/{spec.script}",
                output=options.output,
                error=options.error,
                append=options.append,
                hold=options.hold,
                time_limit=options.time_limit_seconds,
                grace=self.kill_grace_seconds,
                slots=self.slots,
                host=self.host,
                submitted=time.time(),
            )
            try:
                state.save(record)
                (state.tags / tag).mkdir(mode=0o700, exist_ok=True)
                (state.tags / tag / job_id).touch(mode=0o600)
            except OSError as exc:
                withdraw(state, record)
                raise ClusterUnreachable(f"cannot record job {job_id}: {exc}") from None
            start_wrapper(
                self.python,
                state,
                record,
                lock,
                confirm_seconds=self.confirm_seconds,
                cluster_name=cluster.name,
            )
        finally:
            os.close(lock)
        return job_id

    def _write_files(self, cluster: ClusterHandle, folder: str, files: Mapping[str, str]) -> None:
        try:
            fd = folders.open_folder(cluster.runs_root, folder, create=True)
            if fd is None:
                raise FileNotFoundError(f"{folder} vanished as it was created")
            try:
                folders.write_files(fd, files)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot write the job files in {folder}: {exc}") from None

    # ---------------------------------------------------------------- find, poll, cancel

    def find_by_tag(
        self, cluster: ClusterHandle, tag: str, role: KeyRole = KeyRole.USER
    ) -> str | None:
        state = self._state(cluster)
        try:
            ids = [n for n in os.listdir(state.tags / _tag(tag)) if JOB_ID.fullmatch(n)]
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ClusterUnreachable(f"the scheduler of {cluster.name}: {exc}") from None
        return max(ids, key=int) if ids else None

    def poll(self, cluster: ClusterHandle, job_ids: Sequence[str]) -> Mapping[str, JobObservation]:
        ids = list(dict.fromkeys(_job_id(j) for j in job_ids))
        if not ids:
            return {}
        state = self._state(cluster)
        return {job_id: self._observe(state, job_id) for job_id in ids}

    def _observe(self, state: SchedulerDir, job_id: str) -> JobObservation:
        try:
            loaded = state.load(job_id)
        except (ValueError, TypeError) as exc:
            return JobObservation.unknown(job_id, f"the record of job {job_id} is damaged: {exc}")
        if loaded is None:
            return JobObservation.unknown(job_id, "the scheduler has no record of the job")
        record, source = loaded
        record = settle(state, record)
        raw = (
            f"{record.job_id}|{record.state}|{record.reason}|"
            f"{record.exit_code if record.exit_code is not None else ''}:"
            f"{record.signal if record.signal is not None else ''}|{record.tag}"
        )
        if record.detail:
            raw += f" ({record.detail})"
        if record.live:
            return JobObservation(job_id, JobState.parse(record.state), None, None, raw, source)
        return JobObservation(
            job_id, JobState.parse(record.state), record.exit_code, record.signal, raw, source
        )

    def accounting(
        self, cluster: ClusterHandle, job_id: str, tag: str | None = None
    ) -> JobAccounting | None:
        state = self._state(cluster)
        try:
            loaded = state.load(_job_id(job_id))
        except (ValueError, TypeError):
            return None
        if loaded is None:
            return None
        record = settle(state, loaded[0])
        if tag is not None and record.tag != tag:
            return None
        started = record.started is not None
        elapsed = int((record.ended or time.time()) - record.started) if record.started else 0
        code, signal = (None, None) if record.live else (record.exit_code, record.signal)
        raw = "|".join(
            [
                record.job_id,
                record.state,
                f"{'' if code is None else code}:{'' if signal is None else signal}",
                "1",
                record.host if started else "None assigned",
                str(elapsed),
                _when(record.started) or "Unknown",
                _when(record.ended) or "Unknown",
                record.tag,
                _when(record.submitted) or "Unknown",
            ]
        )
        return JobAccounting(
            job_id=record.job_id,
            state=JobState.parse(record.state),
            exit_code=code,
            signal=signal,
            nodes=1,
            node_list=record.host if started else "",
            elapsed_seconds=elapsed,
            started=_when(record.started),
            ended=_when(record.ended),
            name=record.tag,
            submitted=_when(record.submitted),
            raw=raw,
        )

    def cancel(self, cluster: ClusterHandle, job_id: str, role: KeyRole = KeyRole.USER) -> None:
        state = self._state(cluster)
        record = self._live_record(state, _job_id(job_id))
        if record is None:
            return  # unknown or finished: nothing to cancel
        try:
            state.request(job_id, "cancel").touch(mode=0o600)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot cancel job {job_id}: {exc}") from None
        settle(state, record)  # a wrapper already gone: the cancel is recorded here

    # ---------------------------------------------------------------- operator's controls

    def release(self, cluster: ClusterHandle, job_id: str) -> None:
        """Let a job submitted held (``#SBATCH --hold``) start (``scontrol release``)."""
        state = self._state(cluster)
        if self._live_record(state, _job_id(job_id)) is not None:
            state.request(job_id, "release").touch(mode=0o600)

    def set_time_limit(self, cluster: ClusterHandle, job_id: str, seconds: float) -> None:
        """Change a live job's time limit, counted from its start (``scontrol update
        TimeLimit=``): a limit already passed ends the job as TIMEOUT."""
        state = self._state(cluster)
        if self._live_record(state, _job_id(job_id)) is not None:
            write_atomically(state.request(job_id, "limit"), repr(float(seconds)))

    def _live_record(self, state: SchedulerDir, job_id: str) -> JobRecord | None:
        try:
            loaded = state.load(job_id)
        except (ValueError, TypeError):
            return None
        if loaded is None:
            return None
        record = settle(state, loaded[0])
        return record if record.live else None

    # ---------------------------------------------------------------- files

    def tail_log(self, cluster: ClusterHandle, run_folder: str, max_bytes: int = 65536) -> str:
        self._state(cluster)
        folder = self._run_folder(cluster, run_folder)
        if max_bytes <= 0:
            return ""
        fd = self._open_folder(cluster, folder)
        if fd is None:
            return ""
        try:
            return folders.tail(fd, LOG_FILE, max_bytes)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot read the log in {folder}: {exc}") from None
        finally:
            os.close(fd)

    def list_outputs(self, cluster: ClusterHandle, run_folder: str) -> Sequence[OutputFile]:
        self._state(cluster)
        folder = self._run_folder(cluster, run_folder)
        fd = self._open_folder(cluster, folder)
        if fd is None:
            return []
        try:
            return folders.list_files(fd)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot list the outputs in {folder}: {exc}") from None
        finally:
            os.close(fd)

    def fetch_output(self, cluster: ClusterHandle, run_folder: str, path: str) -> Iterator[bytes]:
        self._state(cluster)
        folder = self._run_folder(cluster, run_folder)
        real_root = os.path.realpath(cluster.runs_root)
        if not os.path.realpath(folder).startswith(real_root + "/"):
            raise InvalidRequest([FieldError("run_folder", "leaves the runs folder")])
        try:
            fd = folders.open_output(folder, path)
        except (InvalidRequest, NotFound):
            raise
        except OSError as exc:
            raise ClusterUnreachable(f"cannot read {path} in {folder}: {exc}") from None
        return folders.stream(fd)

    # ---------------------------------------------------------------- plumbing

    def _state(self, cluster: ClusterHandle) -> SchedulerDir:
        """The scheduler's state folder; ClusterUnreachable when the runs root is not usable."""
        root = cluster.runs_root
        try:
            info = os.stat(root)
            if not stat.S_ISDIR(info.st_mode) or not os.access(root, os.W_OK | os.X_OK):
                raise ClusterUnreachable(
                    f"the runs folder {root} of {cluster.name} is not a writable folder"
                )
            state = SchedulerDir(root)
            state.create()
        except OSError as exc:
            raise ClusterUnreachable(
                f"the runs folder {root} of {cluster.name} is not usable: {exc.strerror}"
            ) from None
        return state

    def _run_folder(self, cluster: ClusterHandle, run_folder: str) -> str:
        folder = run_folder.rstrip("/")
        root = cluster.runs_root.rstrip("/")
        parts = folder[len(root) + 1 :].split("/")
        if (
            not SAFE_PATH.fullmatch(folder)
            or not folder.startswith(root + "/")
            or any(p in ("", ".", "..") for p in parts)
            or parts[0] == STATE_DIR
        ):
            raise InvalidRequest(
                [FieldError("run_folder", f"must be a folder inside the runs folder {root}")]
            )
        return folder

    def _open_folder(self, cluster: ClusterHandle, folder: str) -> int | None:
        try:
            return folders.open_folder(cluster.runs_root, folder, create=False)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot open the run folder {folder}: {exc}") from None
