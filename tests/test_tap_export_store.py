"""The ExportStore interface: both readers list names and sizes, open at an offset, give the
STATE's paths and delete, the same way (the runner uses nothing else)."""

from __future__ import annotations

import logging
import os

from tap_cordial_activity.destinations import export_store
from tap_cordial_activity.s3 import S3Store
from tap_cordial_activity.sftp_store import SftpStore

from sandbox.pytest_plugin import S3_PREFIX, Sandbox

BLOB = os.urandom(300_000)


def _exercise(store, path: str) -> None:
    assert store.list_files()["f.bin"] == len(BLOB)
    for offset in (0, 1, 70_001, len(BLOB)):
        reader = store.open("f.bin", offset)
        got = b"".join(iter(lambda r=reader: r.read(65_536), b""))
        reader.close()
        assert got == BLOB[offset:], offset
        assert reader.offset == len(BLOB)
    assert store.path("f.bin") == path
    assert store.remove(path) is True
    assert store.remove(path) is False
    assert "f.bin" not in store.list_files()


def test_sftp_and_s3_stores_behave_alike(s3_sandbox: Sandbox):
    logger = logging.getLogger("test")
    (s3_sandbox.sftp.root / "f.bin").write_bytes(BLOB)
    sftp = export_store(s3_sandbox.tap_config(), logger)
    assert isinstance(sftp, SftpStore)
    sftp.connect()
    try:
        _exercise(sftp, f"{s3_sandbox.sftp.sftp_path.rstrip('/')}/f.bin")
    finally:
        sftp.close()

    assert s3_sandbox.s3 is not None
    s3_sandbox.s3.client().put_object(
        Bucket=s3_sandbox.s3_bucket, Key=f"{S3_PREFIX}/f.bin", Body=BLOB
    )
    # A key in a deeper "folder" is not one of the prefix's files.
    s3_sandbox.s3.client().put_object(
        Bucket=s3_sandbox.s3_bucket, Key=f"{S3_PREFIX}/old/f.bin", Body=b"x"
    )
    s3 = export_store(s3_sandbox.s3_tap_config(), logger)
    assert isinstance(s3, S3Store)
    s3.connect()
    try:
        _exercise(s3, f"{S3_PREFIX}/f.bin")
        assert s3.list_files() == {}
    finally:
        s3.close()


def test_s3_listing_follows_every_page(s3_sandbox: Sandbox, monkeypatch):
    from tap_cordial_activity import s3 as s3_module

    monkeypatch.setattr(s3_module, "LIST_PAGE_KEYS", 2)
    assert s3_sandbox.s3 is not None
    client = s3_sandbox.s3.client()
    for n in range(7):
        client.put_object(
            Bucket=s3_sandbox.s3_bucket, Key=f"{S3_PREFIX}/x-{n}.json", Body=b"{}" * n
        )
    store = export_store(s3_sandbox.s3_tap_config(), logging.getLogger("test"))
    assert store.list_files() == {f"x-{n}.json": 2 * n for n in range(7)}
    store.close()
