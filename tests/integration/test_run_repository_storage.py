"""What the RunRepository contract cannot say about the durable adapters' own storage: the
DynamoDB table that ``create_table`` makes, the SQLite file's failure modes, and how each
adapter translates its storage's errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from obp_workflow.adapters.aws.dynamodb import (
    ACTIVE_INDEX,
    BY_PROJECT_INDEX,
    RUN_PREFIX,
    WATCHED_INDEX,
    DynamoRunRepository,
    create_table,
    table_schema,
)
from obp_workflow.adapters.sqlite.run_repository import SqliteRunRepository
from obp_workflow.core.errors import CorruptRecord, ServiceUnavailable
from obp_workflow.core.run import RunState, SimulationRun
from obp_workflow.ports.runs import RunRepository
from tests.contract.harness import PROJECT_A, T0, make_header
from tests.contract.harness_repositories import GARBAGE, dynamodb_client
from tests.contract.test_run_repository_contract import advance, new_run
from tests.moto_server import MotoServer

TABLE = "obp-runs"


@pytest.fixture
def dynamo(moto: MotoServer) -> DynamoRunRepository:
    client = dynamodb_client(moto.endpoint)
    create_table(client, TABLE)
    return DynamoRunRepository(client, TABLE)


@pytest.fixture
def sqlite_repo(tmp_path: Path) -> Iterator[SqliteRunRepository]:
    repo = SqliteRunRepository(tmp_path / "runs.sqlite3")
    yield repo
    repo.close()


# ==================================================================== the DynamoDB table


def test_create_table_makes_the_table_and_indexes_the_adapter_needs(moto: MotoServer) -> None:
    client = dynamodb_client(moto.endpoint)
    create_table(client, TABLE)
    create_table(client, TABLE)  # a second time: nothing to do, no error
    table = client.describe_table(TableName=TABLE)["Table"]
    wanted = table_schema(TABLE)
    assert table["TableStatus"] == "ACTIVE"
    assert table["KeySchema"] == wanted["KeySchema"]
    assert table.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    indexes = {i["IndexName"]: i for i in table.get("GlobalSecondaryIndexes", [])}
    assert set(indexes) == {BY_PROJECT_INDEX, ACTIVE_INDEX, WATCHED_INDEX}
    for index in wanted["GlobalSecondaryIndexes"]:
        found = indexes[index["IndexName"]]
        assert found["KeySchema"] == index["KeySchema"]
        assert found["Projection"]["ProjectionType"] == index["Projection"]["ProjectionType"]
        assert sorted(found["Projection"].get("NonKeyAttributes", [])) == sorted(
            index["Projection"].get("NonKeyAttributes", [])
        )
        assert found.get("IndexStatus", "ACTIVE") == "ACTIVE"


def test_the_sparse_indexes_hold_only_active_and_watched_runs(
    dynamo: DynamoRunRepository,
) -> None:
    client = dynamo._client
    runs = {
        s: advance(new_run(minute=i), s) for i, s in enumerate((RunState.QUEUED, RunState.DONE))
    }
    for run in runs.values():
        dynamo.add(run)

    def index_items(index: str, key: str, value: str) -> list[dict[str, Any]]:
        answer = client.query(
            TableName=TABLE,
            IndexName=index,
            KeyConditionExpression=f"{key} = :v",
            ExpressionAttributeValues={":v": {"S": value}},
        )
        return list(answer["Items"])

    queued = RUN_PREFIX + runs[RunState.QUEUED].run_id
    # Both sparse indexes are keyed by project: a worker reads its own partition only.
    [active] = index_items(ACTIVE_INDEX, "active_pk", PROJECT_A.key)
    assert active["sk"]["S"] == queued
    assert "record" not in active  # a round reads no record either
    assert active["state"]["S"] == "QUEUED"
    [watched] = index_items(WATCHED_INDEX, "watch_pk", PROJECT_A.key)
    assert watched["sk"]["S"] == queued
    assert "record" not in watched  # a monitor cycle reads no record


def test_a_missing_table_is_service_unavailable_naming_it(moto: MotoServer) -> None:
    repo = DynamoRunRepository(dynamodb_client(moto.endpoint), "no-such-table")
    for call in (lambda: repo.get(PROJECT_A, "r1"), repo.list_active, lambda: repo.add(new_run())):
        with pytest.raises(ServiceUnavailable, match="no-such-table"):
            call()


def test_an_unreachable_endpoint_is_service_unavailable() -> None:
    repo = DynamoRunRepository(dynamodb_client("http://127.0.0.1:9"), TABLE)
    with pytest.raises(ServiceUnavailable, match="unreachable"):
        repo.get(PROJECT_A, "r1")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ProvisionedThroughputExceededException", 400),
        ("ThrottlingException", 400),
        ("InternalServerError", 500),
        ("AccessDeniedException", 400),
    ],
)
def test_aws_errors_are_service_unavailable(code: str, status: int) -> None:
    client = dynamodb_client("http://127.0.0.1:9")
    with Stubber(client) as stub:
        stub.add_client_error("get_item", service_error_code=code, http_status_code=status)
        with pytest.raises(ServiceUnavailable, match=TABLE):
            DynamoRunRepository(client, TABLE).get(PROJECT_A, "r1")


def test_a_transaction_cancelled_by_a_concurrent_one_is_tried_again() -> None:
    client = dynamodb_client("http://127.0.0.1:9")
    run = new_run(key="submit-1")
    with Stubber(client) as stub:
        stub.add_client_error(
            "transact_write_items",
            service_error_code="TransactionCanceledException",
            modeled_fields={
                "CancellationReasons": [{"Code": "TransactionConflict"}, {"Code": "None"}]
            },
        )
        stub.add_response("transact_write_items", {})
        DynamoRunRepository(client, TABLE).add(run)
        stub.assert_no_pending_responses()


def test_a_record_of_another_type_is_corrupt_record(dynamo: DynamoRunRepository) -> None:
    run = new_run()
    dynamo.add(run)
    dynamo._client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": PROJECT_A.key}, "sk": {"S": RUN_PREFIX + run.run_id}},
        UpdateExpression="SET #r = :raw",
        ExpressionAttributeNames={"#r": "record"},
        ExpressionAttributeValues={":raw": {"B": GARBAGE}},
    )
    with pytest.raises(CorruptRecord):
        dynamo.get(PROJECT_A, run.run_id)
    with pytest.raises(CorruptRecord):
        dynamo.list(PROJECT_A)


# ==================================================================== both durable adapters


@pytest.fixture(params=["sqlite", "dynamodb"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunRepository]:
    if request.param == "sqlite":
        repo = SqliteRunRepository(tmp_path / "runs.sqlite3")
        yield repo
        repo.close()
    else:
        yield request.getfixturevalue("dynamo")


def test_list_orders_by_the_instant_whatever_the_clock_offset(durable: RunRepository) -> None:
    # 12:30 at +02:00 is 10:30 UTC: older than 12:00 UTC, though its local text sorts after.
    east = timezone(timedelta(hours=2))
    older = SimulationRun.accept(
        make_header(PROJECT_A, at=T0.replace(hour=12, minute=30, tzinfo=east))
    )
    newer = SimulationRun.accept(make_header(PROJECT_A, at=T0))
    for run in (older, newer):
        durable.add(run)
    assert [r.run_id for r in durable.list(PROJECT_A).runs] == [newer.run_id, older.run_id]
    first = durable.list(PROJECT_A, limit=1)
    assert first.next_cursor is not None
    rest = durable.list(PROJECT_A, cursor=first.next_cursor, limit=1)
    assert [r.run_id for r in (*first.runs, *rest.runs)] == [newer.run_id, older.run_id]


def test_list_watched_reads_no_record(durable: RunRepository, tmp_path: Path) -> None:
    """The watch is kept beside the record: a record that cannot be read does not stop it."""
    run = advance(new_run(), RunState.RUNNING)
    durable.add(run)
    if isinstance(durable, SqliteRunRepository):
        with closing(sqlite3.connect(durable.path)) as conn, conn:
            conn.execute("UPDATE runs SET record = 'garbage'")
    else:
        assert isinstance(durable, DynamoRunRepository)
        durable._client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": PROJECT_A.key}, "sk": {"S": RUN_PREFIX + run.run_id}},
            UpdateExpression="SET #r = :raw",
            ExpressionAttributeNames={"#r": "record"},
            ExpressionAttributeValues={":raw": {"S": "garbage"}},
        )
    watch = run.watch()
    assert watch is not None
    assert list(durable.list_watched()) == [watch]
    with pytest.raises(CorruptRecord):
        durable.get(PROJECT_A, run.run_id)


# ==================================================================== the SQLite file


def test_a_database_locked_by_another_writer_is_service_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    repo = SqliteRunRepository(path, busy_timeout_seconds=0.2)
    run = new_run()
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(ServiceUnavailable, match="busy"):
            repo.add(run)
        assert repo.list(PROJECT_A).runs == []  # WAL: readers are not blocked by the writer
        other.execute("ROLLBACK")
    repo.add(run)
    assert repo.get(PROJECT_A, run.run_id).run_id == run.run_id
    repo.close()


def test_a_file_that_is_no_database_is_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    path.write_bytes(b"this is not a database, only text long enough to look like a header" * 20)
    with pytest.raises(CorruptRecord, match="damaged"):
        SqliteRunRepository(path)


def test_a_database_of_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    SqliteRunRepository(path).close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(ServiceUnavailable, match="layout 2"):
        SqliteRunRepository(path)


def test_a_directory_that_cannot_hold_the_file_is_service_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable):
        SqliteRunRepository(tmp_path / "missing-dir" / "runs.sqlite3")
