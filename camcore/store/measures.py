"""Measure fields: float/bool fields beside a heatmap field (names from HeatmapIdentity.measure_field),
declared once per run, written in bulk, and aggregated on the database for the Audit page.

A measure field is a top-level ``fo.FloatField`` / ``fo.BooleanField`` / ``fo.StringField`` marked in
its info ``{"cam_explorer": {"kind": "measure", "measure": ..., "heatmap": <heatmap field>}}``, so the
FiftyOne App shows, sorts and filters by it. The ``share`` field is indexed (the Audit page's
narrowing clicks and the worst-first queue read it through the index).

Its name is cut to fit the App's sidebar, so it does not say which map it describes: its info does
(:func:`measure_links`). A field without that info (none of ours) is read by its name, written whole
the old way (``identity.measure_of``). A map keeps the measure fields it has, whatever their names
(an older dataset's ``camm_remove_grad_head_effl0``); where a new one's cut name is another map's
measure field, the map's new measure fields take their spare names.
"""
from __future__ import annotations

from typing import Any

import fiftyone as fo

from camcore.errors import StoreError
from camcore.identity import INDEXED_MEASURES, MEASURE_PREFIX, MEASURES, HeatmapIdentity, measure_of
from camcore.store import appstyle
from camcore.store.datasets import MARK, db_errors, root_dataset
from camcore.store.leases import schema_lease
from camcore.store.schema import Conflict, DatasetUpdate

_TYPES: dict[type, type[fo.Field]] = {float: fo.FloatField, bool: fo.BooleanField, str: fo.StringField}
INDEXED = INDEXED_MEASURES  # their names cut shorter: the App draws an index icon beside them
_ATTEMPTS = 3  # a commit that met a concurrent change of the App config is tried again


@db_errors
def declare_measure_fields(dataset: fo.Dataset | fo.DatasetView, identity: HeatmapIdentity) -> dict[str, str]:
    """Create (or check) the measure fields of one heatmap identity (as the dataset keeps it:
    store.stored_identity); measure -> field name. Raises StoreError, before anything is written,
    for a field in the way that is not ours or of another type."""
    dataset = root_dataset(dataset)
    heatmap = identity.field_name
    for attempt in range(_ATTEMPTS):
        with schema_lease(dataset):  # one writer of the field list at a time, across processes
            schema = dataset.get_field_schema()
            links = _links(schema)
            have = {m: name for name, (m, h, ours) in links.items() if ours and h == heatmap}
            missing = [m for m in MEASURES if m not in have]
            plain = identity.measure_fields()
            taken = any(_other_map(schema.get(plain[m]), heatmap) for m in missing)
            names = {**(identity.measure_fields(spare=True) if taken else plain), **have}
            update = DatasetUpdate(dataset)  # one write of the dataset document for them all
            new = []
            for measure, name in names.items():
                ftype = _TYPES[MEASURES[measure]]
                existing = schema.get(name)
                if existing is not None:
                    if measure in missing or not isinstance(existing, ftype):
                        raise StoreError(_in_the_way(dataset.name, name, measure, existing))
                    continue
                update.add_field(name, dataset._sample_doc_cls._create_field(
                    name, ftype, description=f"CAM Explorer {measure} of {heatmap}",
                    info={MARK: {"kind": "measure", "measure": measure, "heatmap": heatmap}}))
                new.append(name)
            # In the App: their own sidebar group (made once with the fields written before it)
            appstyle.group_measures(dataset, update, new, every=list(links))
            try:
                update.commit()
            except Conflict:  # the App config changed meanwhile (a user's edit in the App): again
                if attempt == _ATTEMPTS - 1:
                    raise
                continue
            if "about" in have and any(m != "about" for m in missing):
                # A measure field was deleted or renamed (in the App) since these maps were measured:
                # the samples' `about` says done, yet that measure is gone; cleared, the resume (which
                # goes by `about`) measures them again instead of skipping them with the new field empty.
                dataset._sample_collection.update_many({have["about"]: {"$ne": None}},
                                                       {"$set": {have["about"]: None}})
            for measure in INDEXED:
                dataset.create_index(names[measure])
            return {m: names[m] for m in MEASURES}
    raise AssertionError("unreachable")


def _mark(f: Any) -> dict | None:
    mark = (getattr(f, "info", None) or {}).get(MARK)
    return mark if isinstance(mark, dict) and mark.get("kind") == "measure" else None


def _other_map(f: Any, heatmap: str) -> bool:
    """Is f another map's measure field of ours (its cut name meets this map's)?"""
    mark = _mark(f)
    return mark is not None and mark.get("heatmap") != heatmap


def _in_the_way(dataset: str, name: str, measure: str, existing: Any) -> str:
    mark = _mark(existing)
    if mark is not None and mark.get("heatmap"):
        return (f"field {name!r} of {dataset!r} holds the {mark.get('measure')} measure of {mark['heatmap']}; "
                "not overwriting it")
    return f"field {name!r} of {dataset!r} exists and is not a CAM Explorer {measure} measure; not overwriting it"


def _links(schema: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """measure field -> (measure, heatmap field, linked by our info) of a dataset's schema. A field
    of ours renamed in the App (its name no longer ``camm_<measure>_…``) is no measure any more: its
    values are the user's now, as before names were cut."""
    out = {}
    for name, f in schema.items():
        mark = _mark(f)
        if mark is not None:
            measure = mark.get("measure")
            if measure in MEASURES and isinstance(mark.get("heatmap"), str) and \
                    name.startswith(f"{MEASURE_PREFIX}{measure}_"):
                out[name] = (str(measure), str(mark["heatmap"]), True)
            continue
        found = measure_of(name)  # not marked: its name, written whole the old way
        if found is not None:
            out[name] = (*found, False)
    return out


def measure_links(dataset: fo.Dataset | fo.DatasetView) -> dict[str, tuple[str, str]]:
    """The dataset's measure fields: field -> (measure, heatmap field), from each field's info (its
    name only where it has none)."""
    return {name: (m, h) for name, (m, h, _ours) in _links(root_dataset(dataset).get_field_schema()).items()}


@db_errors
def write_measures(dataset: fo.Dataset | fo.DatasetView, values: dict[str, dict[str, Any]]) -> None:
    """values: field -> {sample id: value}; one bulk set_values per field."""
    dataset = root_dataset(dataset)
    for field, by_id in values.items():
        if by_id:
            dataset.set_values(field, by_id, key_field="id")


def measure_runs(dataset: fo.Dataset | fo.DatasetView) -> dict[str, dict[str, str]]:
    """The heatmap fields that have measure fields: heatmap field -> {measure: field}. From the
    schema (a measure field deleted in the App is simply not listed); a field linked by its info
    wins over one read by its name."""
    out: dict[str, dict[str, str]] = {}
    for name, (measure, heatmap, _ours) in sorted(_links(root_dataset(dataset).get_field_schema()).items(),
                                                 key=lambda item: item[1][2]):
        out.setdefault(heatmap, {})[measure] = name  # ours last: they replace a name's reading
    return out
