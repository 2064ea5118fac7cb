"""The process scheduler's state on disk, shared by its gateway and its job wrappers.

Everything lives under ``<runs_root>/.scheduler`` (a run id never starts with a dot):

- ``next-id`` (and ``next-id.lock``): the next job id to give;
- ``jobs/<id>.json``: the job's live record (what ``squeue`` would show);
- ``jobs/<id>.lock``: held by the job's wrapper process for as long as it lives;
- ``jobs/<id>.cancel``, ``.release``, ``.limit``: requests to the wrapper (``scancel``,
  ``scontrol release``, ``scontrol update TimeLimit=``), which looks for them as it waits;
- ``jobs/<id>.wrapper.log``: the wrapper's own errors (never the job's output);
- ``accounting/<id>.json``: the same record, kept when the live one is purged (``sacct``);
- ``tags/<tag>/<id>``: the jobs carrying a tag;
- ``slots/<n>.lock``: held by the wrapper of a running job.

A record is written whole to a temporary file renamed over the old one, so a reader sees the
old or the new record, never half of one. One writer at a time: the wrapper while it lives
(it holds the job's lock), the gateway only once it holds that lock itself (the wrapper is gone).

Standard library only: the wrapper imports this module and nothing heavier.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

STATE_DIR = ".scheduler"
SCHEMA = 1
#: How often a wrapper looks at its requests, its job and its time limit.
TICK_SECONDS = 0.1

LIVE_STATES = ("PENDING", "RUNNING")


@dataclass
class JobRecord:
    """One job, as the scheduler knows it. Times are seconds since the epoch."""

    job_id: str
    tag: str
    run_folder: str
    script: str  # absolute path of the batch script
    output: str  # absolute path of the job's stdout (and stderr unless ``error``)
    error: str | None
    append: bool
    hold: bool
    time_limit: float | None  # seconds from the start; None: no limit
    grace: float  # seconds between SIGTERM and SIGKILL
    slots: int
    host: str
    submitted: float
    state: str = "PENDING"
    reason: str = "None"  # why a job waits, as Slurm says it (Resources, JobHeldUser)
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""  # what ended the job, when it was not its own exit
    boot_id: str = ""
    wrapper_pid: int | None = None
    wrapper_start: int | None = None  # the process's start time, in clock ticks since boot
    job_pgid: int | None = None  # the batch script's process (and process group)
    job_start: int | None = None
    slot: int | None = None
    schema: int = SCHEMA

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobRecord:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError("not a job record of schema 1")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class SchedulerDir:
    """The paths of the scheduler's state under one runs root."""

    def __init__(self, runs_root: str | Path) -> None:
        self.root = Path(runs_root) / STATE_DIR
        self.jobs = self.root / "jobs"
        self.accounting = self.root / "accounting"
        self.tags = self.root / "tags"
        self.slots = self.root / "slots"

    def create(self) -> None:
        for folder in (self.root, self.jobs, self.accounting, self.tags, self.slots):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)

    def record(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.json"

    def accounted(self, job_id: str) -> Path:
        return self.accounting / f"{job_id}.json"

    def lock(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.lock"

    def request(self, job_id: str, what: str) -> Path:
        """``cancel``, ``release`` or ``limit``."""
        return self.jobs / f"{job_id}.{what}"

    def wrapper_log(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.wrapper.log"

    def slot(self, n: int) -> Path:
        return self.slots / f"{n}.lock"

    def last_words(self, job_id: str) -> str:
        """The last line the job's wrapper wrote to its log of errors; empty when none."""
        try:
            with self.wrapper_log(job_id).open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - 2000))
                lines = log.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    # ---------------------------------------------------------------- records

    def save(self, record: JobRecord) -> None:
        """Write the record to accounting and to the live queue (accounting first: it is the
        one that is never purged)."""
        text = record.to_json()
        write_atomically(self.accounted(record.job_id), text)
        write_atomically(self.record(record.job_id), text)

    def load(self, job_id: str) -> tuple[JobRecord, str] | None:
        """The job's record and where it was read (``squeue``: the live queue, ``sacct``:
        accounting only); None when neither knows the job. ValueError for a damaged record."""
        for path, source in ((self.record(job_id), "squeue"), (self.accounted(job_id), "sacct")):
            try:
                text = path.read_bytes()
            except FileNotFoundError:
                continue
            return JobRecord.from_json(text), source
        return None


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def try_lock(path: Path, *, create: bool = True) -> int | None:
    """An exclusive lock on ``path`` as an open descriptor, or None when another holds it (or,
    without ``create``, when the file does not exist)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (waiting for it) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ==================================================================== processes


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from the state on (the name, in parentheses, may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_start(pid: int) -> int | None:
    """When the process started, in clock ticks since boot: with the pid, it names one process
    (a pid is reused, a pid and its start time are not). None when there is no such process."""
    stat = _stat_fields(pid)
    return int(stat[19]) if stat and len(stat) > 19 else None


def same_process(pid: int | None, start: int | None, boot: str) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` on this boot."""
    return (
        pid is not None
        and start is not None
        and boot == boot_id()
        and (process_start(pid) == start)
    )


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is alive (zombies waiting for their parent are not)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no /proc: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _stat_fields(int(entry))
        if stat and len(stat) > 2 and stat[2] == str(pgid) and stat[0] not in ("Z", "X"):
            return True
    return False


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_group(pgid: int, grace: float, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds.
    ``reap`` collects the group's leader when it is our child."""
    signal_group(pgid, signal.SIGCONT)
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_alive(pgid):
            return
        time.sleep(TICK_SECONDS)
    signal_group(pgid, signal.SIGKILL)


def is_missing(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ENOTDIR)
