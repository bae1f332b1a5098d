"""Sample documents read and written by id with raw MongoDB calls, whose cost does not grow with
the dataset's number of fields.

FiftyOne's ``set_values`` and ``values`` parse the dataset's whole schema on each call, and
``set_values`` then reloads every in-memory sample it touched, every field of it (with 500
heatmap fields on a sample, seconds). A push touches a few fields of a few samples: here it
reads and writes only those, and FiftyOne's in-memory samples of those ids reload only those
fields, so they stay current (as FiftyOne's own writes keep them).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import bson
import bson.errors
import fiftyone as fo
from pymongo import UpdateOne

__all__ = ["read", "reload_fields", "write"]


def _object_ids(ids: Iterable[str]) -> list[bson.ObjectId]:
    out = []
    for sid in ids:
        try:
            out.append(bson.ObjectId(sid))
        except (bson.errors.InvalidId, TypeError):
            continue  # not an id: no such sample
    return out


def read(dataset: fo.Dataset, ids: Iterable[str], paths: Iterable[str]) -> dict[str, dict]:
    """Sample id -> its raw document holding only `paths` (dotted; what is absent is absent), for
    the samples of these ids that exist. One find."""
    projection = {p: 1 for p in paths} or {"_id": 1}
    docs = dataset._sample_collection.find({"_id": {"$in": _object_ids(ids)}}, projection)
    return {str(doc["_id"]): doc for doc in docs}


def write(dataset: fo.Dataset, values: Mapping[str, Mapping[str, Any]]) -> None:
    """Set fields of samples: sample id -> {top-level field: value (a label, or None)}. One update
    per sample in one bulk write, stamped ``last_modified_at`` as FiftyOne's own writes are; the
    fields must be declared. In-memory samples of these ids reload those fields only."""
    now = datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as FiftyOne stores it
    ops = [UpdateOne({"_id": bson.ObjectId(sid)},
                     {"$set": {**{f: _to_mongo(v) for f, v in fields.items()}, "last_modified_at": now}})
           for sid, fields in values.items() if fields]
    if not ops:
        return
    dataset._sample_collection.bulk_write(ops, ordered=False)
    for sid, fields in values.items():
        reload_fields(dataset, [sid], list(fields))


def reload_fields(dataset: fo.Dataset, ids: Iterable[str], fields: list[str]) -> None:
    """FiftyOne's in-memory samples of these ids (if any) read these fields again, only these."""
    live = fo.Sample._instances.get(dataset._sample_collection_name)
    for sid in ids:
        sample = live.get(str(sid)) if live is not None else None
        if sample is not None and fields:
            sample._doc.reload(*fields, "last_modified_at")


def _to_mongo(value: Any) -> Any:
    return value.to_mongo() if hasattr(value, "to_mongo") else value
