"""RunRepository harnesses for the durable adapters: SQLite (a temporary file) and DynamoDB
(a table of its own on the session's moto server).

``damage`` writes behind the adapter's back, in the adapter's own storage format: the raw
column of the SQLite row, the raw attribute of the DynamoDB item.

Both harnesses are also ``SharedStorageHarness``es: their storage outlives one adapter
instance, so a test can open a second, independent instance (``reopen``) or have another
process open one (``opener``, a picklable function). The fake keeps its runs in the memory of
one object and is not one.

The DynamoDB adapter's clients reach moto through ``SerialProxy``, which hands moto one request
at a time: see there why moto alone would make the concurrency tests fail for moto's reasons.
"""

from __future__ import annotations

import functools
import http.client
import json
import secrets
import sqlite3
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from contextlib import closing, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from obp_workflow.adapters.aws.dynamodb import RUN_PREFIX, DynamoRunRepository, create_table
from obp_workflow.adapters.sqlite.run_repository import SqliteRunRepository
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.records import run_to_record
from obp_workflow.ports.runs import RunRepository
from tests.contract.harness import Damage, RunRepositoryHarness
from tests.moto_server import CREDENTIALS, REGION, MotoServer

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient


@runtime_checkable
class SharedStorageHarness(Protocol):
    """A harness whose storage other adapter instances can open, here or in another process."""

    def reopen(self) -> RunRepository:
        """A second, independent adapter instance (own connections) on the same storage."""

    def opener(self) -> Callable[[], RunRepository]:
        """A picklable function that opens the same storage, e.g. in a spawned process."""


#: Bytes that are no record at all (not even UTF-8).
GARBAGE = b"\x00\xffnot a record{{"


def damaged_record(record: dict[str, Any], how: Damage) -> str:
    """The record of a run, damaged ``how`` (GARBAGE apart: it is not text)."""
    if how is Damage.NOT_AN_OBJECT:
        return json.dumps([record])
    if how is Damage.FUTURE_SCHEMA:
        return json.dumps({**record, "schema": 99})
    if how is Damage.ILLEGAL_HISTORY:
        return json.dumps({**record, "events": list(reversed(record["events"]))})
    if how is Damage.STATE_MISMATCH:
        return json.dumps({**record, "state": "DONE"})
    raise AssertionError(f"{how} has no text form")


# ==================================================================== SQLite


class SqliteRunRepositoryHarness:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="obp-runs-")
        self.path = Path(self._dir.name) / "runs.sqlite3"
        self.adapter = SqliteRunRepository(self.path)
        self.repo: RunRepository = self.adapter
        self._opened = [self.adapter]

    def reopen(self) -> RunRepository:
        self._opened.append(SqliteRunRepository(self.path))
        return self._opened[-1]

    def opener(self) -> Callable[[], RunRepository]:
        return functools.partial(SqliteRunRepository, str(self.path))

    def damage(self, project: ProjectRef, run_id: str, how: Damage) -> None:
        record = run_to_record(self.adapter.get(project, run_id))
        if how is Damage.GARBAGE:
            # Stored as TEXT that is not UTF-8: sqlite3 itself cannot decode it.
            sql = "UPDATE runs SET record = CAST(? AS TEXT) WHERE project = ? AND run_id = ?"
            raw: str | bytes = GARBAGE
        else:
            sql = "UPDATE runs SET record = ? WHERE project = ? AND run_id = ?"
            raw = damaged_record(record, how)
        with closing(sqlite3.connect(self.path, timeout=10)) as conn, conn:
            assert conn.execute(sql, (raw, project.key, run_id)).rowcount == 1

    def close(self) -> None:
        for adapter in self._opened:
            adapter.close()
        self._dir.cleanup()


# ==================================================================== DynamoDB


def dynamodb_client(endpoint: str) -> DynamoDBClient:
    """A client of the moto server at ``endpoint`` (test credentials, no retries)."""
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=CREDENTIALS["AWS_SESSION_TOKEN"],
        config=MotoServer.client_config(),
    )


def open_dynamodb(endpoint: str, table_name: str) -> RunRepository:
    """An adapter instance with its own client (what another process does)."""
    return DynamoRunRepository(dynamodb_client(endpoint), table_name)


class SerialProxy:
    """An HTTP proxy on loopback that forwards one request at a time to ``upstream``.

    moto's DynamoDB is not atomic under concurrent requests: a conditional PutItem reads the
    item, then writes it, with no lock between; TransactWriteItems deep-copies every table it
    touches and, when a condition fails, restores the copies, wiping whatever other requests
    wrote meanwhile. Seen here: two transactions adding one idempotency key both succeeded.
    DynamoDB itself makes every request atomic and every transaction serializable, so the
    adapter under test talks to moto through this proxy. Serializing is stronger than
    DynamoDB, which may instead cancel a transaction with TransactionConflict: the adapter's
    retry of that is tested against a stubbed client.
    """

    def __init__(self, upstream: str) -> None:
        target = urllib.parse.urlsplit(upstream)
        host, port = target.hostname or "127.0.0.1", target.port or 80
        one_at_a_time = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                with one_at_a_time:
                    upstream = http.client.HTTPConnection(host, port, timeout=60)
                    try:
                        upstream.request("POST", self.path, body, headers)
                        answer = upstream.getresponse()
                        status, reply, payload = answer.status, answer.getheaders(), answer.read()
                    finally:
                        upstream.close()
                self.send_response(status)
                for name, value in reply:
                    if name.lower() not in _HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "server", "date"}
)


class DynamoRunRepositoryHarness:
    #: Fixtures the contract's ``run_repository_harness`` passes to the constructor, by name.
    FIXTURES = ("moto",)

    def __init__(self, moto: MotoServer) -> None:
        self.table_name = f"runs-{secrets.token_hex(4)}"
        self.client = dynamodb_client(moto.endpoint)  # the harness's own: straight to moto
        create_table(self.client, self.table_name)
        self.proxy = SerialProxy(moto.endpoint)
        self.endpoint = self.proxy.endpoint  # every adapter instance's
        self.repo: RunRepository = open_dynamodb(self.endpoint, self.table_name)

    def reopen(self) -> RunRepository:
        return open_dynamodb(self.endpoint, self.table_name)

    def opener(self) -> Callable[[], RunRepository]:
        return functools.partial(open_dynamodb, self.endpoint, self.table_name)

    def damage(self, project: ProjectRef, run_id: str, how: Damage) -> None:
        record = run_to_record(self.repo.get(project, run_id))
        raw = GARBAGE.decode("latin-1") if how is Damage.GARBAGE else damaged_record(record, how)
        self.client.update_item(
            TableName=self.table_name,
            Key={"pk": {"S": project.key}, "sk": {"S": RUN_PREFIX + run_id}},
            UpdateExpression="SET #record = :raw",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#record": "record"},
            ExpressionAttributeValues={":raw": {"S": raw}},
        )

    def close(self) -> None:
        self.proxy.close()
        with suppress(ClientError, BotoCoreError):
            self.client.delete_table(TableName=self.table_name)


if TYPE_CHECKING:  # mypy proves each harness implements the protocols
    _harnesses: list[Callable[[], RunRepositoryHarness]] = [SqliteRunRepositoryHarness]
    _dynamo: Callable[[MotoServer], RunRepositoryHarness] = DynamoRunRepositoryHarness
    _shared: list[Callable[..., SharedStorageHarness]] = [
        SqliteRunRepositoryHarness,
        DynamoRunRepositoryHarness,
    ]
