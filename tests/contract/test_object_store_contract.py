"""The ObjectStore contract: what a sync's confirmation sees of a bucket.

Runs against the fake (``FakeObjectStore``), S3 (``S3ObjectStore`` on moto) and a folder
(``FileObjectStore``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from obp_workflow.adapters.aws.s3 import S3ObjectStore
from obp_workflow.core.errors import ServiceUnavailable
from tests.contract.harness_aws import (
    FakeObjectStoreHarness,
    ObjectStoreHarness,
    S3ObjectStoreHarness,
    aws_client,
    md5_etag,
)
from tests.contract.harness_local_graph import FileObjectStoreHarness

OBJECT_STORES = [
    pytest.param(FakeObjectStoreHarness, id="fake"),
    pytest.param(S3ObjectStoreHarness, id="s3"),
    pytest.param(FileObjectStoreHarness, id="local-files"),
]
BUCKET = "obp-nexus-data"
OTHER_BUCKET = "obp-scratch"
PREFIX = "vlab/proj/runs/r-1/"
MANY = 1_010  # over S3's 1,000 keys a page


@pytest.fixture(params=OBJECT_STORES)
def objects_harness(request: pytest.FixtureRequest) -> Iterator[ObjectStoreHarness]:
    harness: ObjectStoreHarness = request.param()
    try:
        yield harness
    finally:
        harness.close()


def test_head_of_a_missing_key_is_none(objects_harness: ObjectStoreHarness) -> None:
    h = objects_harness
    h.put(BUCKET, PREFIX + "out/a.h5", b"data")
    assert h.store.head(BUCKET, PREFIX + "out/missing.h5") is None
    # Neither a folder-like prefix of a key, nor the key in another bucket, is that object.
    assert h.store.head(BUCKET, PREFIX + "out") is None
    assert h.store.head(BUCKET, PREFIX + "out/") is None
    h.put(OTHER_BUCKET, "elsewhere", b"x")
    assert h.store.head(OTHER_BUCKET, PREFIX + "out/a.h5") is None


@pytest.mark.parametrize("size", [0, 1, 5_000])
def test_head_gives_size_etag_and_time(objects_harness: ObjectStoreHarness, size: int) -> None:
    h = objects_harness
    data = bytes(i % 251 for i in range(size))
    key = PREFIX + f"out/{size}.bin"
    h.put(BUCKET, key, data)
    info = h.store.head(BUCKET, key)
    assert info is not None
    assert info.key == key
    assert info.size == size
    assert info.etag == md5_etag(data)
    assert isinstance(info.last_modified, datetime)
    assert info.last_modified.tzinfo is not None


def test_head_of_a_key_with_spaces_and_unicode(objects_harness: ObjectStoreHarness) -> None:
    h = objects_harness
    key = PREFIX + "out put/réseau+1 (copy).h5"
    h.put(BUCKET, key, b"12345")
    info = h.store.head(BUCKET, key)
    assert info is not None
    assert (info.key, info.size) == (key, 5)


def test_list_returns_exactly_the_objects_under_the_prefix(
    objects_harness: ObjectStoreHarness,
) -> None:
    h = objects_harness
    inside = [f"{PREFIX}out/{i:05d}.h5" for i in range(MANY)]
    inside.append(PREFIX + "out put/réseau+1.h5")
    h.put_many(BUCKET, inside, b"0123456789")
    # Near misses: a sibling whose name extends the prefix, another run, the bucket's root,
    # and the same keys in another bucket.
    for key in ["vlab/proj/runs/r-1", "vlab/proj/runs/r-10/out/0.h5", "vlab/proj/runs/r-2/x"]:
        h.put(BUCKET, key, b"no")
    h.put_many(OTHER_BUCKET, inside[:5], b"other")

    listing = h.store.list(BUCKET, PREFIX)
    listed = [next(listing)]
    requests_for_the_first = h.list_requests()
    listed.extend(listing)

    assert [info.key for info in listed] == sorted(inside)
    assert all(info.size == 10 for info in listed)
    assert all(info.etag == md5_etag(b"0123456789") for info in listed)
    assert len({info.key for info in listed}) == len(inside)
    # A paged store reads its pages as the iterator is consumed (S3: 2 pages for 1,011 keys).
    assert requests_for_the_first in (0, 1)
    assert h.list_requests() in (0, 2)


def test_list_of_an_empty_prefix_is_empty(objects_harness: ObjectStoreHarness) -> None:
    h = objects_harness
    h.put(BUCKET, PREFIX + "a", b"a")
    assert list(h.store.list(BUCKET, "vlab/proj/runs/r-9/")) == []
    assert [i.key for i in h.store.list(BUCKET, "")] == [PREFIX + "a"]


def test_s3_errors_are_service_unavailable_naming_the_bucket() -> None:
    """S3 only: listing a bucket that does not exist, or an unreachable S3."""
    h = S3ObjectStoreHarness()
    with pytest.raises(ServiceUnavailable, match="bucket obp-no-such-bucket does not exist"):
        list(h.store.list("obp-no-such-bucket", PREFIX))
    cut = S3ObjectStore(aws_client("s3", "http://127.0.0.1:9"))
    with pytest.raises(ServiceUnavailable, match=f"s3://{BUCKET}/{PREFIX}"):
        cut.head(BUCKET, PREFIX)
    with pytest.raises(ServiceUnavailable, match=f"s3://{BUCKET}/{PREFIX}"):
        list(cut.list(BUCKET, PREFIX))
