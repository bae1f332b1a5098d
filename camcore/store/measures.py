"""Measure fields: float/bool fields beside a heatmap field (names from HeatmapIdentity.measure_field),
declared once per run, written in bulk, and aggregated on the database for the Audit page.

A measure field is a top-level ``fo.FloatField`` / ``fo.BooleanField`` / ``fo.StringField`` marked in
its info ``{"cam_explorer": {"kind": "measure", "measure": ..., "heatmap": <heatmap field>}}``, so the
FiftyOne App shows, sorts and filters by it. The ``share`` field is indexed (the Audit page's
narrowing clicks and the worst-first queue read it through the index).
"""
from __future__ import annotations

from typing import Any

import fiftyone as fo

from camcore.errors import StoreError
from camcore.identity import MEASURES, HeatmapIdentity, measure_of
from camcore.store.datasets import MARK, db_errors, root_dataset
from camcore.store.leases import schema_lease
from camcore.store.schema import DatasetUpdate

_TYPES: dict[type, type[fo.Field]] = {float: fo.FloatField, bool: fo.BooleanField, str: fo.StringField}
INDEXED = ("share",)


@db_errors
def declare_measure_fields(dataset: fo.Dataset | fo.DatasetView, identity: HeatmapIdentity) -> dict[str, str]:
    """Create (or check) the measure fields of one heatmap identity; measure -> field name. Raises
    StoreError for an existing field of that name that is not ours or of another type."""
    dataset = root_dataset(dataset)
    names = identity.measure_fields()
    with schema_lease(dataset):  # one writer of the field list at a time, across processes
        schema = dataset.get_field_schema()
        update = DatasetUpdate(dataset)  # one write of the dataset document for them all
        for measure, name in names.items():
            ftype = _TYPES[MEASURES[measure]]
            existing = schema.get(name)
            if existing is not None:
                mark = (existing.info or {}).get(MARK)
                if not isinstance(existing, ftype) or not isinstance(mark, dict) or mark.get("kind") != "measure":
                    raise StoreError(f"field {name!r} of {dataset.name!r} exists and is not a CAM Explorer "
                                     f"{measure} measure; not overwriting it")
                continue
            update.add_field(name, dataset._sample_doc_cls._create_field(
                name, ftype, description=f"CAM Explorer {measure} of {identity.field_name}",
                info={MARK: {"kind": "measure", "measure": measure, "heatmap": identity.field_name}}))
        update.commit()
        for measure in INDEXED:
            dataset.create_index(names[measure])
    return names


@db_errors
def write_measures(dataset: fo.Dataset | fo.DatasetView, values: dict[str, dict[str, Any]]) -> None:
    """values: field -> {sample id: value}; one bulk set_values per field."""
    dataset = root_dataset(dataset)
    for field, by_id in values.items():
        if by_id:
            dataset.set_values(field, by_id, key_field="id")


def measure_runs(dataset: fo.Dataset | fo.DatasetView) -> dict[str, dict[str, str]]:
    """The heatmap fields that have measure fields: heatmap field -> {measure: field}. From the
    schema (a measure field deleted or renamed in the App is simply not listed)."""
    out: dict[str, dict[str, str]] = {}
    for name in root_dataset(dataset).get_field_schema():
        found = measure_of(name)
        if found is not None:
            out.setdefault(found[1], {})[found[0]] = name
    return out
