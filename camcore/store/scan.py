"""What a batch reads of a view, at any size: which labels look done, pages of samples in _id
order, and _id ranges (shards) for distributed workers; a view sent to another process as its stages.

Batch (camcore.batch) and the distributed driver (camcore.distributed) decide what to compute;
the FiftyOne and MongoDB reads they need are here, so that a FiftyOne upgrade touches the store only.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TypeAlias

import fiftyone as fo
from bson import ObjectId

Collection: TypeAlias = "fo.Dataset | fo.DatasetView"  # a dataset or any view of it
FieldCheck = tuple[str, dict]  # a heatmap field and the provenance its done labels carry


def is_done(label, provenance: dict) -> bool:
    """A label object that is a Heatmap with these provenance values and its PNG on disk."""
    if not isinstance(label, fo.Heatmap) or not label.map_path or not os.path.isfile(label.map_path):
        return False
    return all(_attr(label, k) == v for k, v in provenance.items())


def _attr(label, name):
    try:
        return label[name]
    except (KeyError, AttributeError):
        return None


def stored_done(doc, provenance: dict) -> bool:
    """is_done on a label as stored (the dict values(_raw=True) or a raw find gives): the same
    test, without building the label object, which takes FiftyOne milliseconds per label (hours
    over a million samples on a resume). tests/test_batch_paging.py checks that the two agree."""
    if not isinstance(doc, dict) or doc.get("_cls") != "Heatmap":
        return False
    if any(doc.get(k) != v for k, v in provenance.items()):
        return False
    path = doc.get("map_path")
    return isinstance(path, str) and bool(path) and os.path.isfile(path)


def not_done_filter(checks: Sequence[FieldCheck]) -> dict:
    """A MongoDB filter for samples whose label, in some field, does not look done (what
    stored_done checks, but the file): absent, not a Heatmap, no map_path, other provenance."""
    ors: list[dict] = []
    for f, provenance in checks:
        ors += [{f: None}, {f"{f}._cls": {"$ne": "Heatmap"}}, {f"{f}.map_path": {"$in": [None, ""]}}]
        ors += [{f"{f}.{k}": {"$ne": v}} for k, v in provenance.items()]
    return {"$or": ors}


def first_pending(view: Collection, checks: Sequence[FieldCheck], more: Sequence[dict] = ()):
    """The _id of the first sample (in _id order) that does not look done, found by the server;
    None when every sample looks done. A run killed half-way resumes there at once instead of
    checking every done sample before its first chunk. more: other conditions that make a sample pending."""
    pending = not_done_filter(checks)
    pending["$or"] += list(more)
    found = _first_ids(view, pending, 1, {"_id": 1})
    return found[0]["_id"] if found else None


def _first_ids(view: Collection, match: dict, size: int, project: dict) -> list[dict]:
    """The view's first `size` samples matching `match`, in _id order, projected: raw stages after
    the view's own (FiftyOne's match/sort_by/values each parse the whole field schema, a cost that
    grew a batch's set-up with the CAM fields)."""
    stages = ([{"$match": match}] if match else []) + [{"$sort": {"_id": 1}}, {"$limit": size},
                                                          {"$project": project}]
    return list(view._aggregate(pipeline=stages))


def count(view: Collection, before=None) -> int:
    """The view's samples (one server-side count); with before: those whose _id is below it."""
    return (view.match({"_id": {"$lt": before}}) if before is not None else view).count()


def pages(view: Collection, dataset: fo.Dataset, fields: Sequence[str], size: int,
          bounds: dict | None = None) -> Iterator[list[tuple[str, str, list]]]:
    """The view's samples, a page at a time, as (id, filepath, [stored label of each field]), in
    _id order; a stored label is the document as a dict (see stored_done), or None.

    Keyset paging (``_id > last``, sorted by _id, limited) on the view's own stages: each page costs
    the same however far the run is (no skip), and samples a run writes meanwhile are neither
    repeated nor missed, even in a view that filters on the fields being written. The labels come
    from the dataset by id (our fields are top-level): a view may exclude or filter them.
    bounds: an _id range to stay in ({"$gte": id}, {"$lt": id})."""
    last = None
    while True:
        keys = {**(bounds or {}), **({"$gt": last} if last is not None else {})}
        rows = _first_ids(view, {"_id": keys} if keys else {}, size, {"_id": 1, "filepath": 1})
        oids, paths = [r["_id"] for r in rows], [str(r["filepath"]) for r in rows]
        if not oids:
            return
        ids = [str(oid) for oid in oids]
        labels: dict[str, list] = {}
        if fields:  # one indexed find on the sample collection: several times faster than select()
            docs = dataset._sample_collection.find({"_id": {"$in": oids}}, {f: 1 for f in fields})
            labels = {str(d["_id"]): [d.get(f) for f in fields] for d in docs}
        yield [(sid, path, labels.get(sid, [None] * len(fields))) for sid, path in zip(ids, paths, strict=True)]
        if len(oids) < size:
            return
        last = oids[-1]


# ---------------------------------------------------------------- views across processes

def view_stages(dataset_or_view: Collection) -> list[dict]:
    """A view as plain data (its stages), to rebuild in another process with view_from_stages."""
    view = dataset_or_view if isinstance(dataset_or_view, fo.DatasetView) else dataset_or_view.view()
    return view._serialize(include_uuids=False)  # FiftyOne has no public form of this


def view_from_stages(dataset: fo.Dataset, stages: list[dict]) -> fo.DatasetView:
    return fo.DatasetView._build(dataset, stages)


def id_range(view: Collection, lo: str | None, hi: str | None) -> Collection:
    """The samples of the view with lo < _id <= hi (None: no bound)."""
    bounds = {**({"$gt": ObjectId(lo)} if lo else {}), **({"$lte": ObjectId(hi)} if hi else {})}
    return view.match({"_id": bounds}) if bounds else view


class Shards:
    """The view cut into _id ranges of `size` samples, each boundary found when the shard is handed
    out (one indexed query that returns one id): (lo, hi] with None for an open end."""

    def __init__(self, view: Collection, size: int) -> None:
        self.view, self.size = view, max(1, int(size))
        self.lo: str | None = None
        self.finished = False

    def next(self) -> tuple[str | None, str | None] | None:
        if self.finished:
            return None
        rest = id_range(self.view, self.lo, None).sort_by("_id", create_index=False)
        ends = rest.skip(self.size - 1).limit(1).values("id")
        if not ends:  # fewer than `size` left: the last shard runs to the end, if anything is left
            self.finished = True
            return (self.lo, None) if rest.limit(1).values("id") else None
        shard = (self.lo, ends[0])
        self.lo = ends[0]
        return shard

    def ids(self, shard: tuple[str | None, str | None]) -> list[str]:
        """The ids of one shard (at most `size`; for reporting a lost shard)."""
        return id_range(self.view, *shard).values("id")

    def rest_ids(self) -> list[str]:
        """The ids of the samples not handed out yet (reported when no worker is left)."""
        self.finished = True
        return id_range(self.view, self.lo, None).values("id")


def database_uri() -> str:
    """The MongoDB this process uses (FIFTYONE_DATABASE_URI, else the one FiftyOne started)."""
    if fo.config.database_uri:
        return fo.config.database_uri
    import fiftyone.core.odm.database as fod

    host, port = fod.get_db_client().address
    return f"mongodb://{host}:{port}"
