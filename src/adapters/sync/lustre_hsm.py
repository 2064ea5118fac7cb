"""The DataSynchronizer of Lustre clusters: an elevated job archives the outputs with the HSM.

- ``start`` submits, with the cluster's ADMIN identity, one sbatch job per sync attempt, tagged
  ``obp-<run_id>-sync-<attempt>``: it runs ``lfs hsm_archive`` on the plan's files, then polls
  ``lfs hsm_state`` until every file is ARCHIVED and not DIRTY. A file that ends DIRTY (changed
  during or after its archive), or whose archive request ended without archiving it, or the
  time limit, fails the job with a message naming the files in its log. The job is found by its
  tag before anything is submitted, and after a lost sbatch reply (one job per attempt).
- ``confirm`` asks the bucket (ObjectStore.head) for every planned object: absent or of another
  size is SyncIncomplete naming those outputs. The job's exit is only a hint; the bucket decides.

Every path in the script is single-quoted, and confined to the run's folder under the data
repository association's root. Only ports are used (the gateway, the object store).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from obp_workflow.core.cluster import SAFE_PATH, ClusterHandle, KeyRole, LustreStorage
from obp_workflow.core.errors import FieldError, InvalidRequest, SubmissionUnclear, SyncIncomplete
from obp_workflow.core.jobspec import JobSpec, check_run_id, quote_word
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import LustreHsmExport, SyncedFile, SyncOutcome, SyncPlan
from obp_workflow.ports.cluster import ClusterGateway
from obp_workflow.ports.objects import ObjectStore
from obp_workflow.ports.sync import DataSynchronizer, SyncJobSubmitted, SyncStart


@dataclass(frozen=True)
class HsmSettings:
    """Where the elevated job keeps its script and log, and how long it may wait.

    ``jobs_root``: a folder the admin identity writes (one sub-folder per run), e.g. under the
    admin's home; never the run's folder, which belongs to the simulation's user.
    """

    jobs_root: str
    wait_seconds: int = 3 * 3600
    poll_seconds: float = 10.0
    lfs: str = "lfs"

    def __post_init__(self) -> None:
        if not SAFE_PATH.fullmatch(self.jobs_root) or ".." in self.jobs_root.split("/"):
            raise ValueError(f"invalid sync jobs root {self.jobs_root!r}")
        if self.wait_seconds <= 0 or self.poll_seconds <= 0:
            raise ValueError("the archive wait and poll interval must be positive")


class LustreHsmSynchronizer(DataSynchronizer):
    def __init__(
        self, gateway: ClusterGateway, objects: ObjectStore, settings: HsmSettings
    ) -> None:
        self.gateway = gateway
        self.objects = objects
        self.settings = settings

    def start(
        self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan, attempt: int
    ) -> SyncStart:
        plan = _lustre(plan)
        tag = f"{run.tag}-sync-{int(attempt)}"
        found = self.gateway.find_by_tag(cluster, tag, KeyRole.ADMIN)
        if found is not None:
            return SyncJobSubmitted(found)
        spec = self.job_spec(cluster, run, plan, attempt)
        try:
            job_id = self.gateway.submit(cluster, spec)
        except SubmissionUnclear:
            adopted = self.gateway.find_by_tag(cluster, tag, KeyRole.ADMIN)
            if adopted is None:
                raise
            job_id = adopted
        return SyncJobSubmitted(job_id)

    def confirm(self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan) -> SyncOutcome:
        plan = _lustre(plan)
        bad: list[str] = []
        files: list[SyncedFile] = []
        for f in plan.files:
            info = self.objects.head(plan.bucket, f.s3_key) if f.s3_key else None
            if info is None or info.size != f.size:
                bad.append(f.relative_path)
                continue
            files.append(SyncedFile(f.relative_path, f.size, f"s3://{plan.bucket}/{f.s3_key}"))
        if bad:
            raise SyncIncomplete(bad)
        return SyncOutcome(plan.kind, tuple(files))

    # ---------------------------------------------------------------- the elevated job

    def job_spec(
        self, cluster: ClusterHandle, run: RunHeader, plan: LustreHsmExport, attempt: int
    ) -> JobSpec:
        check_run_id(run.run_id)
        storage = cluster.storage
        if not isinstance(storage, LustreStorage):
            raise InvalidRequest([FieldError("storage", "a Lustre export needs Lustre storage")])
        if plan.bucket != storage.bucket:
            raise InvalidRequest([FieldError("bucket", "the plan's bucket is not the DRA's")])
        run_folder = posixpath.normpath(cluster.run_folder(run.run_id))
        if not run_folder.startswith(storage.dra_root + "/"):
            raise InvalidRequest(
                [FieldError("run_folder", "the run's folder is not under the DRA's root")]
            )
        paths = []
        for f in plan.files:
            path = posixpath.normpath(f.cluster_path)
            if (
                path != f.cluster_path
                or not path.startswith(run_folder + "/")
                or "\x00" in path
                or storage.s3_key(path) != f.s3_key
            ):
                raise InvalidRequest(
                    [FieldError("path", f"{f.relative_path!r} is not inside the run folder")]
                )
            paths.append(path)
        folder = posixpath.join(self.settings.jobs_root, run.run_id)
        name = f"sync-{int(attempt)}"
        limit_minutes = self.settings.wait_seconds // 60 + 10
        directives = [
            f"--output={folder}/{name}.log",
            "--open-mode=append",
            "--nodes=1",
            "--ntasks=1",
            f"--time={limit_minutes}",
        ]
        if cluster.partition:
            directives.append(f"--partition={cluster.partition}")
        if cluster.account:
            directives.append(f"--account={cluster.account}")
        lfs = quote_word(self.settings.lfs)
        body = [
            "#!/bin/bash",
            *(f"#SBATCH {d}" for d in directives),
            "",
            "# Generated by obp-workflow: the elevated HSM export of one run's outputs.",
            "set -u",
            "files=(",
            *(f"  {quote_word(p)}" for p in paths),
            ")",
            f'echo "sync {name} of run {run.run_id}: archiving ${{#files[@]}} file(s)"',
            f'if ! {lfs} hsm_archive "${{files[@]}}"; then',
            '  echo "lfs hsm_archive refused some files" >&2',
            "fi",
            f"deadline=$((SECONDS + {int(self.settings.wait_seconds)}))",
            "while :; do",
            "  waiting=() dirty=() lost=()",
            '  for f in "${files[@]}"; do',
            f'    out=$({lfs} hsm_state "$f" 2>&1) || {{ lost+=("$f: $out"); continue; }}',
            "    hex=$(printf '%s\\n' \"$out\" | tail -n 1 |"
            " sed -n 's/.*: (\\(0x[0-9a-fA-F]*\\)).*/\\1/p')",
            '    [[ -n "$hex" ]] || { lost+=("$f: unreadable state: $out"); continue; }',
            "    flags=$((hex))",
            "    if (( (flags & 0x8) && !(flags & 0x2) )); then continue; fi",
            f'    if {lfs} hsm_action "$f" 2>/dev/null | grep -q "ARCHIVE"; then',
            '      waiting+=("$f")',
            "    elif (( flags & 0x2 )); then",
            '      dirty+=("$f")',
            "    else",
            '      lost+=("$f: not archived and no archive running")',
            "    fi",
            "  done",
            "  if (( ${#dirty[@]} + ${#lost[@]} > 0 )) ||"
            " { (( ${#waiting[@]} > 0 )) && (( SECONDS >= deadline )); }; then",
            '    for f in "${dirty[@]}"; do echo "SYNC FAILED: DIRTY (changed during or after'
            ' its archive): $f" >&2; done',
            '    for f in "${lost[@]}"; do echo "SYNC FAILED: NOT ARCHIVED: $f" >&2; done',
            '    for f in "${waiting[@]}"; do echo "SYNC FAILED: archive still running after'
            f' {int(self.settings.wait_seconds)} s: $f" >&2; done',
            "    exit 1",
            "  fi",
            "  if (( ${#waiting[@]} == 0 )); then",
            '    echo "sync complete: every file archived and current"',
            "    exit 0",
            "  fi",
            f"  sleep {self.settings.poll_seconds:g}",
            "done",
            "",
        ]
        return JobSpec(
            tag=f"{run.tag}-sync-{int(attempt)}",
            run_folder=folder,
            files={f"{name}.sbatch": "\n".join(body)},
            script=f"{name}.sbatch",
            role=KeyRole.ADMIN,
        )


def _lustre(plan: SyncPlan) -> LustreHsmExport:
    if not isinstance(plan, LustreHsmExport):
        raise InvalidRequest([FieldError("plan", f"not a Lustre HSM export: {plan.kind}")])
    return plan
