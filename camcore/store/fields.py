"""Heatmap fields: declared from a HeatmapIdentity, checked before any write, listed in the
dataset's info, and styled for the FiftyOne App.

The name of the field (``cam_<method>_<layer>_<model>[_<target>][_<variant>]``), its meaning and
its description all come from the heatmap's :class:`~camcore.identity.HeatmapIdentity`. A field
we create is an ``fo.Heatmap`` field with that description, marked in its FiftyOne field info with
its meaning, ``info={"cam_explorer": {"kind": "heatmap", "model": ..., "method": ..., "layer": ...,
"target": ...[, "variant": ...]}}``, and listed with its meaning in
``dataset.info["cam_explorer"]["fields"]`` (fields made before scale32 also carry the description
in both). A write never touches a field that is not marked ours,
is not a Heatmap field, or is ours but means something else (two names that sanitise alike): it
raises and writes nothing.
"""
from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import fiftyone as fo

from camcore.errors import StoreError
from camcore.identity import FIELD_PREFIX, HeatmapIdentity
from camcore.store import appstyle, schema
from camcore.store.appstyle import HEATMAP_COLORSCALE, _show_in_app
from camcore.store.datasets import MARK, db_errors, root_dataset
from camcore.store.leases import schema_lease

__all__ = ["DECLARED_ATTRIBUTES", "FIELD_PREFIX", "HEATMAP_COLORSCALE", "LABEL_ATTRIBUTES", "check_field",
           "declare_heatmap_field",
           "declare_heatmap_fields", "heatmap_fields", "stored_identity"]

# The attributes every heatmap label carries (see heatmaps.py), in the order the plugin's panel
# lists them. Only DECLARED_ATTRIBUTES are declared in the field's schema; the rest stay on each label
# as FiftyOne's dynamic attributes (label["weights"], label.weights_sha256, values(), match() and the
# App's tooltip read them as before).
LABEL_ATTRIBUTES: dict[str, type[fo.Field]] = {
    "model": fo.StringField, "weights": fo.StringField, "pretrained": fo.BooleanField,
    "method": fo.StringField, "layer": fo.StringField, "target": fo.StringField,
    "target_index": fo.IntField, "target_rule": fo.StringField, "aug_smooth": fo.BooleanField,
    "eigen_smooth": fo.BooleanField, "raw_min": fo.FloatField, "raw_max": fo.FloatField, "blank": fo.BooleanField,
    "created_at": fo.StringField, "versions": fo.DictField,
    # the rest of HeatmapIdentity.provenance: what made the map, compared by a batch's resume
    "arch": fo.StringField, "weights_sha256": fo.StringField, "classes_file": fo.StringField,
    "input_size": fo.IntField,
}
# What varies from label to label of one field and is worth a filter in the App's sidebar (which
# offers one per declared attribute): the class explained (Audit groups and narrows by it too) and
# whether the map is blank. Model, method, layer, smoothing and weights are the field's own meaning;
# the rest (times, versions, hashes, raw range) nothing filters on. Each declared attribute costs
# every field ~100 B of the dataset document, which MongoDB rewrites whole on each push
# (bench/scale.py --fields); labels' other attributes (a batch's, a detector's box) are not declared.
DECLARED_ATTRIBUTES: tuple[str, ...] = ("target", "blank")


def check_field(dataset: fo.Dataset, field: str, meaning: dict[str, str]) -> bool:
    """True if the field exists and is ours with this meaning, False if absent; else raise."""
    # The declared top-level field itself: get_field builds the whole schema on each call
    existing = dataset._sample_doc_cls._fields.get(field) if "." not in field else dataset.get_field(field)
    if existing is None:
        return False
    doc_type = getattr(existing, "document_type", None)
    if not (isinstance(existing, fo.EmbeddedDocumentField) and doc_type and issubclass(doc_type, fo.Heatmap)):
        raise StoreError(
            f"field {field!r} of {dataset.name!r} exists and is not a Heatmap field; not overwriting it")
    mark = (existing.info or {}).get(MARK)
    if not isinstance(mark, dict):
        raise StoreError(
            f"field {field!r} of {dataset.name!r} was not created by CAM Explorer; not overwriting it")
    if not _means(mark, meaning):
        raise StoreError(
            f"field {field!r} already holds {mark.get('method')} on {mark.get('layer')} of "
            f"{mark.get('model')} for {mark.get('target')!r}; names collide after sanitising"
        )
    return True


def _means(mark: dict, meaning: dict[str, str]) -> bool:
    # A field made before variants existed has none: it matches the plain map.
    return all(mark.get(k) == v for k, v in meaning.items()) and mark.get("variant", "") == meaning.get("variant", "")


def stored_identity(dataset: fo.Dataset | fo.DatasetView, identity: HeatmapIdentity) -> HeatmapIdentity:
    """The identity as this dataset keeps it (its ``stored_as``, when not its own name): one
    computation, one field.

    - A field of ours that holds the same map under another name (an older CAM Explorer's, before
      names were cut to fit the App's sidebar) keeps it: its maps are found, resumed and replaced there.
    - A name cut to fit ends in a short hash: where another map of ours holds it already, this map
      takes its spare name (a longer hash). A field that is not ours is never taken: the write refuses.

    Reads the declared fields in memory only (declare_heatmap_fields resolves again under the lease)."""
    cls = root_dataset(dataset)._sample_doc_cls
    declared = cls._fields
    if identity.stored_as:
        return identity
    meaning, name = identity.meaning, identity.field_name
    if _holds(declared.get(name), meaning):
        return identity
    for other in _index_of(cls).holders(meaning):
        if _holds(declared.get(other), meaning):  # the index only narrows: the field itself decides
            return dataclasses.replace(identity, stored_as=other)
    coded = bool(identity.model_code and identity.method_code)
    if name in declared and coded and _holds(declared[name], None):
        return dataclasses.replace(identity, stored_as=identity.spare_field_name)
    return identity


def _meaning_key(meaning: dict[str, Any]) -> tuple:
    # dict.get itself: a field info's dicts are mongoengine's, whose get is Python (calls per field)
    get = dict.get
    return (get(meaning, "kind"), get(meaning, "model"), get(meaning, "method"), get(meaning, "layer"),
            get(meaning, "target"), get(meaning, "variant", ""))


class _MeaningIndex:
    """Our heatmap fields of one sample class by what they mean, in declared order. Kept up to
    date by the names that came or went since the last look (set arithmetic), so finding a map's
    field reads only new fields' info, not every field's on every push (a push's cost grew with
    the CAM fields: tests/test_push_scale.py)."""

    def __init__(self) -> None:
        self.order: tuple = ()
        self.names: set[str] = set()
        self.by_meaning: dict[tuple, list[str]] = {}

    def holders(self, meaning: dict[str, str]) -> list[str]:
        return self.by_meaning.get(_meaning_key(meaning), [])

    def follow(self, cls: Any) -> _MeaningIndex:
        order = cls._fields_ordered
        if order is self.order:
            return self
        known = len(self.order)
        if order[:known] == self.order:  # fields only added (declaring appends): read the new ones
            added = order[known:]
            now = self.names.union(added)
        else:
            now = set(order)
            gone = self.names - now
            if gone:
                self.by_meaning = {k: [n for n in v if n not in gone] for k, v in self.by_meaning.items()}
            added = tuple(n for n in order if n not in self.names)
        for name in [n for n in added if n.startswith(FIELD_PREFIX)]:
            mark = dict.get(getattr(cls._fields.get(name), "info", None) or {}, MARK)
            if isinstance(mark, dict) and dict.get(mark, "kind") == "heatmap":
                self.by_meaning.setdefault(_meaning_key(mark), []).append(name)
        self.order, self.names = order, now
        return self


_INDEXES: weakref.WeakKeyDictionary[type, _MeaningIndex] = weakref.WeakKeyDictionary()


def _index_of(cls: type) -> _MeaningIndex:
    index = _INDEXES.get(cls)
    if index is None:
        index = _INDEXES[cls] = _MeaningIndex()
    return index.follow(cls)


def _holds(f: Any, meaning: dict[str, str] | None) -> bool:
    """Is f a heatmap field of ours (holding this meaning, when given)?"""
    mark = (getattr(f, "info", None) or {}).get(MARK)
    return isinstance(mark, dict) and mark.get("kind") == "heatmap" and (meaning is None or _means(mark, meaning))


def declare_heatmap_field(
    dataset: fo.Dataset | fo.DatasetView, identity: HeatmapIdentity, shown_with: str | None = None,
) -> str:
    """declare_heatmap_fields for one identity."""
    return declare_heatmap_fields(dataset, [identity], shown_with)[0]


_ATTEMPTS = 3  # a writer outside the schema lease (FiftyOne, the App) changed the document meanwhile


def declare_heatmap_fields(
    dataset: fo.Dataset | fo.DatasetView, identities: Sequence[HeatmapIdentity], shown_with: str | None = None,
) -> list[str]:
    """Create (or check) the Heatmap field of each identity with DECLARED_ATTRIBUTES declared (the
    labels' other attributes are stored undeclared), list them in dataset.info and style them for
    the App; return their names. Raises
    StoreError for a field that is not ours or means something else, before anything is written.
    Idempotent.

    One update of the dataset document for them all, under the schema lease, that writes only the
    entries that change: the document holds every field's entry, and FiftyOne's add_sample_field
    reloads and saves it whole, costs that grow with the number of fields.

    A process that has seen the document (schema.seen) plans from its copy without reading it
    again: the update applies only while the document is as this process last saw it, and
    otherwise nothing is written, the copy catches up and the plan is made again.

    shown_with: the write or run these fields belong to (a push's write id, a batch's run id);
    the App switches on the newest field."""
    dataset = root_dataset(dataset)
    for attempt in range(_ATTEMPTS):
        optimistic = attempt == 0 and schema.seen(dataset)
        with schema_lease(dataset, sync=not optimistic):  # one writer of the field list at a time
            if optimistic:
                try:
                    names = _declare(dataset, identities, shown_with, strict=True)
                    break
                except StoreError:  # this copy was behind (or a field is in the way: checked again below)
                    schema.sync_schema(dataset)
            try:
                names = _declare(dataset, identities, shown_with, strict=False)
                break
            except schema.Conflict:
                if attempt == _ATTEMPTS - 1:
                    raise
    appstyle.app.refresh_app(dataset.name)
    return names


def _declare(dataset: fo.Dataset, given: Sequence[HeatmapIdentity], shown_with: str | None, strict: bool) -> list[str]:
    """declare_heatmap_fields' plan and its one update, from this process's copy of the schema.
    strict: the copy was not read again under this lease (the update is guarded on the document's
    state; a field that needs FiftyOne's own path raises Conflict first, nothing written)."""
    # Field types, not fields: each new heatmap field gets its own (copying a field deep-copies it)
    wanted = {k: LABEL_ATTRIBUTES[k] for k in DECLARED_ATTRIBUTES}
    identities = [stored_identity(dataset, i) for i in given]
    names = list(dict.fromkeys(identity.field_name for identity in identities))
    new = {i.field_name: i for i in identities if not check_field(dataset, i.field_name, i.meaning)}
    for field in names:
        if field not in new:
            if strict and _lacks_attributes(dataset, field, wanted):  # FiftyOne's path writes from this copy
                raise schema.Conflict(f"{field!r} needs its attributes declared: read the schema first")
            _complete_attributes(dataset, field, wanted)
    update = schema.DatasetUpdate(dataset, strict=strict)
    for name, identity in new.items():
        update.add_field(name, dataset._sample_doc_cls._create_field(
            name, fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap,
            fields=[_named(ftype, key) for key, ftype in wanted.items()], description=identity.description,
            # The description once, on the field: the mark and the registry hold the meaning
            # (a copy in each cost ~500 B a field of the document every push rewrites)
            info={MARK: dict(identity.meaning)}))
    _register(dataset, update, {i.field_name: dict(i.meaning) for i in identities})
    _show_in_app(dataset, names, shown_with, update)
    update.commit()
    return names


def _lacks_attributes(dataset: fo.Dataset, field: str, wanted: dict[str, type[fo.Field]]) -> bool:
    declared = dataset._sample_doc_cls._fields[field].get_field_schema()
    return any(name not in declared for name in wanted)


def _complete_attributes(dataset: fo.Dataset, field: str, wanted: dict[str, type[fo.Field]]) -> None:
    """A field made without one of these attributes declared (by hand, or an older version):
    FiftyOne's own (slow) path. Fields that declare more (every label attribute, as CAM Explorer
    did before DECLARED_ATTRIBUTES) keep them."""
    declared = dataset._sample_doc_cls._fields[field].get_field_schema()
    for name, ftype in wanted.items():
        if name not in declared:
            dataset.add_sample_field(f"{field}.{name}", ftype)


def _named(ftype: type[fo.Field], name: str) -> fo.Field:
    field = ftype()
    field.name = name
    return field


def _register(dataset: fo.Dataset, update: schema.DatasetUpdate, entries: dict[str, dict]) -> None:
    """List the fields in ``dataset.info[MARK]["fields"]`` (their own entries); entries of fields
    deleted or renamed outside CAM Explorer leave the registry."""
    registry = (schema.raw_info(dataset).get(MARK) or {}).get("fields") or {}
    gone = set(registry).difference(dataset._sample_doc_cls._fields, entries)  # C speed: an entry a field
    stale = tuple((MARK, "fields", name) for name in registry if name in gone) if gone else ()
    for i, (field, entry) in enumerate(entries.items()):
        if registry.get(field) != entry or (stale and i == 0):
            update.set_info((MARK, "fields", field), entry, unset=stale if i == 0 else ())


def heatmap_fields(dataset: fo.Dataset | fo.DatasetView) -> dict[str, dict]:
    """Our heatmap fields on this dataset: field name -> its meaning (model, method, ...) and
    description."""
    out = {}
    for name, field in root_dataset(dataset).get_field_schema().items():
        mark = (getattr(field, "info", None) or {}).get(MARK)
        if isinstance(mark, dict) and mark.get("kind") == "heatmap":
            out[name] = {"description": getattr(field, "description", None) or "", **mark}
    return out


@db_errors
def stored_fields(dataset: fo.Dataset | fo.DatasetView, sample_id: str, fields: list[str]) -> set[str]:
    """Which of these fields already hold a value on the sample (a push would replace them)."""
    root = root_dataset(dataset)
    present = [f for f in dict.fromkeys(fields) if root.get_field(f) is not None]
    if not present:
        return set()
    values = root.select(sample_id).values(present)
    return {f for f, v in zip(present, values, strict=True) if v and v[0] is not None}


# ---------------------------------------------------------------- App styling
# In camcore.store.appstyle (colour scale, switched-on field, sidebar group); the names stay here.
_activate, _dense_fields = appstyle._activate, appstyle._dense_fields
