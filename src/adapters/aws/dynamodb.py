"""A RunRepository in one DynamoDB table (boto3 low-level client, built by the composition root).

Items of the table (partition key ``pk``, sort key ``sk``):

- a run: ``pk`` = project key, ``sk`` = ``run#`` + run id; ``record`` (``core.records.dumps``:
  JSON text, or zlib-compressed binary above 64 KB so that a run with thousands of events fits
  in an item),
  ``state``, ``version`` (the optimistic concurrency token), ``created_at``, ``schema``,
  ``idem`` (its idempotency key, if any), and the keys of three indexes:
  ``gsi1pk``/``gsi1sk`` = project / position (creation instant in UTC, then run id) for
  listing a project's runs newest first; ``active_pk``/``active_sk`` = project / run id,
  present only while the run is not terminal (the index projects ``state`` and ``watch_job``:
  a ``RunBrief``, never the record); ``watch_pk``/``watch_sk`` = project / run id with
  ``watch_job``, ``watch_raw``, ``watch_stale`` (the run's ``JobWatch``), present only while the
  run has a job to watch. The last two indexes are sparse and keyed by project: a worker's
  ``list_active(project)`` and ``list_watched(project)`` are one query of its own partition
  each, reading no record, whatever the number of projects (``docs/architecture.md``, "The
  runs table at 1,000 projects"); the listings across every project scan an index and are for
  operators and tests.
- an idempotency key: ``pk`` = project key, ``sk`` = ``idem#`` + key, ``run_id``. It is
  written in one transaction with its run, each conditioned on ``attribute_not_exists``: a
  taken key is IdempotencyConflict, an existing run id is Conflict, and neither is ever half
  written. The ``run#``/``idem#`` prefixes keep the two kinds of item apart whatever the ids.

``save`` is a PutItem conditioned on the stored ``version``: ConditionalCheckFailed is Conflict
(or NotFound) and the stored run stays as it was. A write whose reply was lost and that
botocore retried is recognised (a retried call that finds exactly its own record) and is a
success, not a Conflict; a caller repeating a write itself still gets Conflict.

Reads of one run are strongly consistent. Listings read global secondary indexes, which
DynamoDB keeps eventually consistent (usually well under a second): a run just added or
saved can be missing from, or stale in, a listing for that long, never from ``get``.

Cursors are opaque, bound to the project and the state filter, and carry only a position:
the partition a query reads always comes from the caller's project, never from a cursor.
Every ClientError and BotoCoreError leaves as a domain error.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from obp_workflow.core.cursors import decode_cursor, encode_cursor, filter_key, position
from obp_workflow.core.errors import (
    Conflict,
    CorruptRecord,
    DomainError,
    FieldError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.records import SCHEMA_VERSION, dumps, intact, loads_stored
from obp_workflow.core.run import JobWatch, RunBrief, RunState, SimulationRun
from obp_workflow.ports.runs import Page, RunRepository

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        CreateTableInputTypeDef,
        GlobalSecondaryIndexTypeDef,
        QueryInputTypeDef,
        ScanInputTypeDef,
        TransactWriteItemTypeDef,
    )

    Item = Mapping[str, AttributeValueTypeDef]

RUN_PREFIX = "run#"
IDEM_PREFIX = "idem#"
BY_PROJECT_INDEX = "by-project"
ACTIVE_INDEX = "active"
WATCHED_INDEX = "watched"
#: What the watched index holds besides its keys: the ``JobWatch``, and no record.
WATCH_ATTRIBUTES = ("watch_job", "watch_raw", "watch_stale")
#: DynamoDB's limit on a sort key value, in bytes.
_MAX_SORT_KEY = 1024
#: How often a transaction cancelled by a concurrent one (TransactionConflict) is tried.
_TRANSACTION_ATTEMPTS = 5
_CONDITION_FAILED = "ConditionalCheckFailedException"

#: Records above this size are stored compressed (binary); below, as readable JSON text.
COMPRESS_ABOVE = 64 * 1024
#: The largest compressed record written: an item holds at most 400 KB with its other
#: attributes and keys.
MAX_RECORD_BYTES = 350 * 1024
#: The largest record a compressed one may inflate to (a guard against a damaged item).
MAX_INFLATED_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


def table_schema(table_name: str) -> CreateTableInputTypeDef:
    """The CreateTable arguments of the runs table (for the tests and a deployment template)."""

    def index(name: str, keys: tuple[str, str], extra: list[str]) -> GlobalSecondaryIndexTypeDef:
        return {
            "IndexName": name,
            "KeySchema": [
                {"AttributeName": keys[0], "KeyType": "HASH"},
                {"AttributeName": keys[1], "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": extra},
        }

    keys = ["pk", "sk", "gsi1pk", "gsi1sk", "active_pk", "active_sk", "watch_pk", "watch_sk"]
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": k, "AttributeType": "S"} for k in keys],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            index(BY_PROJECT_INDEX, ("gsi1pk", "gsi1sk"), ["record", "state"]),
            index(ACTIVE_INDEX, ("active_pk", "active_sk"), ["state", "watch_job"]),
            index(WATCHED_INDEX, ("watch_pk", "watch_sk"), [*WATCH_ATTRIBUTES]),
        ],
    }


def create_table(client: DynamoDBClient, table_name: str, *, wait_seconds: int = 120) -> None:
    """Create the runs table (nothing when it exists) and wait until it is ACTIVE."""
    try:
        client.create_table(**table_schema(table_name))
    except ClientError as exc:
        if _code(exc) != "ResourceInUseException":
            raise _unavailable(exc, table_name, f"creating table {table_name}") from None
    except BotoCoreError as exc:
        raise _unreachable(exc, f"creating table {table_name}") from None
    try:
        client.get_waiter("table_exists").wait(
            TableName=table_name,
            WaiterConfig={"Delay": 1, "MaxAttempts": max(1, wait_seconds)},
        )
    except (ClientError, BotoCoreError) as exc:
        raise ServiceUnavailable(
            f"DynamoDB table {table_name} did not become ACTIVE: {type(exc).__name__}"
        ) from None


class DynamoRunRepository(RunRepository):
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self.table_name = table_name

    def __repr__(self) -> str:
        return f"DynamoRunRepository(table_name={self.table_name!r})"

    # ---------------------------------------------------------------- writes

    def add(self, run: SimulationRun) -> None:
        item = _item(run)
        key = run.header.idempotency_key
        if key is None:
            self._put_new(run, item)
            return
        idem: Item = {
            "pk": {"S": run.project.key},
            "sk": {"S": IDEM_PREFIX + key},
            "run_id": {"S": run.run_id},
        }
        both: list[TransactWriteItemTypeDef] = [
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": written,
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            for written in (item, idem)
        ]
        for attempt in range(_TRANSACTION_ATTEMPTS):
            with self._aws(f"adding run {run.run_id}"):
                try:
                    # botocore gives the call a ClientRequestToken: its own retries of a
                    # transaction whose reply was lost are answered as the first success.
                    self._client.transact_write_items(TransactItems=both)
                    return
                except ClientError as exc:
                    if _code(exc) != "TransactionCanceledException":
                        raise
                    reasons = [
                        str(r.get("Code", "")) for r in exc.response.get("CancellationReasons", [])
                    ]
                    if reasons[:1] == ["ConditionalCheckFailed"]:
                        raise Conflict(f"run {run.run_id} exists already") from None
                    if reasons[1:2] == ["ConditionalCheckFailed"]:
                        raise IdempotencyConflict(
                            f"idempotency key already used in project {run.project}"
                        ) from None
                    if "TransactionConflict" not in reasons:
                        raise
            # Another transaction held one of the items: wait a little (jittered), try again.
            time.sleep(random.uniform(0, 0.05 * 2**attempt))  # noqa: S311
        raise ServiceUnavailable(
            f"run {run.run_id} could not be added: concurrent writes kept conflicting; try again"
        )

    def _put_new(self, run: SimulationRun, item: Item) -> None:
        with self._aws(f"adding run {run.run_id}"):
            try:
                self._client.put_item(
                    TableName=self.table_name,
                    Item=item,
                    ConditionExpression="attribute_not_exists(pk)",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if _code(exc) != _CONDITION_FAILED:
                    raise
                if _same_record(exc, item):
                    return  # our own write, whose reply was lost and which botocore retried
                raise Conflict(f"run {run.run_id} exists already") from None

    def save(self, run: SimulationRun, expected_version: int) -> None:
        item = _item(run)
        with self._aws(f"saving run {run.run_id}"):
            try:
                self._client.put_item(
                    TableName=self.table_name,
                    Item=item,
                    ConditionExpression="#version = :expected",
                    ExpressionAttributeNames={"#version": "version"},
                    ExpressionAttributeValues={":expected": {"N": str(expected_version)}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if _code(exc) != _CONDITION_FAILED:
                    raise
                old = exc.response.get("Item")
                if not isinstance(old, dict):
                    raise NotFound(f"run {run.run_id} not found in project {run.project}") from None
                if _same_record(exc, item):
                    return  # our own write, whose reply was lost and which botocore retried
                stored = _number(old, "version")
                raise Conflict(
                    f"run {run.run_id} changed meanwhile (version "
                    f"{'?' if stored is None else stored}, expected {expected_version})"
                ) from None

    # ---------------------------------------------------------------- reads

    def get(self, project: ProjectRef, run_id: str) -> SimulationRun:
        if not _fits(RUN_PREFIX + run_id):
            raise NotFound(f"run {run_id:.100} not found in project {project}")
        with self._aws(f"reading run {run_id}"):
            answer = self._client.get_item(
                TableName=self.table_name,
                Key={"pk": {"S": project.key}, "sk": {"S": RUN_PREFIX + run_id}},
                ConsistentRead=True,
            )
        item = answer.get("Item")
        if item is None:
            raise NotFound(f"run {run_id} not found in project {project}")
        return _run(item, project, run_id)

    def find_by_idempotency_key(self, project: ProjectRef, key: str) -> SimulationRun | None:
        if not _fits(IDEM_PREFIX + key):
            return None
        with self._aws("reading an idempotency key"):
            answer = self._client.get_item(
                TableName=self.table_name,
                Key={"pk": {"S": project.key}, "sk": {"S": IDEM_PREFIX + key}},
                ConsistentRead=True,
            )
        item = answer.get("Item")
        if item is None:
            return None
        run_id = _text(item, "run_id")
        if not run_id:
            raise CorruptRecord(f"an idempotency key of project {project} names no run")
        try:
            return self.get(project, run_id)
        except NotFound:
            raise CorruptRecord(
                f"an idempotency key of project {project} names run {run_id}, which is missing"
            ) from None

    def list(
        self,
        project: ProjectRef,
        states: Collection[RunState] | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        if limit < 1:
            raise InvalidRequest([FieldError("limit", "must be at least 1")])
        after = _decode_cursor(cursor, project, states) if cursor else _FIRST
        query: QueryInputTypeDef = {
            "TableName": self.table_name,
            "IndexName": BY_PROJECT_INDEX,
            # The partition is the caller's project, always; a cursor only moves the bound.
            "KeyConditionExpression": "gsi1pk = :project AND gsi1sk < :after",
            "ScanIndexForward": False,
            "Limit": limit + 1,
        }
        values: dict[str, AttributeValueTypeDef] = {
            ":project": {"S": project.key},
            ":after": {"S": after},
        }
        if states:
            names = []
            for n, state in enumerate(filter_key(states)):
                names.append(f":s{n}")
                values[f":s{n}"] = {"S": state}
            query["FilterExpression"] = f"#state IN ({', '.join(names)})"
            query["ExpressionAttributeNames"] = {"#state": "state"}
            query["Limit"] = max(limit + 1, 100)  # counted before the filter
        query["ExpressionAttributeValues"] = values
        found: list[Item] = []
        for item in self._query(query, f"listing the runs of project {project}"):
            found.append(item)
            if len(found) > limit:
                break
        page = found[:limit]
        runs = [_run(item, project, _run_id(item)) for item in page]
        if len(found) <= limit:
            return Page(runs, None)
        position = _text(page[-1], "gsi1sk")
        if position is None:
            raise CorruptRecord(f"run {runs[-1].run_id} has no list position")
        return Page(runs, encode_cursor(project, states, position))

    def list_active(self, project: ProjectRef | None = None) -> Sequence[RunBrief]:
        items = self._sparse(ACTIVE_INDEX, "active_pk", project, "listing the active runs")
        return intact(items, _brief, _skipped)

    def list_watched(self, project: ProjectRef | None = None) -> Sequence[JobWatch]:
        items = self._sparse(WATCHED_INDEX, "watch_pk", project, "listing the watched runs")
        return [_watch(item) for item in items]

    # ---------------------------------------------------------------- machinery

    def _sparse(
        self, index: str, hash_key: str, project: ProjectRef | None, doing: str
    ) -> Iterator[Item]:
        """One project's part of a sparse index (a query of its own partition), or every
        project's (a scan of the index: for operators and tests, never a worker's round)."""
        if project is None:
            yield from self._scan(index, doing)
            return
        yield from self._query(
            {
                "TableName": self.table_name,
                "IndexName": index,
                "KeyConditionExpression": f"{hash_key} = :project",
                "ExpressionAttributeValues": {":project": {"S": project.key}},
            },
            doing,
        )

    def _scan(self, index: str, doing: str) -> Iterator[Item]:
        """Every item of an index, page after page."""
        scan: ScanInputTypeDef = {"TableName": self.table_name, "IndexName": index}
        yield from self._pages(self._client.scan, scan, doing)

    def _query(self, query: QueryInputTypeDef, doing: str) -> Iterator[Item]:
        """Every item the query matches, page after page."""
        yield from self._pages(self._client.query, query, doing)

    def _pages(self, call: Callable[..., Any], request: Any, doing: str) -> Iterator[Item]:
        """Every item of a paginated read (a query or a scan), following LastEvaluatedKey."""
        while True:
            with self._aws(doing):
                answer = call(**request)
            yield from answer.get("Items", [])
            start = answer.get("LastEvaluatedKey")
            if not start:
                return
            request["ExclusiveStartKey"] = start

    @contextmanager
    def _aws(self, doing: str) -> Iterator[None]:
        """Let only domain errors out."""
        try:
            yield
        except DomainError:
            raise
        except ClientError as exc:
            raise _unavailable(exc, self.table_name, doing) from None
        except BotoCoreError as exc:
            raise _unreachable(exc, doing) from None


# ==================================================================== items


def _item(run: SimulationRun) -> Item:
    """The run's item: its record and every key and attribute the indexes need."""
    project = run.project.key
    item: dict[str, AttributeValueTypeDef] = {
        "pk": {"S": project},
        "sk": {"S": RUN_PREFIX + run.run_id},
        "record": _record_value(run),
        "state": {"S": run.state.value},
        "version": {"N": str(run.version)},
        "created_at": {"S": run.header.created_at.isoformat()},
        "schema": {"N": str(SCHEMA_VERSION)},
        "gsi1pk": {"S": project},
        "gsi1sk": {"S": position(run)},
    }
    if run.header.idempotency_key is not None:
        item["idem"] = {"S": run.header.idempotency_key}
    if not run.terminal:
        item["active_pk"] = {"S": project}
        item["active_sk"] = {"S": run.run_id}
    watch = run.watch()
    if watch is not None:
        item["watch_pk"] = {"S": project}
        item["watch_sk"] = {"S": run.run_id}
        item["watch_job"] = {"S": watch.job_id}
        item["watch_stale"] = {"BOOL": watch.stale}
        if watch.last_raw is not None:
            item["watch_raw"] = {"S": watch.last_raw}
    return item


def _text(item: Item, name: str) -> str | None:
    value = item.get(name)
    text = value.get("S") if isinstance(value, dict) else None
    return text if isinstance(text, str) else None


def _number(item: Item, name: str) -> int | None:
    value = item.get(name)
    number = value.get("N") if isinstance(value, dict) else None
    try:
        return int(number) if isinstance(number, str) else None
    except ValueError:
        return None


def _run_id(item: Item) -> str:
    sk = _text(item, "sk") or ""
    if not sk.startswith(RUN_PREFIX) or len(sk) == len(RUN_PREFIX):
        raise CorruptRecord(f"an item listed as a run has the sort key {sk!r:.100}")
    return sk[len(RUN_PREFIX) :]


def _project(item: Item) -> ProjectRef:
    key = _text(item, "pk") or ""
    try:
        virtual_lab_id, project_id = key.split("/")
        return ProjectRef.parse(virtual_lab_id, project_id)
    except (ValueError, InvalidRequest):
        raise CorruptRecord(f"a stored run has an unreadable project key {key!r:.100}") from None


def _run(item: Item, project: ProjectRef, run_id: str) -> SimulationRun:
    """The run an item holds, which must be the run its keys say."""
    record = _record_of(item, run_id)
    if record is None:
        raise CorruptRecord(f"run {run_id}: the stored record is missing or not a string")
    return loads_stored(record, project, run_id)


def _record_value(run: SimulationRun) -> AttributeValueTypeDef:
    """The record as text; above ``COMPRESS_ABOVE`` bytes, zlib-compressed binary (a run with
    thousands of events stays far below DynamoDB's 400 KB item limit)."""
    text = dumps(run)
    data = text.encode()
    if len(data) <= COMPRESS_ABOVE:
        return {"S": text}
    packed = zlib.compress(data, 6)
    if len(packed) > MAX_RECORD_BYTES:
        raise ServiceUnavailable(
            f"run {run.run_id} has {len(run.events)} events: its record is {len(packed)} bytes "
            "even compressed, above what one DynamoDB item holds"
        )
    return {"B": packed}


def _record_of(item: Item, run_id: str) -> str | bytes | None:
    value = item.get("record")
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("S"), str):
        return value["S"]
    packed = value.get("B")
    if not isinstance(packed, bytes | bytearray):
        return None
    inflate = zlib.decompressobj()
    try:
        data = inflate.decompress(bytes(packed), MAX_INFLATED_BYTES)
    except zlib.error:
        raise CorruptRecord(f"run {run_id}: the compressed record is damaged") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise CorruptRecord(f"run {run_id}: the compressed record is damaged or too large")
    return data


def _brief(item: Item) -> RunBrief:
    run_id = _run_id(item)
    state = _text(item, "state")
    try:
        return RunBrief(_project(item), run_id, RunState(state), "watch_job" in item)
    except ValueError:
        raise CorruptRecord(f"run {run_id} has an unreadable state {state!r:.40}") from None


def _watch(item: Item) -> JobWatch:
    run_id = _run_id(item)
    job = _text(item, "watch_job")
    flag = item.get("watch_stale")
    stale = flag.get("BOOL") if isinstance(flag, dict) else None
    raw = item.get("watch_raw")
    last_raw = _text(item, "watch_raw")
    if not job or not isinstance(stale, bool) or (raw is not None and last_raw is None):
        raise CorruptRecord(f"the job watch of run {run_id} is damaged")
    return JobWatch(_project(item), run_id, job, last_raw, stale)


def _same_record(exc: ClientError, item: Item) -> bool:
    """Whether a condition failed only because botocore retried our own write whose reply was
    lost: the call was retried and the item it failed on holds exactly our record. A call that
    was not retried failed on someone else's write (or on the caller repeating itself)."""
    retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
    old = exc.response.get("Item")
    return (
        isinstance(retried, int)
        and retried > 0
        and isinstance(old, dict)
        and old.get("record") == item.get("record")
    )


def _fits(sort_key: str) -> bool:
    return 0 < len(sort_key.encode("utf-8", "surrogatepass")) <= _MAX_SORT_KEY


# ==================================================================== errors

_THROTTLED = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "TransactionInProgressException",
        "TransactionConflictException",
    }
)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(exc: ClientError, table: str, doing: str) -> ServiceUnavailable:
    code = _code(exc) or "error"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "ResourceNotFoundException":
        return ServiceUnavailable(
            f"DynamoDB table {table} (or one of its indexes) does not exist in this account "
            f"and region, while {doing}: create it with create_table"
        )
    if code in _THROTTLED:
        return ServiceUnavailable(f"DynamoDB is throttling table {table} ({code}); try again")
    if isinstance(status, int) and status >= 500:
        return ServiceUnavailable(
            f"DynamoDB failed on table {table} while {doing} ({code}, {status}); try again"
        )
    message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
    return ServiceUnavailable(
        f"DynamoDB refused a request on table {table} while {doing}: {code}"
        + (f": {message}" if message else "")
    )


def _unreachable(exc: BotoCoreError, doing: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"DynamoDB unreachable while {doing}: {type(exc).__name__}")


# ==================================================================== positions and cursors
# The format is shared by every run repository (core/cursors.py).
#: Sorts after every position (a position starts with a digit): the first page's bound.
_FIRST = "~"


def _decode_cursor(cursor: str, project: ProjectRef, states: Collection[RunState] | None) -> str:
    """The shared cursor format, plus DynamoDB's own limit on sort keys."""
    after = decode_cursor(cursor, project, states)
    if not _fits(after):
        raise InvalidRequest([FieldError("cursor", "is not a cursor of this listing")])
    return after


def _skipped(damage: CorruptRecord) -> None:
    """A damaged record left out of a listing (``get`` on it raises CorruptRecord)."""
    log.warning("a damaged run record was left out of a listing: %s", damage.message)
