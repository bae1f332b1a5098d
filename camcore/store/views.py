"""Which samples, at any dataset size: a view described as data, built as FiftyOne stages, read a
page at a time.

Nothing here reads every sample of a view on an interaction. A view is a `ViewSpec` (saved view,
the App's view or selection, tags, label class and confidence, file name, sort), built into a
FiftyOne view by `build_view`; the explorer steps through it by position (`page`: one server-side
skip/limit), jumps to a sample by id (`position_of`: one server-side count where the order allows
it), and searches file paths on the server (`search`).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F

from camcore.errors import StoreError
from camcore.identity import FIELD_PREFIX
from camcore.store import audit
from camcore.store.datasets import db_errors, make_view, root_dataset

PAGE_SIZE = 24  # samples read per server round trip: the strip around the current sample, and ◀ ▶
SEARCH_LIMIT = 20
SCAN_PAGE = 10_000  # ids per round trip in the fallback position scan (arbitrary saved/App orders)
_SORTABLE_TYPES = (fo.IntField, fo.FloatField, fo.StringField, fo.DateTimeField, fo.DateField, fo.BooleanField)
_ORDERING_STAGES = (fo.SortBy, fo.SortBySimilarity, fo.Shuffle, fo.Select)  # their order is not the _id order


@dataclass(frozen=True)
class ViewSpec:
    """A view of one dataset, as plain data (hashable: it keys caches and pages)."""

    saved_view: str = ""  # a saved view's name
    app_stages: str = ""  # the FiftyOne App's view, as JSON of its serialized stages
    selected: tuple[str, ...] = ()  # sample ids chosen in the App
    tags: tuple[str, ...] = ()
    label_field: str = ""
    label: str = ""
    confidence: tuple[float, float] | None = None  # inclusive range on the labels' confidence
    filename_contains: str = ""
    sort_field: str = ""
    sort_reverse: bool = False
    narrow: str = ""  # the Audit page's narrowing (camcore.store.audit: measure ranges, a class)

    def describe(self) -> str:
        """One line for the UI: what this view is (plain text)."""
        parts = []
        if self.saved_view:
            parts.append(f"saved view '{self.saved_view}'")
        if self.app_stages:
            parts.append("the App's view")
        if self.selected:
            parts.append(f"{len(self.selected)} selected in the App")
        if self.tags:
            parts.append("tagged " + " or ".join(self.tags))
        if self.label_field or self.label:
            parts.append(f"{self.label or 'any label'} in {self.label_field or 'any field'}")
        if self.confidence is not None:
            parts.append(f"confidence {self.confidence[0]:.2f}–{self.confidence[1]:.2f}")
        if self.filename_contains:
            parts.append(f"file name contains '{self.filename_contains}'")
        if self.narrow:
            parts.append("narrowed to " + audit.describe_narrow(self.narrow))
        if self.sort_field:
            parts.append(f"sorted by {self.sort_field} {'descending' if self.sort_reverse else 'ascending'}")
        return ", ".join(parts) or "all samples"


@db_errors
def field_value(dataset: fo.Dataset, sample_id: str, path: str):
    """One sample's value of a (possibly embedded) field, by id: one indexed query."""
    values = dataset.select(sample_id).values(path)
    return values[0] if values else None


@db_errors
def build_view(dataset: fo.Dataset, spec: ViewSpec) -> fo.DatasetView:
    """The FiftyOne view a spec describes; StoreError for a saved view or field that is gone."""
    if spec.saved_view:
        if spec.saved_view not in dataset.list_saved_views():
            raise StoreError(f"no saved view {spec.saved_view!r} in {dataset.name!r}")
        view = dataset.load_saved_view(spec.saved_view)
    elif spec.app_stages:
        view = fo.DatasetView._build(dataset, json.loads(spec.app_stages))
    else:
        view = dataset.view()
    if spec.selected:
        view = view.select(list(spec.selected), ordered=True)
    view = make_view(view, tags=list(spec.tags) or None, label_field=spec.label_field or None,
                           label=spec.label or None, filename_contains=spec.filename_contains or None)
    if spec.confidence is not None:
        view = _confidence_filter(view, spec)
    if spec.narrow:
        view = view.match(audit.narrow_filter(spec.narrow, dataset))
    if spec.sort_field:
        if spec.sort_field not in sortable_fields(dataset):
            raise StoreError(f"cannot sort {dataset.name!r} by {spec.sort_field!r}: not a sortable field")
        # Ties broken by id, in the sort's direction: a position is then a pure function of the
        # sample (see position_of), and one index on (field, _id) serves both directions.
        direction = -1 if spec.sort_reverse else 1
        view = view.sort_by([(spec.sort_field, direction), ("_id", direction)])
    return view


def _confidence_filter(view: fo.DatasetView, spec: ViewSpec) -> fo.DatasetView:
    lo, hi = spec.confidence  # type: ignore[misc]
    cond = (F("confidence") >= float(lo)) & (F("confidence") <= float(hi))
    if spec.label:
        cond = cond & (F("label") == spec.label)
    return view.match_labels(filter=cond, fields=spec.label_field or None)


def app_view_spec(view: fo.DatasetView | None) -> str:
    """A view from the App session, as ViewSpec.app_stages ("" for the whole dataset)."""
    if view is None or isinstance(view, fo.Dataset) or not view._stages:
        return ""
    return json.dumps(view._serialize(include_uuids=False), sort_keys=True, default=str)


def view_key(view: fo.Dataset | fo.DatasetView) -> str:
    """Which samples a view means, as text (its dataset and stages): a key for what was read of it."""
    return f"{root_dataset(view).name}\n{app_view_spec(view if isinstance(view, fo.DatasetView) else None)}"


# ---------------------------------------------------------------- reading a view a page at a time


def is_plain(view: fo.Dataset | fo.DatasetView) -> bool:
    return isinstance(view, fo.Dataset) or not view._stages


@db_errors
def count(view: fo.Dataset | fo.DatasetView) -> int:
    """Samples in the view; O(1) for a whole dataset, sorted or not (collection metadata), one
    server-side count otherwise."""
    if not is_plain(view) and isinstance(view._stages[-1], fo.SortBy):  # an order keeps every sample:
        view = fo.DatasetView._build(view._dataset, view._serialize()[:-1])  # counted without it
    if is_plain(view):
        root = root_dataset(view)
        return int(root._sample_collection.estimated_document_count())
    return int(view.count())


@db_errors
def page(view: fo.Dataset | fo.DatasetView, start: int, size: int = PAGE_SIZE) -> list[tuple[str, str]]:
    """(id, filepath) of the samples at positions start .. start+size-1 (fewer at the end)."""
    start = max(0, int(start))
    sliced = view.skip(start).limit(int(size)) if start else view.limit(int(size))
    ids, paths = sliced.values(["id", "filepath"])
    return list(zip(ids, paths, strict=True))


def _orders_by_id(view: fo.Dataset | fo.DatasetView) -> bool:
    """True when the view's order is the samples' id order (MongoDB returns a collection in
    insertion order, and ids grow with insertion) as far as the stages can tell."""
    return is_plain(view) or not any(isinstance(s, _ORDERING_STAGES) for s in view._stages)


@db_errors
def position_of(view: fo.Dataset | fo.DatasetView, spec: ViewSpec, sample_id: str) -> int | None:
    """The position of a sample in the view, or None when it is not in the view.

    One server-side count where the order is known (id order, or the explorer's own sort with its
    id tie-break); checked against the page it names, and otherwise found by a scan of ids only
    (saved or App views with orders of their own, or ids not in insertion order)."""
    try:
        oid = ObjectId(sample_id)
    except Exception:
        return None
    base = view.view() if isinstance(view, fo.Dataset) else view
    if not len(base.select_fields().match(F("_id") == oid).limit(1)):
        return None
    guess = _counted_position(base, spec, oid)
    if guess is not None:
        found = page(base, guess, 1)
        if found and found[0][0] == sample_id:
            return guess
    return _scanned_position(base, sample_id)


def _counted_position(view: fo.DatasetView, spec: ViewSpec, oid: ObjectId) -> int | None:
    stages = view._stages
    if spec.sort_field and stages and isinstance(stages[-1], fo.SortBy):
        unsorted = fo.DatasetView._build(view._dataset, view._serialize()[:-1])
        if not _orders_by_id(unsorted):
            return None
        field = spec.sort_field
        value = unsorted.match(F("_id") == oid).values(field)[0]
        if value is None:
            return None  # missing values sort first or last depending on MongoDB: scan instead
        # Plain queries, one index range each, not one `$expr` (which no index serves: a scan of
        # every sample at 10^6). Samples without the field sort first ascending, and the range
        # query does not match them: counted apart.
        op = "$gt" if spec.sort_reverse else "$lt"
        before = _count_matching(unsorted, {field: {op: value}})
        ties = _count_matching(unsorted, {field: value, "_id": {op: oid}})
        missing = 0 if spec.sort_reverse else _count_matching(unsorted, {field: None})
        return before + ties + missing
    if _orders_by_id(view):
        return _count_matching(view, {"_id": {"$lt": oid}})
    return None


def _count_matching(view: fo.DatasetView, query: dict) -> int:
    """Samples of the view matching a MongoDB query. On a whole dataset, MongoDB's count command
    (an index range count when an index serves the query); else the view's pipeline with the query
    as a plain `$match`, which an index can serve after the view's own filters."""
    if is_plain(view):
        coll = root_dataset(view)._sample_collection
        return int(coll.database.command("count", coll.name, query=query)["n"])
    return int(view.match(query).count())


# A sort on a dataset this big without an index scans every sample at each move: offer one.
SORT_INDEX_OFFER_OVER = 50_000
_INDEX_BYTES_PER_SAMPLE = 45  # a (value, _id) key and its record id, as MongoDB's B-tree stores them
_INDEX_SAMPLES_PER_SECOND = 150_000  # building it, on one busy CPU core


def sort_index_name(field: str, tags: bool = False) -> str:
    return f"cam_explorer_sort_{'tags_' if tags else ''}{field}"


def _sort_index_keys(field: str, tags: bool) -> list[str]:
    # With a tag filter the tags come first: the filter is the index's prefix, the order its rest.
    return (["tags"] if tags else []) + [field, "_id"]


@db_errors
def sort_index_missing(dataset: fo.Dataset, field: str, tags: bool = False) -> bool:
    """True if no index serves the view sorted by `field` (after a tag filter, with tags): each move
    of it is then a scan. (field, _id) serves a plain sort; (tags, field, _id) one of tagged samples."""
    wanted = _sort_index_keys(field, tags)
    for info in root_dataset(dataset)._sample_collection.index_information().values():
        keys = [k for k, _d in info.get("key", [])]
        if keys[:len(wanted)] == wanted or (not tags and keys == [field]):
            return False
    return True


@db_errors
def index_names(dataset: fo.Dataset | fo.DatasetView) -> tuple[str, ...]:
    """The names of the sample collection's indexes (one small server call). A new index can change
    the order MongoDB returns an unsorted filtered view in (its plan then walks the index), so pages
    read before it hold other positions."""
    return tuple(sorted(root_dataset(dataset)._sample_collection.index_information()))


def sort_index_cost(samples: int) -> tuple[float, float]:
    """(seconds, megabytes) an index on a sort field takes to build, roughly."""
    return samples / _INDEX_SAMPLES_PER_SECOND, samples * _INDEX_BYTES_PER_SAMPLE / 1e6


@db_errors
def create_sort_index(dataset: fo.Dataset, field: str, tags: bool = False) -> None:
    """The index that makes every move of a view sorted by `field` (either direction) a seek; with
    tags, of a view of tagged samples so sorted."""
    keys = _sort_index_keys(field, tags)
    root_dataset(dataset)._sample_collection.create_index([(k, 1) for k in keys], name=sort_index_name(field, tags))


def _scanned_position(view: fo.DatasetView, sample_id: str) -> int | None:
    start = 0
    while True:
        ids = view.skip(start).limit(SCAN_PAGE).values("id") if start else view.limit(SCAN_PAGE).values("id")
        if sample_id in ids:
            return start + ids.index(sample_id)
        if len(ids) < SCAN_PAGE:
            return None
        start += SCAN_PAGE


@db_errors
def search(view: fo.Dataset | fo.DatasetView, text: str, limit: int = SEARCH_LIMIT) -> list[tuple[str, str]]:
    """Up to `limit` (id, filepath) whose path contains `text` (case-insensitive), on the server."""
    text = str(text).strip()
    if not text:
        return []
    found = view.match(F("filepath").contains_str(text, case_sensitive=False)).limit(int(limit))
    ids, paths = found.values(["id", "filepath"])
    return list(zip(ids, paths, strict=True))


def random_position(total: int, rng: random.Random | None = None) -> int:
    return (rng or random).randrange(total) if total > 0 else 0


# ---------------------------------------------------------------- names and fields


@db_errors
def common_folder(dataset: fo.Dataset) -> str:
    """The deepest folder that holds every sample's file. The common prefix of the smallest and the
    largest path is every path's common prefix; both come from the filepath index."""
    first = dataset.sort_by("filepath").limit(1).values("filepath")
    last = dataset.sort_by("filepath", reverse=True).limit(1).values("filepath")
    if not first or not last:
        return ""
    lo, hi = first[0], last[0]
    if lo == hi:
        return os.path.dirname(lo)
    try:
        return os.path.commonpath([os.path.dirname(lo), os.path.dirname(hi)])
    except ValueError:  # different drives or mixed absolute/relative paths
        return ""


def relative_label(path: str, folder: str) -> str:
    """The path as shown: relative to the dataset's common folder (a/frame.jpg vs b/frame.jpg)."""
    if folder and path.startswith(folder.rstrip("/") + "/"):
        return path[len(folder.rstrip("/")) + 1:]
    return path


@db_errors
def sortable_fields(dataset: fo.Dataset) -> list[str]:
    """Fields a view can be sorted by: scalar fields at the top level or in an embedded label (a
    prediction's confidence), not inside lists; CAM Explorer's own fields left out."""
    out = []
    for path, f in dataset.get_field_schema(flat=True).items():
        if not isinstance(f, _SORTABLE_TYPES) or path in ("id", "_id", "filepath") or path.startswith("_"):
            continue
        if path.split(".")[0].startswith(FIELD_PREFIX) or any(p.startswith("_") for p in path.split(".")):
            continue
        if _under_list(dataset, path):
            continue
        out.append(path)
    return sorted(out, key=lambda p: (p.count("."), p))


def _under_list(dataset: fo.Dataset, path: str) -> bool:
    parts = path.split(".")
    for i in range(1, len(parts)):
        if isinstance(dataset.get_field(".".join(parts[:i])), fo.ListField):
            return True
    return False


@db_errors
def has_confidence(dataset: fo.Dataset, label_field: str) -> bool:
    """Whether the label field's labels carry a confidence (then a range filter is offered)."""
    doc_type = getattr(dataset.get_field(label_field), "document_type", None)
    if doc_type is None:
        return False
    inner = {fo.Classifications: "classifications", fo.Detections: "detections"}.get(doc_type)
    path = f"{label_field}.{inner}.confidence" if inner else f"{label_field}.confidence"
    return dataset.get_field(path) is not None
