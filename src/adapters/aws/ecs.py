"""InstanceOrchestrator over Amazon ECS: one workflow container task per Virtual Lab project.

A project's tasks are found by ``startedBy`` (the project key; ECS allows it as the only filter
of ListTasks), then described with their tags. A task is the project's live instance while its
desired status is RUNNING and its last status is not one of the stopping ones.

Exactly one start per project, even when many callers ``ensure`` at once:

* in one process, a lock per project serialises ``ensure``;
* across processes, RunTask carries a ``clientToken`` every caller derives alike from the
  project and the current time window (``EcsTaskConfig.token_window_seconds``, 15 minutes by
  default). ECS runs a token once and answers any repeat with the original result, so
  concurrent callers that all saw no live task start one task between them; botocore's own
  retries of a RunTask whose reply was lost repeat the token too. A repeat of a token whose
  task has stopped since (a stop, then an ``ensure`` in the same window) is recognised by
  describing the answered task, and the next token of the window (generation 1, 2, ...) is
  tried: every caller walks the same sequence, so they still agree. A token sent again with
  different parameters (a new deployment in the same window) is a ConflictException that names
  the task the token started, which is then used.
* Why a window of 15 minutes: a token must be shared by calls that race (they are seconds
  apart, and an application retry after a timeout comes within minutes), so the window should
  be long; and a repeated token's task must still be describable to know whether it stopped
  (ECS keeps stopped tasks visible for about an hour, and remembers tokens for 24 hours), so
  it must stay well under an hour. Fifteen minutes also bounds the walk above to the starts of
  one window (``max_starts_per_window``, beyond which a crash-looping instance is not started
  again until the next window).
* Two callers that straddle a window edge use different tokens and may start two tasks: every
  ``ensure`` that sees more than one live task keeps the oldest (creation time, then ARN) and
  stops the others, so duplicates do not outlive the next ``ensure``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from obp_workflow.core.errors import FieldError, InvalidRequest, ServiceUnavailable
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.instances import InstanceInfo, InstanceOrchestrator

if TYPE_CHECKING:
    from mypy_boto3_ecs.client import ECSClient
    from mypy_boto3_ecs.literals import LaunchTypeType
    from mypy_boto3_ecs.type_defs import KeyValuePairTypeDef, TagTypeDef, TaskTypeDef

log = logging.getLogger(__name__)

VIRTUAL_LAB_TAG = "obp:costcenter:vlabid"
PROJECT_TAG = "obp:costcenter:project"
VIRTUAL_LAB_ENV = "OBP_VIRTUAL_LAB_ID"
PROJECT_ENV = "OBP_PROJECT_ID"

_STARTED_BY = re.compile(r"[A-Za-z0-9/_-]{1,128}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Environment names that suggest a secret: secrets reach the container through the task
#: definition's ``secrets`` (Secrets Manager references), never as plain environment values.
_SECRET_LIKE = re.compile(
    r"SECRET|TOKEN|PASSW|PRIVATE|CREDENTIAL|API_?KEY|ACCESS_?KEY|SSH_?KEY", re.IGNORECASE
)
_STOPPING = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED"})
_LAUNCH_TYPES = frozenset({"EC2", "FARGATE", "EXTERNAL", "MANAGED_INSTANCES"})
_MAX_TAGS = 50
_MAX_TOKEN = 64
_MAX_REASON = 255
_DESCRIBE_BATCH = 100
_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class EcsTaskConfig:
    """How a project's workflow container is run. Validated when built."""

    cluster: str
    task_definition: str  # family, family:revision or ARN
    container_name: str  # the container of the task definition that gets the project's env
    subnets: Sequence[str]
    security_groups: Sequence[str] = ()
    assign_public_ip: bool = False
    launch_type: str = "FARGATE"
    #: Plain, non-secret settings given to every instance (log level, service URLs...).
    extra_environment: Mapping[str, str] = field(default_factory=dict)
    #: Cost-centre tags added to the project's own (``obp:costcenter:vlabid``/``project``).
    cost_tags: Mapping[str, str] = field(default_factory=dict)
    token_window_seconds: int = 900
    max_starts_per_window: int = 16

    def __post_init__(self) -> None:
        problems = []
        for name in ("cluster", "task_definition", "container_name"):
            if not getattr(self, name):
                problems.append(f"{name} is required")
        if not self.subnets:
            problems.append("at least one subnet is required (awsvpc networking)")
        if self.launch_type not in _LAUNCH_TYPES:
            problems.append(f"launch_type must be one of {sorted(_LAUNCH_TYPES)}")
        for env_name in self.extra_environment:
            if not _ENV_NAME.fullmatch(env_name):
                problems.append(f"environment name {env_name!r} is not a valid variable name")
            elif env_name in (VIRTUAL_LAB_ENV, PROJECT_ENV):
                problems.append(f"environment name {env_name} is set by the orchestrator")
            elif _SECRET_LIKE.search(env_name):
                problems.append(
                    f"environment name {env_name} looks like a secret: give secrets to the "
                    "task definition's 'secrets' (Secrets Manager), not as plain environment"
                )
        for key in self.cost_tags:
            if key in (VIRTUAL_LAB_TAG, PROJECT_TAG) or key.startswith("aws:"):
                problems.append(f"tag {key} is reserved")
        if len(self.cost_tags) + 2 > _MAX_TAGS:
            problems.append(f"at most {_MAX_TAGS - 2} cost tags (ECS allows {_MAX_TAGS} tags)")
        if not 60 <= self.token_window_seconds <= 3600:
            problems.append("token_window_seconds must be between 60 and 3600 (see ecs.py)")
        if self.max_starts_per_window < 1:
            problems.append("max_starts_per_window must be >= 1")
        if problems:
            raise ValueError("invalid ECS task configuration: " + "; ".join(problems))
        # Freeze what the caller may still hold a reference to.
        object.__setattr__(self, "subnets", tuple(self.subnets))
        object.__setattr__(self, "security_groups", tuple(self.security_groups))
        object.__setattr__(
            self, "extra_environment", MappingProxyType(dict(self.extra_environment))
        )
        object.__setattr__(self, "cost_tags", MappingProxyType(dict(self.cost_tags)))


class EcsInstanceOrchestrator(InstanceOrchestrator):
    def __init__(
        self,
        client: ECSClient,
        config: EcsTaskConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._config = config
        self._wall_clock = wall_clock
        self._locks: dict[ProjectRef, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._failed_tokens: dict[str, int] = {}  # token -> its window

    # ------------------------------------------------------------------ the port

    def ensure(self, project: ProjectRef) -> InstanceInfo:
        _check_started_by(project)
        with self._lock_for(project):
            kept = self._keep_oldest(project, self._tasks(project))
            if kept is not None:
                return _info(project, kept)
            started = self._start(project)
            # Another process may have started one under another token (a window edge): keep
            # one. ListTasks may not list a task this fresh yet: count the started one in.
            listed = [t for t in self._tasks(project) if t.get("taskArn") != started["taskArn"]]
            kept = self._keep_oldest(project, [*listed, started])
            return _info(project, kept if kept is not None else started)

    def describe(self, project: ProjectRef) -> InstanceInfo | None:
        _check_started_by(project)
        tasks = self._tasks(project)
        live = sorted((t for t in tasks if _is_live(t)), key=_age)
        if live:
            return _info(project, live[0])
        # ECS lists stopped tasks for a while (at least an hour): the latest one tells why.
        ended = sorted(tasks, key=lambda t: t.get("stoppedAt") or t.get("createdAt") or _EARLIEST)
        return _info(project, ended[-1]) if ended else None

    def stop(self, project: ProjectRef, reason: str) -> None:
        _check_started_by(project)
        with self._lock_for(project):
            for task in self._tasks(project):
                if task.get("desiredStatus") != "STOPPED":
                    self._stop_task(project, task["taskArn"], reason)

    # ------------------------------------------------------------------ starting

    def client_token(self, project: ProjectRef, window: int, generation: int) -> str:
        """The RunTask token of a project's ``generation``-th start in a time window.

        Depends only on what every caller agrees on (cluster, project, window, generation), not
        on the task's parameters: callers running different versions of the configuration then
        meet in a ConflictException instead of starting two tasks."""
        material = f"{self._config.cluster}\n{project.key}\n{window}\n{generation}"
        digest = hashlib.sha256(material.encode()).hexdigest()[:40]
        token = f"obp-wf-{window}-{generation}-{digest}"
        return token[:_MAX_TOKEN]

    def _start(self, project: ProjectRef) -> TaskTypeDef:
        """RunTask through the window's tokens until one gives a live task; that task."""
        config = self._config
        window = int(self._wall_clock() // config.token_window_seconds)
        for generation in range(config.max_starts_per_window):
            token = self.client_token(project, window, generation)
            with self._locks_guard:
                if token in self._failed_tokens:
                    continue
            try:
                answer = self._client.run_task(
                    cluster=config.cluster,
                    taskDefinition=config.task_definition,
                    launchType=cast("LaunchTypeType", config.launch_type),
                    count=1,
                    networkConfiguration={
                        "awsvpcConfiguration": {
                            "subnets": list(config.subnets),
                            "securityGroups": list(config.security_groups),
                            "assignPublicIp": "ENABLED" if config.assign_public_ip else "DISABLED",
                        }
                    },
                    overrides={
                        "containerOverrides": [
                            {
                                "name": config.container_name,
                                "environment": self._environment(project),
                            }
                        ]
                    },
                    startedBy=project.key,
                    tags=self._tags(project),
                    clientToken=token,
                )
            except ClientError as exc:
                if _code(exc) != "ConflictException":
                    raise _unavailable("RunTask", project, exc) from exc
                # The token already started a task with other parameters: that task is ours.
                arns = [str(a) for a in cast("dict[str, Any]", exc.response).get("resourceIds", [])]
                live = [t for t in self._describe(project, arns) if _is_live(t)]
                if live:
                    return live[0]
                continue
            except BotoCoreError as exc:
                raise _unavailable("RunTask", project, exc) from exc
            failures = answer.get("failures", [])
            if failures:
                # Unverified whether ECS answers a repeat of this token with the same failure:
                # this process does not use it again (others walk past it the same way).
                with self._locks_guard:
                    self._failed_tokens = {
                        t: w for t, w in self._failed_tokens.items() if w >= window
                    }
                    self._failed_tokens[token] = window
                reasons = "; ".join(
                    (f.get("reason") or "no reason given")
                    + (f" ({f['detail']})" if f.get("detail") else "")
                    + (f" [{f['arn']}]" if f.get("arn") else "")
                    for f in failures
                )
                raise ServiceUnavailable(
                    f"ECS could not start the workflow instance of project {project.key}: {reasons}"
                )
            answered = [t for t in answer.get("tasks", []) if t.get("taskArn")]
            if not answered:
                raise ServiceUnavailable(
                    f"ECS RunTask for project {project.key} answered neither a task nor a failure"
                )
            # The answer may repeat an earlier start of this token: look at the task as it is
            # now. A task too fresh to be described yet is the one just started, as answered.
            current = {t["taskArn"]: t for t in self._describe(project, [answered[0]["taskArn"]])}
            task = current.get(answered[0]["taskArn"], answered[0])
            if _is_live(task):
                log.info(
                    "workflow instance of project %s: task %s (token generation %d)",
                    project.key,
                    task["taskArn"],
                    generation,
                )
                return task
            log.info(
                "project %s: token generation %d already started task %s, now %s; next one",
                project.key,
                generation,
                task["taskArn"],
                task.get("lastStatus"),
            )
        raise ServiceUnavailable(
            f"{config.max_starts_per_window} workflow instances of project {project.key} were "
            f"started in the current {config.token_window_seconds} s window and none is live: "
            "not starting another before the next window (see the stopped tasks' reasons)"
        )

    def _environment(self, project: ProjectRef) -> list[KeyValuePairTypeDef]:
        env = {
            **self._config.extra_environment,
            VIRTUAL_LAB_ENV: project.virtual_lab_id,
            PROJECT_ENV: project.project_id,
        }
        return [{"name": name, "value": value} for name, value in env.items()]

    def _tags(self, project: ProjectRef) -> list[TagTypeDef]:
        tags = {
            **self._config.cost_tags,
            VIRTUAL_LAB_TAG: project.virtual_lab_id,
            PROJECT_TAG: project.project_id,
        }
        return [{"key": key, "value": value} for key, value in tags.items()]

    # ------------------------------------------------------------------ finding and stopping

    def _tasks(self, project: ProjectRef) -> list[TaskTypeDef]:
        arns: list[str] = []
        try:
            pages = self._client.get_paginator("list_tasks").paginate(
                cluster=self._config.cluster, startedBy=project.key
            )
            for page in pages:
                arns.extend(a for a in page.get("taskArns", []) if a not in arns)
        except (ClientError, BotoCoreError) as exc:
            raise _unavailable("ListTasks", project, exc) from exc
        return self._describe(project, arns)

    def _describe(self, project: ProjectRef, arns: Sequence[str]) -> list[TaskTypeDef]:
        """The tasks as they are now; tasks ECS no longer knows (MISSING) are left out."""
        found: list[TaskTypeDef] = []
        for start in range(0, len(arns), _DESCRIBE_BATCH):
            try:
                answer = self._client.describe_tasks(
                    cluster=self._config.cluster,
                    tasks=list(arns[start : start + _DESCRIBE_BATCH]),
                    include=["TAGS"],
                )
            except (ClientError, BotoCoreError) as exc:
                raise _unavailable("DescribeTasks", project, exc) from exc
            found.extend(t for t in answer.get("tasks", []) if t.get("taskArn"))
        return found

    def _keep_oldest(self, project: ProjectRef, tasks: Iterable[TaskTypeDef]) -> TaskTypeDef | None:
        """The oldest live task; any other live one is a duplicate and is stopped."""
        live = sorted((t for t in tasks if _is_live(t)), key=_age)
        if not live:
            return None
        keep = live[0]
        for duplicate in live[1:]:
            log.warning(
                "project %s has %d live workflow instances: stopping %s, keeping %s",
                project.key,
                len(live),
                duplicate["taskArn"],
                keep["taskArn"],
            )
            self._stop_task(
                project,
                duplicate["taskArn"],
                f"duplicate workflow instance of project {project.key}; "
                f"kept {keep['taskArn'].rsplit('/', 1)[-1]}",
            )
        return keep

    def _stop_task(self, project: ProjectRef, arn: str, reason: str) -> None:
        try:
            self._client.stop_task(
                cluster=self._config.cluster, task=arn, reason=reason[:_MAX_REASON]
            )
        except ClientError as exc:
            # Stopping a task that is already gone is done (stop is idempotent).
            if not any(_is_live(t) for t in self._describe(project, [arn])):
                log.info("task %s of project %s already gone (%s)", arn, project.key, _code(exc))
                return
            raise _unavailable("StopTask", project, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("StopTask", project, exc) from exc

    def _lock_for(self, project: ProjectRef) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(project, threading.Lock())


def _check_started_by(project: ProjectRef) -> None:
    if not _STARTED_BY.fullmatch(project.key):
        raise InvalidRequest(
            [
                FieldError(
                    "project", "key must be <= 128 characters of [A-Za-z0-9-/_] (ECS startedBy)"
                )
            ]
        )


def _is_live(task: TaskTypeDef) -> bool:
    return task.get("desiredStatus") == "RUNNING" and task.get("lastStatus") not in _STOPPING


def _age(task: TaskTypeDef) -> tuple[datetime, str]:
    return (task.get("createdAt") or _LATEST, task.get("taskArn", ""))


def _info(project: ProjectRef, task: TaskTypeDef) -> InstanceInfo:
    return InstanceInfo(
        project=project,
        instance_id=task["taskArn"],
        status=task.get("lastStatus", "PROVISIONING"),
        started_at=task.get("createdAt") or task.get("startedAt"),
        stop_reason=task.get("stoppedReason") or task.get("stopCode"),
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(
    operation: str, project: ProjectRef, exc: ClientError | BotoCoreError
) -> ServiceUnavailable:
    if isinstance(exc, BotoCoreError):
        return ServiceUnavailable(
            f"ECS unreachable during {operation} for project {project.key}: "
            f"{type(exc).__name__}: {exc}"
        )
    code = _code(exc)
    message = str(exc.response.get("Error", {}).get("Message", ""))
    if code == "ClusterNotFoundException":
        return ServiceUnavailable(
            f"ECS cluster of the workflow instances not found during {operation} for project "
            f"{project.key}: check the orchestrator's configuration ({message})"
        )
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return ServiceUnavailable(
        f"ECS {operation} failed for project {project.key}: {code or 'error'}"
        + (f": {message}" if message else "")
        + (f" (HTTP {status})" if status else "")
    )
