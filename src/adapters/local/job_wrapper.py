"""The wrapper of one job of the process scheduler.

``python -m obp_workflow.adapters.local.job_wrapper RUNS_ROOT JOB_ID LOCK_FD``, started by the
gateway in a session of its own with the job's lock already held on ``LOCK_FD``. It forks at
once and its first process exits (the gateway waits for that): the wrapper proper is then
nobody's child in the service, never a zombie there, and lives on when the service stops.

The wrapper keeps the job's lock for its whole life (the sign that it is alive), waits for a
free slot (PENDING; held jobs also wait for their release), runs the batch script with bash in
the run folder in a process group of its own, its output to the job's log, stops the group at
the time limit (TIMEOUT) or on request (CANCELLED): SIGTERM, then SIGKILL after the grace
period, and records every change of state in the job's record.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from types import FrameType

from obp_workflow.adapters.local.scheduler_state import (
    TICK_SECONDS,
    JobRecord,
    SchedulerDir,
    boot_id,
    process_start,
    signal_group,
    stop_group,
    try_lock,
)

#: The only variables of the service's environment a job sees (no credential ever reaches it).
JOB_ENVIRONMENT = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: How long the wrapper keeps trying to record a job's end when the state folder is not writable.
FINAL_WRITE_SECONDS = 60.0
_REASONS = {"COMPLETED": "None", "CANCELLED": "None", "TIMEOUT": "TimeLimit"}


def job_environment(job: JobRecord, environ: dict[str, str]) -> dict[str, str]:
    env = {name: environ[name] for name in JOB_ENVIRONMENT if name in environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(
        SLURM_JOB_ID=job.job_id,
        SLURM_JOBID=job.job_id,
        SLURM_JOB_NAME=job.tag,
        SLURM_SUBMIT_DIR=job.run_folder,
        SLURM_JOB_NODELIST=job.host,
        SLURM_JOB_NUM_NODES="1",
        SLURM_NNODES="1",
    )
    return env


class Wrapper:
    def __init__(self, state: SchedulerDir, job_id: str) -> None:
        self.state = state
        loaded = state.load(job_id)
        if loaded is None:
            raise SystemExit(f"job {job_id} has no record")
        self.job = loaded[0]
        self.stop_signal: int | None = None

    # ---------------------------------------------------------------- life

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        os.umask(0o027)
        job = self.job
        job.boot_id = boot_id()
        job.wrapper_pid = os.getpid()
        job.wrapper_start = process_start(os.getpid())
        self._save()
        slot = self._wait_for_slot()
        if slot is None:
            return
        try:
            self._run_job()
        finally:
            os.close(slot)

    def _wait_for_slot(self) -> int | None:
        """The descriptor holding a slot; None when the job ended before it got one."""
        job = self.job
        while True:
            if self._requested("cancel"):
                self._end("CANCELLED", 0, 0, "cancelled while pending")
                return None
            if self.stop_signal is not None:
                self._end(
                    "FAILED",
                    0,
                    self.stop_signal,
                    f"the job's wrapper received signal {self.stop_signal} before the job started",
                )
                return None
            if job.hold and not self._requested("release"):
                reason = "JobHeldUser"
            else:
                for n in range(max(1, job.slots)):
                    fd = try_lock(self.state.slot(n))
                    if fd is not None:
                        job.slot = n
                        return fd
                reason = "Resources"
            if reason != job.reason:
                job.reason = reason
                self._save()
            time.sleep(TICK_SECONDS)

    def _run_job(self) -> None:
        job = self.job
        try:
            out = _open_output(job.output, job.append)
            err = _open_output(job.error, job.append) if job.error else None
        except OSError as exc:
            self._end("FAILED", 1, 0, f"cannot open the job's output file: {exc.strerror}")
            return
        env = job_environment(job, dict(os.environ))
        bash = shutil.which("bash", path=env["PATH"]) or "/bin/bash"
        started = time.monotonic()
        job.started = time.time()
        try:
            proc = subprocess.Popen(  # noqa: S603  (bash and the job's own script, no shell)
                [bash, job.script],
                cwd=job.run_folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err if err is not None else subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            self._end("FAILED", 1, 0, f"cannot start the job's script: {exc.strerror}")
            return
        finally:
            os.close(out)
            if err is not None:
                os.close(err)
        job.state, job.reason = "RUNNING", "None"
        job.job_pgid, job.job_start = proc.pid, process_start(proc.pid)
        self._save()

        while (code := proc.poll()) is None:
            ending = self._ending(started)
            if ending is not None:
                stop_group(proc.pid, job.grace, proc.poll)
                self._finish(proc.wait(), *ending)
                return
            time.sleep(TICK_SECONDS)
        signal_group(proc.pid, signal.SIGKILL)  # what the script left running
        self._finish(code, "COMPLETED" if code == 0 else "FAILED", "")

    def _ending(self, started: float) -> tuple[str, str] | None:
        if self._requested("cancel"):
            return "CANCELLED", "cancelled"
        if self.stop_signal is not None:
            return "FAILED", f"the job's wrapper received signal {self.stop_signal}"
        limit = self._time_limit()
        if limit is not None and time.monotonic() - started >= limit:
            return "TIMEOUT", f"the job reached its time limit ({limit:g} s)"
        return None

    def _time_limit(self) -> float | None:
        try:
            return float(self.state.request(self.job.job_id, "limit").read_text())
        except (OSError, ValueError):
            return self.job.time_limit

    # ---------------------------------------------------------------- records

    def _finish(self, returncode: int, state: str, detail: str) -> None:
        # A script killed by a signal is reported as Slurm does: exit code 0, that signal.
        code, sig = (returncode, 0) if returncode >= 0 else (0, -returncode)
        self._end(state, code, sig, detail)

    def _end(self, state: str, code: int, sig: int, detail: str) -> None:
        job = self.job
        job.state, job.exit_code, job.signal, job.detail = state, code, sig, detail
        job.reason = _REASONS.get(state, "RaisedSignal" if sig else "NonZeroExitCode")
        job.ended = time.time()
        deadline = time.monotonic() + FINAL_WRITE_SECONDS
        while True:
            try:
                self.state.save(job)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _save(self) -> None:
        try:
            self.state.save(self.job)
        except OSError as exc:  # the next change writes the whole record again
            print(f"job {self.job.job_id}: cannot write its record: {exc}", file=sys.stderr)

    def _requested(self, what: str) -> bool:
        return self.state.request(self.job.job_id, what).exists()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = signum


def _open_output(path: str, append: bool) -> int:
    mode = os.O_APPEND if append else os.O_TRUNC
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | mode, 0o640)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[1].isdigit() or not argv[2].isdigit():
        print("usage: job_wrapper RUNS_ROOT JOB_ID LOCK_FD", file=sys.stderr)
        return 2
    state, job_id, lock_fd = SchedulerDir(argv[0]), argv[1], int(argv[2])
    os.fstat(lock_fd)  # the job's lock, inherited from the gateway, must be open
    sys.stderr.flush()
    if os.fork() > 0:
        os._exit(0)  # the gateway reaps this first process; the wrapper lives on in the child
    try:
        Wrapper(state, job_id).run()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
