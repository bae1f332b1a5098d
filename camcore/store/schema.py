"""The dataset's field list and App config, changed one entry at a time.

FiftyOne's ``add_sample_field`` reloads the whole dataset document, converts every field's schema
entry and saves the whole list back, and ``dataset.save()`` walks every entry for changes: with
500 CAM fields one new field cost about 15 s (bench/scale.py --fields), and two processes saving
their own copies of the list lose each other's fields. Here:

- new top-level fields, entries of ``dataset.info`` and changes of the App config are one update of
  the entries that change (``DatasetUpdate``), which also sets ``last_modified_at`` as FiftyOne's
  own writes do;
- this process's copy of the schema catches up by declaring only the entries it lacks
  (``sync_schema``; a full reload only when another writer deleted or renamed a field), and reads
  the field names and App config only when the document is not as this process last saw it
  (its ``last_modified_at`` and size: a few bytes, not ~190 B a CAM field);
- a writer that has seen the document may plan from its copy without reading it at all: its
  update (``DatasetUpdate(strict=True)``) applies only while the document is still in that state.

The caller holds :func:`camcore.store.leases.schema_lease` so that one writer at a time changes a
dataset's fields and App config, across processes and hosts.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import fiftyone as fo
from fiftyone.core.odm.dataset import DatasetAppConfig, SampleFieldDocument
from fiftyone.core.odm.utils import validate_field_name
from pymongo import ReturnDocument

from camcore.errors import StoreError
from camcore.store.datasets import LOCK, datasets_collection

__all__ = ["Conflict", "DatasetUpdate", "compact_entry", "raw_info", "refresh_schema", "seen", "stored_app_config",
           "sync_schema"]


def _forget_changes(dataset: fo.Dataset, *roots: str) -> None:
    """What is written here already: FiftyOne's next save must not write this copy over others'."""
    doc = dataset._doc
    doc._changed_fields = [f for f in doc._changed_fields if f.split(".")[0] not in roots]


class Conflict(StoreError):
    """The dataset document changed between this process's read and its update (a writer that
    does not take the schema lease: FiftyOne itself, the App); nothing was written."""


class DatasetUpdate:
    """Changes of the dataset document gathered into one MongoDB update whose size does not grow
    with the number of fields.

    The dataset document holds every field's schema entry (about 1.5 kB a heatmap field), so a push
    makes one update whatever it declares, and only of the entries it changes: new top-level
    fields (each ``$set`` at the list's next index, guarded by the list's length: ``$push`` walks
    the whole list on the server, 15 ms at 500 fields against 2 ms), entries of ``dataset.info``
    ($set/$unset of those entries only) and changes of the App config ($set, $push, $pull of the
    entries that change, guarded by what they assume). This process's copy follows only once the
    update is written, entry by entry, so a failed update leaves it as it was (no reload, which
    converts every field: seconds at 500 fields).
    """

    def __init__(self, dataset: fo.Dataset, strict: bool = False):
        self.dataset = dataset
        # strict: planned from this process's copy without reading the document again: written
        # only while the document is as this process last saw it (else Conflict, nothing written)
        self.strict = strict
        self._fields: list[tuple[str, fo.Field, SampleFieldDocument]] = []
        self._set: dict[str, object] = {}
        self._unset: dict[str, str] = {}
        self._info: list[tuple[tuple[str, ...], object, tuple[tuple[str, ...], ...]]] = []
        self._app: dict[str, dict[str, object]] = {"$set": {}, "$push": {}, "$pullAll": {}}
        self._guards: dict[str, object] = {}

    def add_field(self, path: str, field: fo.Field) -> None:
        """Declare a new top-level sample field (built as FiftyOne's ``_create_field`` does)."""
        if "." in path:
            raise StoreError(f"{path!r}: only top-level fields are added here")
        validate_field_name(path, media_type=self.dataset.media_type)
        # As FiftyOne's _add_field_schema, without reading the field list through its attribute
        # (which walks every entry)
        field = field.copy()
        field.name = field.db_field = path
        field._set_created_at(datetime.utcnow())
        self._fields.append((path, field, SampleFieldDocument.from_field(field)))

    def set_info(self, path: tuple[str, ...], value: object, unset: tuple[tuple[str, ...], ...] = ()) -> None:
        """Set one entry of ``dataset.info`` (a path of keys) and remove others: only those entries
        are written (rewriting the whole dict lost other processes' entries)."""
        self._set["info." + ".".join(path)] = value
        self._unset.update({"info." + ".".join(p): "" for p in unset})
        self._info.append((path, value, unset))

    def app_config(self, op: str, path: str, value: object) -> None:
        """One change of the App config at `path` (dotted, inside ``app_config``; "" is the whole
        config): op "$set" a value, "$push" a list of values at the end of a list, "$pullAll" a
        list of values out of a list."""
        if op not in self._app:
            raise StoreError(f"unknown App config change {op!r}")
        self._app[op][path] = value

    def guard(self, path: str, value: object) -> None:
        """The update applies only while the App config holds `value` at `path` (inside ``app_config``)."""
        self._guards[_app_path(path)] = value

    def commit(self) -> None:
        """Write the changes in one update; raise Conflict (nothing written) if the field list or
        the App config changed since this process read them."""
        dataset = self.dataset
        names = [name for name, _f, _e in self._fields]
        update: dict[str, dict] = {}
        sets = dict(self._set)
        # New entries at the list's next indexes; the filter below holds only at exactly that length
        length = len(dataset._doc._data.get("sample_fields") or [])
        sets.update({f"sample_fields.{length + i}": compact_entry(entry.to_mongo(), _type_fields(field))
                     for i, (_n, field, entry) in enumerate(self._fields)})
        sets.update({_app_path(p): v for p, v in self._app["$set"].items()})
        if sets:
            update["$set"] = sets
        if self._app["$pullAll"]:
            update["$pullAll"] = {_app_path(p): list(v) for p, v in self._app["$pullAll"].items()}  # type: ignore[call-overload]
        if self._unset:
            update["$unset"] = dict(self._unset)
        if not update:
            return
        key = dataset._doc.id
        query: dict[str, object] = {"_id": key, **self._guards}
        # As FiftyOne does on each of its writes of the document: other processes' sync_schema see it
        now = datetime.utcnow()
        update.setdefault("$set", {})["last_modified_at"] = now
        coll = datasets_collection()
        same = _same_state(key)
        if same is not None:  # nobody wrote since this process's copy matched: it stays current after
            # No guard on the lists' lengths here: the state guard holds them (a guard on an
            # index of a list matches each entry's sub-fields too: +0.5 ms at 500 fields)
            after = coll.find_one_and_update({**query, "$expr": same}, self._appended(update), projection=_STATE,
                                             return_document=ReturnDocument.AFTER)
            if after is not None:
                self._follow(now)
                _SEEN_STATE[key] = _state_of(after)
                return
        _SEEN_STATE.pop(key, None)  # someone else wrote: the next sync_schema reads everything
        if self.strict:
            raise Conflict(f"{dataset.name!r} changed since this process last read it; read it again")
        if names:  # none of them declared meanwhile, and the list as long as this copy says
            query["sample_fields.name"] = {"$nin": names}
            query[f"sample_fields.{length}"] = {"$exists": False}
            if length:
                query[f"sample_fields.{length - 1}"] = {"$exists": True}
        if self._app["$push"]:  # at the end of the lists as they are now, whatever their length
            update["$push"] = {_app_path(p): {"$each": list(v)} for p, v in self._app["$push"].items()}  # type: ignore[call-overload]
        if coll.update_one(query, update).matched_count != 1:
            raise Conflict(f"the fields or App config of {dataset.name!r} changed meanwhile "
                           f"({', '.join(names) or 'App config'}); try again")
        self._follow(now)

    def _appended(self, update: dict[str, dict]) -> dict[str, Any]:
        """The update with the App config's appends as ``$set`` at the lists' next indexes, for the
        state-guarded write (this process's copy is the document). Why: MongoDB's ``$push`` walks the
        list (the colour scales, the CAM group's paths: an entry per field), ``$set`` at an index
        does not. A list this process's copy lacks (or holds empty) is pushed to: ``$set`` at index
        0 of a missing list would make a document."""
        config = stored_app_config(self.dataset) if self._app["$push"] else {}
        sets = dict(update.get("$set") or {})
        pushes: dict[str, object] = {}
        for path, values in self._app["$push"].items():
            items = list(values)  # type: ignore[call-overload]
            known = _list_at(config, path)
            if known:
                sets.update({_app_path(f"{path}.{len(known) + i}"): v for i, v in enumerate(items)})
            else:
                pushes[_app_path(path)] = {"$each": items}
        appended: dict[str, Any] = {**update, "$set": sets}
        if pushes:
            appended["$push"] = pushes
        return appended

    def _follow(self, modified: datetime) -> None:
        """This process's copy takes what was written, entry by entry."""
        dataset = self.dataset
        dataset._doc._data["last_modified_at"] = modified
        cls = dataset._sample_doc_cls
        for path, field, entry in self._fields:
            cls._declare_field(dataset, path, field)
            dataset._doc._data["sample_fields"].append(entry)
        if self._info:
            info = dict(raw_info(dataset))
            for keys_set, value, unset in self._info:
                for keys in unset:
                    _nested(info, keys[:-1]).pop(keys[-1], None)
                _nested(info, keys_set[:-1])[keys_set[-1]] = value
            dataset._doc._data["info"] = info
        if any(self._app.values()):
            _follow_app_config(dataset, self._app)
        _forget_changes(dataset, "sample_fields", "info", "app_config")


# An entry's keys that FiftyOne reads back as these same values when absent (SampleFieldDocument's
# defaults); a key whose stored value is its default is left out.
_ENTRY_DEFAULTS: dict[str, object] = {"embedded_doc_type": None, "subfield": None, "fields": [], "db_field": None,
                                      "description": None, "info": None, "read_only": False}


def compact_entry(son: dict, own: frozenset[str] = frozenset()) -> dict:
    """A field's schema entry without the keys that hold their default, its sub-fields' too.

    The dataset document holds an entry per field, and a heatmap field's entry declares its label
    attributes (sub-fields of 10 keys, 6 of them null, [] or false; 24 of them before only
    fields.DECLARED_ATTRIBUTES were declared: 5 kB a field written whole, 2.9 kB compact; 7 now:
    1.5 kB compact). MongoDB rewrites the whole document on each update that adds a field, so its
    size is a push's cost (bench/scale.py --fields). FiftyOne loads a compact entry with the same
    values (and writes it whole again when it saves the field list itself).

    `own`: the sub-fields its embedded type declares itself (a Heatmap's id, tags, map, map_path,
    range: 618 B of a heatmap field's 1.4 kB), left out too: FiftyOne merges them from the type
    whenever it loads the entry (EmbeddedDocumentField._fields), and the App's schema is FiftyOne's."""
    out = {k: v for k, v in son.items() if k not in _ENTRY_DEFAULTS or v != _ENTRY_DEFAULTS[k]}
    if out.get("fields"):
        out["fields"] = [compact_entry(f) for f in out["fields"] if f.get("name") not in own]
        if not out["fields"]:
            del out["fields"]
    return out


def _type_fields(field: fo.Field) -> frozenset[str]:
    """The sub-fields an embedded document field's type declares itself."""
    document_type = getattr(field, "document_type", None) if isinstance(field, fo.EmbeddedDocumentField) else None
    return frozenset(getattr(document_type, "_fields", None) or ())


def _app_path(path: str) -> str:
    return f"app_config.{path}" if path else "app_config"


def raw_info(dataset: fo.Dataset) -> dict:
    """``dataset.info`` as stored in this process's copy, read without the attribute (which
    walks every entry: the field registry grows with the fields)."""
    return dataset._doc._data.get("info") or {}


def sync_schema(dataset: fo.Dataset) -> bool:
    """Bring this process's copy of the field list and App config up to date with the database
    (one query); True if it changed. Fields another writer added are declared one by one; only a
    field deleted or renamed elsewhere costs a full reload.

    The query returns every field's name and the App config (about 190 B a CAM field) only when
    the document is not as this process last saw it (``_SEEN_STATE``), else a few bytes."""
    key = dataset._doc.id
    same = _same_state(key)
    payload: dict[str, object] = {"names": "$sample_fields.name", "app_config": "$app_config"}
    if same is not None:
        payload = {"same": same, **{k: {"$cond": [same, "$$REMOVE", v]} for k, v in payload.items()}}
    doc = datasets_collection().find_one({"_id": key}, {**_STATE, **payload})
    if doc is None:
        raise StoreError(f"dataset {dataset.name!r} was deleted")
    if doc.get("same") is True:
        return False
    stored = list(doc.get("names") or [])
    mine = _field_names(dataset)
    _SEEN_STATE.pop(key, None)  # until this copy is current again
    _refresh_app_config(dataset, doc.get("app_config"))
    changed = stored != mine
    if changed and not set(mine) <= set(stored):
        dataset.reload()
    elif changed:
        _declare_stored(dataset, [name for name in stored if name not in set(mine)])
    # This copy matches `doc` now (what the lines above read again is no older than it)
    _SEEN_STATE[key] = _state_of(doc)
    return changed


# The dataset document's state when this process's copy of its field list and App config last
# matched it: (last_modified_at, the document's size in bytes). FiftyOne sets last_modified_at on
# each of its writes of the document (Document._update; not the virtual last_loaded_at), and so
# does DatasetUpdate.commit; the size also catches a raw write that does not (only the same size
# written in the same millisecond as the last change would pass unseen).
_SEEN_STATE: dict[object, tuple[object, int]] = {}
_STATE = {"lm": "$last_modified_at", "size": {"$bsonSize": "$$ROOT"}}


def seen(dataset: fo.Dataset) -> bool:
    """Has this process's copy of the schema matched the database (a sync or a commit of its
    own)? Then a strict DatasetUpdate can be planned from the copy without reading it again."""
    return dataset._doc.id in _SEEN_STATE


def _state_of(doc: dict) -> tuple[object, int]:
    return doc.get("lm"), int(doc.get("size") or 0)


def _same_state(key: object) -> dict | None:
    """A MongoDB expression: the document is as this process last saw it (None: never seen)."""
    seen = _SEEN_STATE.get(key)
    if seen is None:
        return None
    return {"$and": [{"$eq": ["$last_modified_at", seen[0]]}, {"$eq": [{"$bsonSize": "$$ROOT"}, seen[1]]}]}


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


# The App config each dataset had in the database when this process last read or wrote it (a
# plain document): this process's copy follows the changes between two reads, not the whole
# config again (its size grows with the fields).
_APP_CONFIG_SEEN: dict[object, dict] = {}

Ops = dict[str, dict[str, object]]  # "$set" / "$push" / "$pullAll" -> {path inside app_config: value}


def _refresh_app_config(dataset: fo.Dataset, stored: dict | None) -> None:
    """Another writer may have styled its fields since this copy was read: take its changes."""
    key = dataset._doc.id
    seen = _APP_CONFIG_SEEN.get(key)
    if stored is None or seen == stored:
        return
    ops: Ops = {"$set": {}, "$push": {}, "$pullAll": {}}
    if seen is None:
        ops["$set"][""] = stored
    else:
        _diff(seen, stored, "", ops)
    _APP_CONFIG_SEEN[key] = stored
    _follow_object(dataset, ops, stored)
    _forget_changes(dataset, "app_config")


def _follow_app_config(dataset: fo.Dataset, ops: Ops) -> None:
    """The App config changes this process wrote: applied to the plain copy and to FiftyOne's."""
    key = dataset._doc.id
    seen = _APP_CONFIG_SEEN.get(key)
    if "" in ops["$set"]:
        seen = ops["$set"][""]  # type: ignore[assignment]
    elif seen is not None:
        for op, changes in ops.items():
            for path, value in changes.items():
                _apply_plain(seen, path, op, value)
    if seen is not None:
        _APP_CONFIG_SEEN[key] = seen
    _follow_object(dataset, ops, seen)


def _diff(old: object, new: object, path: str, ops: Ops) -> None:
    """The changes from `old` to `new` (plain documents) as ops: a list that grew at its end is a
    push of the new items, a dict or a same-length list is followed key by key, the rest is set."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in dict.fromkeys([*old, *new]):
            if old.get(k) != new.get(k):
                _diff(old.get(k), new.get(k), f"{path}.{k}" if path else k, ops)
    elif isinstance(old, list) and isinstance(new, list) and len(new) > len(old) and new[:len(old)] == old:
        ops["$push"][path] = new[len(old):]
    elif isinstance(old, list) and isinstance(new, list) and len(new) == len(old):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                _diff(a, b, f"{path}.{i}", ops)
    else:
        ops["$set"][path] = new


def _list_at(config: dict, path: str) -> list | None:
    """The list at a dotted path of a plain App config (list indexes as numbers), or None."""
    node: Any = config
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node if isinstance(node, list) else None


def _apply_plain(doc: dict, path: str, op: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        raise StoreError(f"App config path {path!r} ends in a list index")
    current = node.get(last)
    if op == "$set":
        node[last] = value
    elif op == "$push":
        node[last] = list(current or []) + list(value)
    else:
        node[last] = [v for v in current or [] if v not in list(value)]


def _follow_object(dataset: fo.Dataset, ops: Ops, whole: dict | None) -> None:
    """Apply ops to FiftyOne's in-memory App config, converting only the values they carry; if
    its shape does not match them (it was never read), convert `whole` (or read the stored one)."""
    data = dataset._doc._data
    try:
        if "" in ops["$set"] or data.get("app_config") is None:
            raise LookupError("the whole config")
        for op, changes in ops.items():
            for path, value in changes.items():
                _apply_object(data["app_config"], path, op, value)
    except (LookupError, TypeError, ValueError, AttributeError):
        if whole is None:
            whole = (datasets_collection().find_one({"_id": dataset._doc.id}, {"app_config": 1}) or {}).get(
                "app_config") or {}
        data["app_config"] = DatasetAppConfig._from_son(whole)


def _apply_object(config: Any, path: str, op: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node._data[part]
        if node is None:
            raise LookupError(path)
    field = node._fields[last]
    current = node._data.get(last)
    if op == "$set":
        node._data[last] = None if value is None else field.to_python(value)
    elif op == "$push":
        node._data[last] = list(current or []) + [field.field.to_python(v) for v in value]
    else:
        node._data[last] = [v for v in current or [] if v not in list(value)]


def stored_app_config(dataset: fo.Dataset) -> dict:
    """The dataset's App config as stored, a plain document (read once if this process has not
    seen it: sync_schema keeps it current). Do not change it in place."""
    key = dataset._doc.id
    if key not in _APP_CONFIG_SEEN:
        doc = datasets_collection().find_one({"_id": key}, {"app_config": 1}) or {}
        _APP_CONFIG_SEEN[key] = doc.get("app_config") or {}
    return _APP_CONFIG_SEEN[key]


def _nested(info: dict, keys: tuple[str, ...]) -> dict:
    """The dict at `keys` inside `info`, copied on the way down (never mutate the caller's copy)."""
    node = info
    for key in keys:
        child = dict(node.get(key) or {})
        node[key] = child
        node = child
    return node
