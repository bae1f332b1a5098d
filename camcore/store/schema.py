"""The dataset's field list and App config, changed one entry at a time.

FiftyOne's ``add_sample_field`` reloads the whole dataset document, converts every field's schema
entry and saves the whole list back, and ``dataset.save()`` walks every entry for changes: with
500 CAM fields one new field cost about 15 s (bench/scale.py --fields), and two processes saving
their own copies of the list lose each other's fields. Here:

- a new top-level field is one atomic ``$push`` of its entry (``add_field``);
- this process's copy of the schema catches up by declaring only the entries it lacks
  (``sync_schema``; a full reload only when another writer deleted or renamed a field);
- the App config is written as one ``$set`` of ``app_config`` (``save_app_config``).

The caller holds :func:`camcore.store.leases.schema_lease` so that one writer at a time changes a
dataset's fields and App config, across processes and hosts.
"""
from __future__ import annotations

from datetime import datetime

import fiftyone as fo
from fiftyone.core.odm.dataset import DatasetAppConfig, SampleFieldDocument
from fiftyone.core.odm.utils import validate_field_name

from camcore.errors import StoreError
from camcore.store.datasets import LOCK, datasets_collection

__all__ = ["DatasetUpdate", "raw_info", "refresh_schema", "stored_app_config", "sync_schema"]


def _forget_changes(dataset: fo.Dataset, *roots: str) -> None:
    """What is written here already: FiftyOne's next save must not write this copy over others'."""
    doc = dataset._doc
    doc._changed_fields = [f for f in doc._changed_fields if f.split(".")[0] not in roots]


class DatasetUpdate:
    """Changes of the dataset document gathered into one MongoDB update.

    The server rewrites the whole dataset document (every field's schema entry) on each update,
    so a push makes one update whatever it declares: new top-level fields ($push of their
    entries), entries of ``dataset.info`` ($set/$unset of those entries only) and the App config.
    This process's copy follows as each change is added; if the update fails the copy is reloaded.
    """

    def __init__(self, dataset: fo.Dataset):
        self.dataset = dataset
        self._entries: list[dict] = []
        self._set: dict[str, object] = {}
        self._unset: dict[str, str] = {}
        self._app_config: dict | None = None

    def add_field(self, path: str, field: fo.Field) -> None:
        """Declare a new top-level sample field (built as FiftyOne's ``_create_field`` does)."""
        if "." in path:
            raise StoreError(f"{path!r}: only top-level fields are added here")
        dataset = self.dataset
        validate_field_name(path, media_type=dataset.media_type)
        # As FiftyOne's _add_field_schema, without reading the field list through its attribute
        # (which walks every entry)
        field = field.copy()
        field.name = field.db_field = path
        field._set_created_at(datetime.utcnow())
        dataset._sample_doc_cls._declare_field(dataset, path, field)
        entry = SampleFieldDocument.from_field(field)
        dataset._doc._data["sample_fields"].append(entry)
        self._entries.append(entry.to_mongo())

    def set_info(self, path: tuple[str, ...], value: object, unset: tuple[tuple[str, ...], ...] = ()) -> None:
        """Set one entry of ``dataset.info`` (a path of keys) and remove others: only those entries
        are written (rewriting the whole dict lost other processes' entries)."""
        self._set["info." + ".".join(path)] = value
        self._unset.update({"info." + ".".join(p): "" for p in unset})
        info = dict(raw_info(self.dataset))
        for keys in unset:
            _nested(info, keys[:-1]).pop(keys[-1], None)
        _nested(info, path[:-1])[path[-1]] = value
        self.dataset._doc._data["info"] = info

    def set_app_config(self, config: dict) -> None:
        """The whole App config, a plain document (see appstyle)."""
        self._app_config = config

    def commit(self) -> None:
        dataset = self.dataset
        update: dict = {}
        names = [e["name"] for e in self._entries]
        if self._entries:
            update["$push"] = {"sample_fields": {"$each": self._entries}}
        sets = dict(self._set)
        if self._app_config is not None:
            sets["app_config"] = self._app_config
        if sets:
            update["$set"] = sets
        if self._unset:
            update["$unset"] = dict(self._unset)
        if not update:
            return
        try:
            done = datasets_collection().update_one(
                {"_id": dataset._doc.id, "sample_fields.name": {"$nin": names}}, update)
            if done.matched_count != 1:
                raise StoreError(f"the fields of {dataset.name!r} changed meanwhile ({', '.join(names)}); "
                                 "try again")
        except BaseException:
            dataset.reload()  # this copy is ahead of the database: back to what is stored
            raise
        if self._app_config is not None:
            _APP_CONFIG_SEEN[dataset._doc.id] = self._app_config
            dataset._doc._data["app_config"] = DatasetAppConfig._from_son(self._app_config)
        _forget_changes(dataset, "sample_fields", "info", "app_config")


def raw_info(dataset: fo.Dataset) -> dict:
    """``dataset.info`` as stored in this process's copy, read without the attribute (which
    walks every entry: the field registry grows with the fields)."""
    return dataset._doc._data.get("info") or {}


def sync_schema(dataset: fo.Dataset) -> bool:
    """Bring this process's copy of the field list and App config up to date with the database
    (one query); True if it changed. Fields another writer added are declared one by one; only a
    field deleted or renamed elsewhere costs a full reload."""
    doc = datasets_collection().find_one({"_id": dataset._doc.id}, {"sample_fields.name": 1, "app_config": 1})
    if doc is None:
        raise StoreError(f"dataset {dataset.name!r} was deleted")
    stored = [f.get("name") for f in doc.get("sample_fields") or []]
    mine = _field_names(dataset)
    _refresh_app_config(dataset, doc.get("app_config"))
    if stored == mine:
        return False
    if not set(mine) <= set(stored):
        dataset.reload()
        return True
    missing = [name for name in stored if name not in set(mine)]
    _declare_stored(dataset, missing)
    return True


def refresh_schema(dataset: fo.Dataset) -> None:
    """sync_schema for a reader: fields other processes declared become known here."""
    with LOCK:
        sync_schema(dataset)


def _declare_stored(dataset: fo.Dataset, names: list[str]) -> None:
    """Declare in this process the stored entries of these fields (written by another writer)."""
    rows = list(datasets_collection().aggregate([
        {"$match": {"_id": dataset._doc.id}},
        {"$project": {"fields": {"$filter": {"input": "$sample_fields", "cond": {"$in": ["$$this.name", names]}}}}},
    ]))
    cls = dataset._sample_doc_cls
    for son in rows[0]["fields"] if rows else []:
        entry = SampleFieldDocument._from_son(son)
        cls._declare_field(dataset, entry.name, entry)
        dataset._doc._data["sample_fields"].append(entry)
    _forget_changes(dataset, "sample_fields")


def _field_names(dataset: fo.Dataset) -> list[str]:
    """This process's field names, read from the raw list: the attribute walks every entry."""
    entries = dataset._doc._data.get("sample_fields") or []
    return [e.name for e in entries]


# The App config each dataset had in the database when this process last read or wrote it: a
# config that has not changed since is not converted again (its size grows with the fields).
_APP_CONFIG_SEEN: dict[object, object] = {}


def _refresh_app_config(dataset: fo.Dataset, stored: dict | None) -> None:
    """Another writer may have styled its fields since this copy was read: start from the stored config."""
    if stored is None or _APP_CONFIG_SEEN.get(dataset._doc.id) == stored:
        return
    dataset._doc._data["app_config"] = DatasetAppConfig._from_son(stored)
    _APP_CONFIG_SEEN[dataset._doc.id] = stored
    _forget_changes(dataset, "app_config")


def stored_app_config(dataset: fo.Dataset) -> dict:
    """The dataset's App config as stored, a plain document (read once if this process has not
    seen it: sync_schema keeps it current). Do not change it in place."""
    key = dataset._doc.id
    if key not in _APP_CONFIG_SEEN:
        doc = datasets_collection().find_one({"_id": key}, {"app_config": 1}) or {}
        _APP_CONFIG_SEEN[key] = doc.get("app_config") or {}
    return _APP_CONFIG_SEEN[key]  # type: ignore[return-value]


def _nested(info: dict, keys: tuple[str, ...]) -> dict:
    """The dict at `keys` inside `info`, copied on the way down (never mutate the caller's copy)."""
    node = info
    for key in keys:
        child = dict(node.get(key) or {})
        node[key] = child
        node = child
    return node
