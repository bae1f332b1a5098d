"""Leases in MongoDB: one holder at a time across threads, processes and hosts.

Every writer (the explorer, a batch, the App's operators, a colleague's session) already shares
the FiftyOne database, so a lease kept there holds where a file lock does not (flock is per
process, and emulated or absent on network shares). A lease is a document ``{_id: key, owner,
expires}`` in the ``camexplorer_leases`` collection: taken by an atomic upsert when free or
expired, renewed by its owner, released by deleting it. A holder that dies leaves a lease that
expires after ``ttl`` seconds.

FiftyOne writes a dataset's field list whole from each process's copy, so two processes adding
fields at once lose one another's fields: :func:`schema_lease` serialises those writes, and
:func:`camcore.store.schema.sync_schema` brings this process's copy up to date inside it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import fiftyone as fo
import pymongo.errors

from camcore.errors import StoreError
from camcore.store.datasets import LOCK, datasets_collection
from camcore.store.schema import sync_schema

__all__ = ["lease", "schema_lease"]

COLLECTION = "camexplorer_leases"
_PROCESS = ""


def _new_process_identity() -> None:
    """This process's part of a lease owner; a forked child gets its own (it shares its parent's
    memory, and two children owning as one would both hold a lease)."""
    global _PROCESS
    _PROCESS = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


_new_process_identity()
os.register_at_fork(after_in_child=_new_process_identity)


def _collection():
    return datasets_collection().database[COLLECTION]


def _owner() -> str:
    return f"{_PROCESS}:{threading.get_ident()}"


def try_take(key: str, ttl: float = 30.0, owner: str | None = None) -> bool:
    """Take (or renew) the lease `key` for `ttl` seconds if it is free, expired or ours."""
    now = datetime.now(UTC)
    owner = owner or _owner()
    try:
        _collection().find_one_and_update(
            {"_id": key, "$or": [{"expires": {"$lt": now}}, {"owner": owner}]},
            {"$set": {"owner": owner, "expires": now + timedelta(seconds=ttl), "host": socket.gethostname()}},
            upsert=True,
        )
    except pymongo.errors.DuplicateKeyError:  # held by another owner: the upsert found no match
        return False
    return True


def release(key: str, owner: str | None = None) -> None:
    _collection().delete_one({"_id": key, "owner": owner or _owner()})


def _holder_died(key: str) -> bool:
    """A holder on this host whose process is gone frees its lease at once (others wait for
    its expiry). True if it was freed."""
    held = _collection().find_one({"_id": key}) or {}
    host, _, rest = str(held.get("owner", "")).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
        return False
    except ProcessLookupError:
        return _collection().delete_one({"_id": key, "owner": held["owner"]}).deleted_count == 1
    except PermissionError:  # alive, another user's
        return False


@contextmanager
def lease(key: str, ttl: float = 30.0, wait: float = 120.0) -> Iterator[None]:
    """Hold the lease `key` for the block; wait up to `wait` seconds for it, else StoreError."""
    owner = _owner()
    deadline = time.monotonic() + wait
    delay = 0.01
    while not try_take(key, ttl, owner):
        if _holder_died(key):
            continue
        if time.monotonic() > deadline:
            held = _collection().find_one({"_id": key}) or {}
            raise StoreError(f"waited {wait:.0f} s for {key!r}, held by {held.get('owner', '?')}; try again")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    try:
        yield
    finally:
        release(key, owner)


@contextmanager
def schema_lease(dataset: fo.Dataset, sync: bool = True) -> Iterator[None]:
    """Changes of this dataset's field list, one writer at a time across processes and hosts;
    this process's copy of the schema is brought up to date first (sync=False: not, for a writer
    whose update applies only to the document as this process last saw it: a strict
    schema.DatasetUpdate)."""
    with LOCK, lease(f"schema:{dataset._doc.id}"):
        if sync:
            sync_schema(dataset)
        yield
