"""The ClusterGateway on Slurm, reached over SSH.

- Submit: the run's folder, its files by SFTP (written then renamed), then ``sbatch --parsable``
  with the run's tag as job name and comment. A lost or unreadable reply is SubmissionUnclear:
  the application then finds the job by its tag before anything is submitted again.
- Poll: ONE ``squeue`` for every watched job of the cluster (state, reason and exit code), and
  at most ONE ``sacct`` for the jobs the controller no longer knows. A failed query is
  ClusterUnreachable (runs go STALE); a job nobody knows is UNKNOWN, never FAILED.
- Every argument is a word of an argv joined with ``shlex.join``; paths are confined to the run
  folder; job ids must be numbers.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import threading
from collections.abc import Iterator, Mapping, Sequence

import paramiko

from obp_workflow.core.cluster import SAFE_PATH, ClusterHandle, KeyRole
from obp_workflow.core.errors import (
    ClusterUnreachable,
    FieldError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    SubmissionRejected,
    SubmissionUnclear,
)
from obp_workflow.core.jobs import (
    ACCOUNTING_FIELDS,
    PHASE_OF,
    JobAccounting,
    JobObservation,
    JobPhase,
    JobState,
    parse_accounting_line,
    parse_controller_record,
    parse_exit_code,
)
from obp_workflow.core.jobspec import LOG_FILE, JobSpec, confined
from obp_workflow.core.run import TAG_PREFIX
from obp_workflow.core.text import utf8_tail
from obp_workflow.ports.cluster import ClusterGateway, OutputFile

from .connection import CommandLost, CommandResult, Endpoint, SshPool

JOB_ID = re.compile(r"^[0-9]+$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_.@+=,-]*$")
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
#: sbatch errors after which the job may nevertheless exist.
_UNCLEAR = ("Socket timed out", "timed out", "Zero Bytes were transmitted")
#: sbatch errors that mean nothing reached the controller.
_NOT_SENT = ("Unable to contact slurm controller", "Connection refused")
#: squeue's fields, '|' after each; exit_code is the raw wait status (code << 8 | signal).
#: Short on purpose: a poll of many jobs reads one line per job every cycle (no name: the ids
#: asked for are the service's own jobs).
SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,exit_code:"
SACCT_FIELDS = "JobID,State,ExitCode,JobName,Start,End,Elapsed"
FIND_WINDOW = "now-60days"
#: Above this many jobs, squeue is asked by user rather than by a list of ids.
SQUEUE_IDS_AT_MOST = 50


#: Stages a job and submits it: ``$1`` is the run folder, the rest is sbatch's arguments, the
#: files a tar archive on standard input. A fixed program: every value reaches it as an argument.
STAGE_AND_SUBMIT = (
    'folder=$1; shift; mkdir -p -- "$folder" && tar -x -f - -C "$folder" --no-same-owner'
    ' --no-same-permissions || exit 97; exec sbatch "$@"'
)
#: STAGE_AND_SUBMIT's exit status when the files could not be written (sbatch never ran).
STAGING_FAILED = 97


def _archive(files: Mapping[str, str]) -> bytes:
    """The job's files as an uncompressed tar archive of plain files, names checked."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            if not _FILE_NAME.fullmatch(name) or name in (".", ".."):
                raise InvalidRequest([FieldError("file", f"{name!r} is not a plain file name")])
            data = content.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mode = 0o644
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def _folder(run_folder: str) -> str:
    if not SAFE_PATH.fullmatch(run_folder) or ".." in run_folder.split("/"):
        raise InvalidRequest([FieldError("run_folder", "must be an absolute path of safe chars")])
    return run_folder.rstrip("/")


def _job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise InvalidRequest([FieldError("job_id", "must be a Slurm job number")])
    return job_id


class SlurmClusterGateway(ClusterGateway):
    def __init__(self, pool: SshPool) -> None:
        self.pool = pool
        #: The lines of each cluster's last poll, read: a waiting job prints the same line
        #: every cycle, and is not read again (a poll of 1,000 jobs reads only what changed).
        self._read_lines: dict[str, dict[str, JobObservation | None]] = {}

    # ---------------------------------------------------------------- submit

    def submit(self, cluster: ClusterHandle, spec: JobSpec) -> str:
        """The job's files and ``sbatch`` in one command (``STAGE_AND_SUBMIT``): the files
        arrive on its standard input as a tar archive, and ``sbatch`` runs only once every file
        is whole. One channel, where a folder, a file and a rename each would cost a round trip
        (measured: a third of a submission's CPU)."""
        endpoint = Endpoint.of(cluster, spec.role)
        folder = _folder(spec.run_folder)
        if not _TAG.fullmatch(spec.tag):
            raise InvalidRequest([FieldError("tag", "must be 1-200 of letters, digits, _ . -")])
        argv = [
            *("sh", "-c", STAGE_AND_SUBMIT, "obp-submit", folder),
            "--parsable",
            f"--job-name={spec.tag}",
            f"--comment={spec.tag}",
            f"--chdir={folder}",
            "--",
            confined(folder, spec.script),
        ]
        try:
            result = self.pool.run(endpoint, argv, stdin=_archive(spec.files))
        except CommandLost as exc:
            raise SubmissionUnclear(f"sbatch on {cluster.name}: {exc}") from None
        if result.ok:
            job_id = result.text().strip().split(";", 1)[0]
            if JOB_ID.fullmatch(job_id):
                return job_id
            raise SubmissionUnclear(f"sbatch on {cluster.name} answered {result.text()[:200]!r}")
        error = result.error_text()
        if result.exit_status == STAGING_FAILED:
            raise ClusterUnreachable(f"cannot write the job files on {endpoint}: {error}")
        if any(marker in error for marker in _NOT_SENT):
            raise ClusterUnreachable(f"the scheduler of {cluster.name} did not answer: {error}")
        if any(marker in error for marker in _UNCLEAR):
            raise SubmissionUnclear(f"sbatch on {cluster.name}: {error}")
        raise SubmissionRejected(error or f"sbatch exited with {result.exit_status}")

    # ---------------------------------------------------------------- find, poll, cancel

    def find_by_tag(
        self, cluster: ClusterHandle, tag: str, role: KeyRole = KeyRole.USER
    ) -> str | None:
        if not _TAG.fullmatch(tag):
            raise InvalidRequest([FieldError("tag", "must be 1-200 of letters, digits, _ . -")])
        endpoint = Endpoint.of(cluster, role)
        live = self._query(
            endpoint, ["squeue", "--noheader", "--states=all", f"--name={tag}", "--format=%i"]
        )
        ids = [line.strip() for line in live.text().splitlines() if JOB_ID.fullmatch(line.strip())]
        if ids:
            return max(ids, key=int)
        past = self._query(
            endpoint,
            [
                "sacct",
                "-X",
                "-n",
                "-P",
                f"--name={tag}",
                f"--starttime={FIND_WINDOW}",
                "--endtime=now",
                "--format=JobID",
            ],
        )
        ids = [line.strip() for line in past.text().splitlines() if JOB_ID.fullmatch(line.strip())]
        return max(ids, key=int) if ids else None

    def poll(self, cluster: ClusterHandle, job_ids: Sequence[str]) -> Mapping[str, JobObservation]:
        ids = list(dict.fromkeys(_job_id(j) for j in job_ids))
        if not ids:
            return {}
        endpoint = Endpoint.of(cluster, KeyRole.USER)
        wanted = set(ids)
        seen: dict[str, JobObservation] = {}
        # Few jobs: name them. Many: ask for the service's users' jobs and filter here, which
        # costs slurmctld far less than a long id list (10,000 ids: 1.6 s against 0.08 s).
        users = {cluster.ssh_user, cluster.admin_user or cluster.ssh_user}
        select = (
            f"--jobs={','.join(ids)}"
            if len(ids) <= SQUEUE_IDS_AT_MOST
            else f"--users={','.join(sorted(users))}"
        )
        live = self._query(
            endpoint,
            ["squeue", "--noheader", "--states=all", select, f"--Format={SQUEUE_FORMAT}"],
            missing_ok=True,
        )
        before = self._read_lines.get(cluster.name, {})
        read: dict[str, JobObservation | None] = {}
        for line in live.text().splitlines():
            obs = before[line] if line in before else parse_squeue_line(line)
            read[line] = obs
            if obs is not None and obs.job_id in wanted:
                seen[obs.job_id] = obs
        self._read_lines[cluster.name] = read
        # Jobs the controller has forgotten (after MinJobAge) are known only to accounting.
        ask = [j for j in ids if j not in seen]
        missing = set(ask)
        if ask:
            for line in self._sacct(endpoint, ask, SACCT_FIELDS):
                obs = parse_sacct_line(line)
                if obs is None or obs.job_id not in missing:
                    continue
                # Accounting may hold an older job with the same id (a controller whose
                # state was reset): the service's own job, named by its tag, wins.
                if obs.job_id not in seen or _job_name(line).startswith(TAG_PREFIX):
                    seen[obs.job_id] = obs
        return {
            j: seen.get(j) or JobObservation.unknown(j, "neither squeue nor sacct knows the job")
            for j in ids
        }

    def accounting(
        self, cluster: ClusterHandle, job_id: str, tag: str | None = None
    ) -> JobAccounting | None:
        endpoint = Endpoint.of(cluster, KeyRole.USER)
        wanted = _job_id(job_id)
        found = [
            record
            for record in map(
                parse_accounting_line, self._sacct(endpoint, [wanted], ACCOUNTING_FIELDS)
            )
            if record is not None and record.job_id == wanted
        ]
        # The job named ``tag``; without one, any job but slurmdbd's placeholder.
        records = [r for r in found if (r.name == tag if tag else r.name != ACCOUNTING_PLACEHOLDER)]
        if not records and any(r.name == ACCOUNTING_PLACEHOLDER for r in found):
            # slurmdbd holds a placeholder until the job's own record arrives, seconds after
            # the job ends; the controller knows the final record at once.
            held = self._controller_record(endpoint, wanted)
            if held is not None:
                return held if tag is None or held.name == tag else None
            raise ServiceUnavailable(
                f"the accounting of job {wanted} on {cluster.name} is not complete yet"
            )
        # ISO times sort as text; the last submitted wins.
        return max(records, key=lambda r: r.submitted or "", default=None)

    def cancel(self, cluster: ClusterHandle, job_id: str, role: KeyRole = KeyRole.USER) -> None:
        endpoint = Endpoint.of(cluster, role)
        try:
            result = self.pool.run(endpoint, ["scancel", "--", _job_id(job_id)])
        except CommandLost as exc:
            raise ClusterUnreachable(f"scancel on {cluster.name}: {exc}") from None
        error = result.error_text()
        if result.ok or "already completing or completed" in error or "Invalid job id" in error:
            return
        raise ClusterUnreachable(f"scancel {job_id} on {cluster.name} failed: {error}")

    # ---------------------------------------------------------------- files

    def tail_log(self, cluster: ClusterHandle, run_folder: str, max_bytes: int = 65536) -> str:
        endpoint = Endpoint.of(cluster, KeyRole.USER)
        path = confined(_folder(run_folder), LOG_FILE)
        if max_bytes <= 0:
            return ""
        size = int(max_bytes)
        result = self._run(endpoint, ["tail", "-c", str(size), "--", path])
        if not result.ok:
            if "No such file" in result.error_text():
                return ""
            raise ClusterUnreachable(
                f"cannot read the log on {cluster.name}: {result.error_text()}"
            )
        return utf8_tail(result.stdout, size)

    def list_outputs(self, cluster: ClusterHandle, run_folder: str) -> Sequence[OutputFile]:
        endpoint = Endpoint.of(cluster, KeyRole.USER)
        folder = _folder(run_folder)
        result = self._run(endpoint, ["find", folder, "-type", "f", "-printf", "%s\\t%P\\0"])
        if not result.ok:
            if "No such file" in result.error_text():
                return []
            raise ClusterUnreachable(
                f"cannot list outputs on {cluster.name}: {result.error_text()}"
            )
        outputs = []
        for entry in result.stdout.split(b"\0"):
            if not entry:
                continue
            size, _, name = entry.partition(b"\t")
            outputs.append(OutputFile(name.decode(errors="surrogateescape"), int(size)))
        return sorted(outputs, key=lambda o: o.path)

    def fetch_output(self, cluster: ClusterHandle, run_folder: str, path: str) -> Iterator[bytes]:
        endpoint = Endpoint.of(cluster, KeyRole.USER)
        full = confined(_folder(run_folder), path)
        connection = self.pool.connection(endpoint)
        try:
            with connection.sftp_lock:
                sftp = connection.sftp()
                info = sftp.lstat(full)
                if info.st_mode is None or not stat.S_ISREG(info.st_mode):
                    raise NotFound(f"output {path} is not a regular file")
                handle = sftp.open(full, "rb")
                handle.prefetch(info.st_size)
        except FileNotFoundError:
            raise NotFound(f"output {path} not found in the run folder") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise ClusterUnreachable(f"cannot read {path} on {cluster.name}: {exc}") from None
        return _stream(handle, connection.sftp_lock)

    # ---------------------------------------------------------------- plumbing

    def _run(self, endpoint: Endpoint, argv: Sequence[str]) -> CommandResult:
        try:
            return self.pool.run(endpoint, argv)
        except CommandLost as exc:
            raise ClusterUnreachable(str(exc)) from None

    def _sacct(self, endpoint: Endpoint, job_ids: Sequence[str], fields: str) -> list[str]:
        """The allocation lines (no steps) that accounting holds for these jobs, every user's."""
        argv = ["sacct", "-X", "-n", "-P", "--allusers", f"--jobs={','.join(job_ids)}"]
        return self._query(endpoint, [*argv, f"--format={fields}"]).text().splitlines()

    def _controller_record(self, endpoint: Endpoint, job_id: str) -> JobAccounting | None:
        """The finished job's record as slurmctld still holds it, or None."""
        argv = ["scontrol", "-o", "show", "job", job_id]
        return parse_controller_record(self._query(endpoint, argv, missing_ok=True).text())

    def _query(
        self, endpoint: Endpoint, argv: Sequence[str], *, missing_ok: bool = False
    ) -> CommandResult:
        """A scheduler query; its failure means "no answer", never "no jobs"."""
        try:
            result = self.pool.run(endpoint, argv, query=True)
        except CommandLost as exc:
            raise ClusterUnreachable(f"{argv[0]} on {endpoint.cluster}: {exc}") from None
        if result.ok:
            return result
        if missing_ok and "Invalid job id" in result.error_text():
            return CommandResult(0, b"", b"")  # squeue with only unknown ids: ask sacct
        raise ClusterUnreachable(
            f"{argv[0]} on {endpoint.cluster} failed ({result.exit_status}): {result.error_text()}"
        )


_LIVE = (JobPhase.WAITING, JobPhase.RUNNING)


def _stream(handle: paramiko.SFTPFile, lock: threading.RLock) -> Iterator[bytes]:
    """The file's bytes, in chunks. Each read, and the close, holds the connection's SFTP lock:
    paramiko's SFTPClient reads its replies in the thread that waits for one, so two threads
    reading files of one connection at once take each other's replies and wait forever."""
    try:
        while True:
            with lock:
                chunk = handle.read(1 << 20)
            if not chunk:
                return
            yield chunk
    finally:
        with lock:
            handle.close()


def parse_squeue_line(line: str) -> JobObservation | None:
    """``JobID|State|Reason|exit_code``; None for a line that is not one."""
    parts = line.strip().split("|", 4)
    if len(parts) < 4 or not JOB_ID.fullmatch(parts[0].strip()):
        return None
    state = JobState.parse(parts[1])
    code = signal = None
    if PHASE_OF[state] not in _LIVE and parts[3].strip().isdigit():
        status = int(parts[3])
        code, signal = status >> 8, status & 0x7F
    return JobObservation(parts[0].strip(), state, code, signal, raw=line.strip(), source="squeue")


#: The name slurmdbd gives the record it creates for a job whose own record has not arrived.
ACCOUNTING_PLACEHOLDER = "allocation"


def _job_name(sacct_line: str) -> str:
    parts = sacct_line.strip().split("|")
    return parts[3] if len(parts) > 3 else ""


def parse_sacct_line(line: str) -> JobObservation | None:
    """``JobID|State|ExitCode|...``; None for a line that is not one (job steps included)."""
    parts = line.strip().split("|")
    if len(parts) < 3 or not JOB_ID.fullmatch(parts[0]):
        return None
    state = JobState.parse(parts[1])
    code, signal = parse_exit_code(parts[2])
    if state is JobState.UNKNOWN:
        return JobObservation.unknown(parts[0], line.strip())
    if PHASE_OF[state] in _LIVE:
        code = signal = None
    return JobObservation(parts[0], state, code, signal, raw=line.strip(), source="sacct")
