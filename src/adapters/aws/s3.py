"""ObjectStore over Amazon S3 (boto3 low-level client), to confirm what a sync exported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.ports.objects import ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

#: What a HEAD of an absent key answers (HEAD has no body: only the status is known).
_ABSENT = {"404", "NoSuchKey", "NotFound"}


class S3ObjectStore(ObjectStore):
    """``head`` is one HeadObject; ``list`` pages through ListObjectsV2 (1,000 keys a page)."""

    def __init__(self, client: S3Client) -> None:
        self._client = client

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            found = self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _ABSENT:
                return None
            raise _unavailable(f"HeadObject s3://{bucket}/{key}", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable(f"HeadObject s3://{bucket}/{key}", exc) from exc
        return ObjectInfo(
            key=key,
            size=found["ContentLength"],
            etag=found.get("ETag", "").strip('"'),
            last_modified=found.get("LastModified"),
        )

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        what = f"ListObjectsV2 s3://{bucket}/{prefix}"
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"],
                        size=obj["Size"],
                        etag=obj.get("ETag", "").strip('"'),
                        last_modified=obj.get("LastModified"),
                    )
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                raise ServiceUnavailable(
                    f"S3 bucket {bucket} does not exist (check the storage configuration)"
                ) from exc
            raise _unavailable(what, exc) from exc
        except BotoCoreError as exc:
            raise _unavailable(what, exc) from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(what: str, exc: ClientError | BotoCoreError) -> ServiceUnavailable:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        detail = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status is not None:
            detail += f" (HTTP {status})"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return ServiceUnavailable(f"S3 {what} failed: {detail}")
