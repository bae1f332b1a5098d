"""Findings: notes on what a heatmap shows, kept on the samples.

A finding is an ``fo.Classification`` label in the ``fo.Classifications`` field
:data:`FINDINGS_FIELD` (label = the finding, with a note, the heatmap field it is about, when, and
the explorer's URL), plus a sample tag ``cam:<finding>``.
"""
from __future__ import annotations

import datetime as _dt
import re
import urllib.parse
from collections.abc import Sequence

import fiftyone as fo
from fiftyone import ViewField as F

from camcore.errors import StoreError
from camcore.store.datasets import FINDINGS_FIELD, LOCK, MARK, db_errors, get_sample, root_dataset, utc_now
from camcore.store.leases import schema_lease

__all__ = ["FINDINGS_FIELD", "FINDING_TAGS", "FINDING_TAG_PREFIX", "add_finding", "count_findings",
           "finding_labels", "finding_tag", "findings_view", "list_findings"]

FINDING_TAG_PREFIX = "cam:"
FINDING_TAGS = ("background bias", "misclassification", "good focus", "spurious edges")


def finding_tag(tag: str) -> str:
    """The sample tag for a finding: ``cam:`` + the tag lowercased, runs of other chars -> '-'."""
    clean = re.sub(r"[^a-z0-9]+", "-", str(tag).lower()).strip("-")
    if not clean:
        raise StoreError(f"finding tag {tag!r} has no letters or digits")
    return FINDING_TAG_PREFIX + clean


# String attributes of a finding label, declared in the schema so that the App lists them.
_FINDING_ATTRS = ("note", "heatmap_field", "created_at", "url")


def _findings_field_ready(dataset: fo.Dataset) -> None:
    existing = dataset.get_field(FINDINGS_FIELD)
    if existing is None:
        dataset.add_sample_field(
            FINDINGS_FIELD, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications,
            description="CAM Explorer findings: notes on what a heatmap shows",
            info={MARK: {"kind": "findings"}},
        )
    else:
        doc_type = getattr(existing, "document_type", None)
        if not (doc_type and issubclass(doc_type, fo.Classifications)) or MARK not in (existing.info or {}):
            raise StoreError(
                f"field {FINDINGS_FIELD!r} of {dataset.name!r} exists and is not CAM Explorer's findings field")
    for attr in _FINDING_ATTRS:  # a field made without one of them (`url`) gets it now
        path = f"{FINDINGS_FIELD}.classifications.{attr}"
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, fo.StringField)


@db_errors
def add_finding(
    dataset: fo.Dataset, sample_id: str, tag: str, note: str = "", heatmap_field: str | None = None,
    url: str | None = None,
) -> None:
    """Tag the sample ``cam:<tag>`` and append a Classification(label=tag, note, heatmap_field,
    created_at, url) to cam_findings; `url` is the explorer state the finding was made in.

    Atomic updates of the one sample document ($addToSet the tag, $push the finding), never a
    read-modify-write: a tag or finding that the App or another process adds meanwhile is kept."""
    dataset = root_dataset(dataset)
    tag = str(tag).strip()
    sample_tag = finding_tag(tag)
    if url is not None and urllib.parse.urlsplit(str(url)).scheme.lower() not in ("http", "https"):
        # It becomes a link on the Findings page: never javascript:, data: or file:.
        raise StoreError(f"a finding's URL must be an http(s) address, got {str(url)[:80]!r}")
    with LOCK:  # in this process: schema changes of one dataset one at a time
        sample = get_sample(dataset, sample_id)
        if heatmap_field is not None and dataset.get_field(heatmap_field) is None:
            raise StoreError(f"no field {heatmap_field!r} in {dataset.name!r} to attach the finding to")
        with schema_lease(dataset):  # other processes may be declaring fields too
            _findings_field_ready(dataset)
        finding = fo.Classification(label=tag, note=note, heatmap_field=heatmap_field, created_at=utc_now(),
                                    url=None if url is None else str(url))
        docs, key, items = dataset._sample_collection, {"_id": sample._id}, FINDINGS_FIELD + ".classifications"
        # A sample with no findings yet gets an empty list; each filter+update is atomic, so two
        # writers doing this at once create it once and both pushes land in it.
        docs.update_one({**key, FINDINGS_FIELD: None},
                        {"$set": {FINDINGS_FIELD: {"_cls": "Classifications", "classifications": []}}})
        docs.update_one({**key, FINDINGS_FIELD: {"$ne": None}, items: None}, {"$set": {items: []}})
        done = docs.update_one(key, {
            "$push": {items: finding.to_mongo()},
            "$addToSet": {"tags": sample_tag},
            "$set": {"last_modified_at": _dt.datetime.now(_dt.UTC).replace(tzinfo=None)},
        })
        if not done.matched_count:
            raise StoreError(f"sample {sample.id} was deleted from {dataset.name!r} meanwhile")
        sample.reload(hard=True)  # FiftyOne's in-process singleton must not keep a stale copy


FINDING_WRITES = ("tags", FINDINGS_FIELD, "last_modified_at")  # the sample fields add_finding changes


def finding_fields_for_app(dataset: fo.Dataset, sample_id: str) -> dict:
    """What add_finding wrote on the sample (its tags, findings, modification time), in the form the
    App's server hands a sample to its page (FiftyOne's own stringify): an open App page takes
    them into its copy of the sample, which FiftyOne 1.22 keeps through reload_samples and
    reload_dataset. Read from the one stored document: the in-process sample may be older."""
    from fiftyone.core.json import stringify

    doc = _stored_fields(dataset, sample_id)
    return stringify({name: doc[name] for name in FINDING_WRITES if name in doc})


@db_errors
def _stored_fields(dataset: fo.Dataset, sample_id: str) -> dict:
    from bson import ObjectId

    docs = root_dataset(dataset)._sample_collection
    return docs.find_one({"_id": ObjectId(str(sample_id))}, {name: 1 for name in FINDING_WRITES}) or {}


def _findings_pipeline(skip: int, limit: int | None) -> list[dict]:
    items = f"${FINDINGS_FIELD}.classifications"
    stages: list[dict] = [
        {"$match": {FINDINGS_FIELD + ".classifications.0": {"$exists": True}}},
        {"$project": {"filepath": True, "finding": items}},
        {"$unwind": "$finding"},  # keeps each sample's list order: oldest first
    ]
    if skip:
        stages.append({"$skip": skip})
    if limit is not None:
        stages.append({"$limit": limit})
    return stages


@db_errors
def list_findings(
    collection: fo.Dataset | fo.DatasetView, skip: int = 0, limit: int | None = None
) -> list[dict]:
    """Findings in the collection's sample order, oldest first per sample; `skip` and `limit`
    page through them on the server (a page never reads the other findings).

    Each: sample_id, filepath, tag, note, heatmap_field, created_at, url, id (of the label).
    """
    skip = int(skip)
    if skip < 0 or (limit is not None and int(limit) < 0):
        raise StoreError(f"findings page: skip and limit must be >= 0, got skip={skip}, limit={limit}")
    if (limit is not None and int(limit) == 0) or collection.get_field(FINDINGS_FIELD) is None:
        return []
    rows = collection._aggregate(post_pipeline=_findings_pipeline(skip, None if limit is None else int(limit)))
    out = []
    for row in rows:
        c = row["finding"]
        out.append({
            "sample_id": str(row["_id"]), "filepath": row.get("filepath"), "tag": c.get("label"),
            "note": c.get("note") or "", "heatmap_field": c.get("heatmap_field"),
            "created_at": c.get("created_at"), "url": c.get("url"), "id": str(c.get("_id")),
        })
    return out


_FINDINGS_INDEXED: set[str] = set()  # datasets whose finding labels are indexed (this process)
_LABELS = FINDINGS_FIELD + ".classifications.label"


def _label_index(root: fo.Dataset) -> None:
    """The index on the findings' labels (made on first use, for every user of the database): the
    labels, the view of some and its count read it instead of every sample."""
    if root.name not in _FINDINGS_INDEXED:
        root.create_index(_LABELS)  # idempotent
        _FINDINGS_INDEXED.add(root.name)


@db_errors
def finding_labels(collection: fo.Dataset | fo.DatasetView) -> list[str]:
    """The distinct findings (labels) recorded in the collection, read from the index on them, so
    that the Findings page never scans the samples and never shows a stale list."""
    if collection.get_field(FINDINGS_FIELD) is None:
        return []
    root = root_dataset(collection)
    _label_index(root)
    if isinstance(collection, fo.Dataset):
        # The database's own distinct reads the index alone; FiftyOne's is an aggregation over
        # every sample ($unwind, $group): 2 s at 10^6 samples (bench/findings.py).
        values = root._sample_collection.distinct(_LABELS)
    else:
        values = collection.distinct(_LABELS)
    return sorted(str(v) for v in values if v is not None)


@db_errors
def findings_view(dataset: fo.Dataset | fo.DatasetView, labels: Sequence[str]) -> fo.DatasetView:
    """The samples holding findings with these labels, only those findings kept (stages, no ids).
    It starts with a plain match on the indexed labels: counting it or reading a page of it reads
    the samples with findings, not the dataset (filter_labels alone matches by an expression that
    no index serves)."""
    if dataset.get_field(FINDINGS_FIELD) is None:
        return dataset.limit(0)
    _label_index(root_dataset(dataset))
    labels = [str(label) for label in labels]
    return dataset.match({_LABELS: {"$in": labels}}).filter_labels(
        FINDINGS_FIELD, F("label").is_in(labels), only_matches=False)


@db_errors
def count_findings(collection: fo.Dataset | fo.DatasetView) -> int:
    """How many findings the collection holds, counted on the server."""
    if collection.get_field(FINDINGS_FIELD) is None:
        return 0
    return int(collection.count(FINDINGS_FIELD + ".classifications"))
