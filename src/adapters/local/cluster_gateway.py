"""The ClusterGateway as a scheduler of processes on this machine, with Slurm's meaning.

The cluster's ``runs_root`` is a folder here; its scheduler keeps its state beside the run
folders, in ``<runs_root>/.scheduler`` (``scheduler_state.py``), so jobs outlive the service and
any number of gateways (processes, restarts) share them.

- Submit: the spec's files go into the run folder; the job gets the next number, its record
  (PENDING) and its tag; then a wrapper process (``job_wrapper.py``) is started, detached,
  holding the job's lock. The wrapper waits for one of ``slots`` slots (file locks), runs the
  batch script with bash and records every state. Its ``#SBATCH`` directives are honoured as
  ``job_script.py`` says; a spec it cannot run is SubmissionRejected.
- A job whose wrapper is gone without recording an end (killed, the machine restarted) is
  FAILED, its left-over processes stopped: the wrapper's lock is free, its record still live.
- An unusable runs root (missing, not a writable folder) is ClusterUnreachable, from every call.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress

from obp_workflow.core.cluster import SAFE_PATH, ClusterHandle, KeyRole
from obp_workflow.core.errors import (
    ClusterUnreachable,
    FieldError,
    InvalidRequest,
    NotFound,
    SubmissionRejected,
    SubmissionUnclear,
)
from obp_workflow.core.jobs import JobAccounting, JobObservation, JobState
from obp_workflow.core.jobspec import LOG_FILE, JobSpec
from obp_workflow.ports.cluster import ClusterGateway, OutputFile

from . import run_files
from .job_script import job_options
from .job_wrapper import JOB_ENVIRONMENT
from .scheduler_state import (
    STATE_DIR,
    JobRecord,
    SchedulerDir,
    boot_id,
    locked,
    process_start,
    stop_group,
    try_lock,
    write_atomically,
)

WRAPPER_MODULE = "obp_workflow.adapters.local.job_wrapper"
JOB_ID = re.compile(r"^[0-9]{1,18}$")
_TAG = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
#: The longest wait for the processes of a job whose wrapper is gone to stop after SIGTERM.
ORPHAN_GRACE_SECONDS = 2.0


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
            if not run_files.FILE_NAME.fullmatch(name):
                raise InvalidRequest([FieldError("file", f"{name!r} is not a plain file name")])
        if spec.script not in spec.files:
            raise SubmissionRejected(f"the job script {spec.script} is not among the job's files")
        script = spec.files[spec.script]
        job_options(script, folder, "0", tag)  # refuse what cannot run before writing anything
        self._write_files(cluster, folder, spec.files)
        try:
            job_id = self._next_id(state)
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
                self._withdraw(state, record)
                raise ClusterUnreachable(f"cannot record job {job_id}: {exc}") from None
            self._start_wrapper(cluster, state, record, lock)
        finally:
            os.close(lock)
        return job_id

    def _write_files(self, cluster: ClusterHandle, folder: str, files: Mapping[str, str]) -> None:
        try:
            fd = run_files.open_folder(cluster.runs_root, folder, create=True)
            assert fd is not None
            try:
                run_files.write_files(fd, files)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot write the job files in {folder}: {exc}") from None

    def _next_id(self, state: SchedulerDir) -> str:
        counter = state.root / "next-id"
        with locked(state.root / "next-id.lock"):
            try:
                number = int(counter.read_text())
            except (FileNotFoundError, ValueError):  # first job, or a lost counter
                known = [int(p.stem) for p in state.accounting.glob("*.json") if p.stem.isdigit()]
                number = max(known, default=0) + 1
            write_atomically(counter, str(number + 1))
        return str(number)

    def _start_wrapper(
        self, cluster: ClusterHandle, state: SchedulerDir, record: JobRecord, lock: int
    ) -> None:
        """Start the job's wrapper, handing it the job's lock; the wrapper's first process exits
        as soon as it has forked the wrapper proper, and is reaped here."""
        argv = [self.python, "-m", WRAPPER_MODULE, cluster.runs_root, record.job_id, str(lock)]
        names = (*JOB_ENVIRONMENT, "PYTHONPATH")
        env = {name: os.environ[name] for name in names if name in os.environ}
        log_path = state.wrapper_log(record.job_id)
        try:
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            try:
                first = subprocess.Popen(  # noqa: S603  (this interpreter and our module, no shell)
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    pass_fds=(lock,),
                    start_new_session=True,
                    cwd=state.root,
                    env=env,
                )
            finally:
                os.close(log)
        except OSError as exc:
            self._withdraw(state, record)
            raise ClusterUnreachable(f"cannot start the wrapper of a job: {exc}") from None
        try:
            code = first.wait(timeout=self.confirm_seconds)
        except subprocess.TimeoutExpired:
            threading.Thread(target=first.wait, name="reap-job-wrapper", daemon=True).start()
            raise SubmissionUnclear(
                f"the wrapper of job {record.job_id} on {cluster.name} did not confirm its start "
                f"within {self.confirm_seconds:g} s"
            ) from None
        if code != 0:
            self._withdraw(state, record)
            raise ClusterUnreachable(
                f"the wrapper of a job on {cluster.name} could not start (exit status {code}): "
                + _last_line(log_path)
            )

    def _withdraw(self, state: SchedulerDir, record: JobRecord) -> None:
        """Forget a job that never started (its lock held here, no wrapper alive)."""
        for path in (
            state.tags / record.tag / record.job_id,
            state.record(record.job_id),
            state.accounted(record.job_id),
        ):
            with suppress(OSError):
                path.unlink()

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
        record = self._settle(state, record)
        raw = (
            f"{record.job_id}|{record.state}|{record.reason}|"
            f"{record.exit_code if record.exit_code is not None else ''}:"
            f"{record.signal if record.signal is not None else ''}|{record.tag}"
        )
        if record.detail:
            raw += f" ({record.detail})"
        if record.live:
            return JobObservation(job_id, JobState(record.state), None, None, raw, source)
        return JobObservation(
            job_id, JobState(record.state), record.exit_code, record.signal, raw, source
        )

    def _settle(self, state: SchedulerDir, record: JobRecord) -> JobRecord:
        """The record, with the end of a live job whose wrapper is gone: FAILED (CANCELLED when
        a cancel was asked for), its left-over processes stopped."""
        if not record.live:
            return record
        lock = try_lock(state.lock(record.job_id), create=False)
        if lock is None:
            return record  # held: the wrapper is alive and answers for the job
        try:
            loaded = state.load(record.job_id)  # it may have recorded an end just before exiting
            current = loaded[0] if loaded else record
            if not current.live:
                return current
            stopped = self._stop_orphan(current)
            cancelled = state.request(current.job_id, "cancel").exists()
            current.state = "CANCELLED" if cancelled else "FAILED"
            current.reason = "None" if cancelled else "WrapperGone"
            current.exit_code = current.signal = None
            current.ended = time.time()
            current.detail = (
                f"the job's wrapper (pid {current.wrapper_pid}) ended without recording the "
                "job's end: it was killed, or the machine restarted"
            ) + ("; the job's processes were stopped" if stopped else "")
            state.save(current)
            return current
        finally:
            os.close(lock)

    def _stop_orphan(self, record: JobRecord) -> bool:
        """Stop the processes of a job whose wrapper is gone; whether there were any."""
        pgid = record.job_pgid
        if pgid is None or record.boot_id != boot_id():
            return False  # never started, or on an earlier boot: nothing of it is left
        start = process_start(pgid)
        if start is not None and start != record.job_start:
            return False  # the number is another process's now (a group keeps its number)
        stop_group(pgid, min(record.grace, ORPHAN_GRACE_SECONDS))
        return True

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
        record = self._settle(state, loaded[0])
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
            state=JobState(record.state),
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
        self._settle(state, record)  # a wrapper already gone: the cancel is recorded here

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
        record = self._settle(state, loaded[0])
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
            return run_files.tail(fd, LOG_FILE, max_bytes)
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
            return run_files.list_files(fd)
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
            fd = run_files.open_output(folder, path)
        except (InvalidRequest, NotFound):
            raise
        except OSError as exc:
            raise ClusterUnreachable(f"cannot read {path} in {folder}: {exc}") from None
        return run_files.stream(fd)

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
            return run_files.open_folder(cluster.runs_root, folder, create=False)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot open the run folder {folder}: {exc}") from None


def _last_line(path: os.PathLike[str] | str) -> str:
    try:
        with open(path, "rb") as log:
            lines = log.read()[-2000:].decode(errors="replace").strip().splitlines()
    except OSError:
        return "no error recorded"
    return lines[-1][:300] if lines else "no error recorded"
