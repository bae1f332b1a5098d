"""FiftyOne I/O, one module per concern; this package re-exports their public API
(``from camcore import store; store.push_many(...)``).

- :mod:`~camcore.store.datasets`: datasets, samples, the labels they hold, the shared write lock
  and the error edge (:func:`db_errors`: every failure the user can cause is a one-line
  :class:`~camcore.errors.StoreError` or :class:`~camcore.errors.ImageError`);
- :mod:`~camcore.store.views`: which samples at any dataset size (views as stages, read a page
  at a time);
- :mod:`~camcore.store.fields`: heatmap fields declared from a
  :class:`~camcore.identity.HeatmapIdentity` (its field name
  ``cam_<method>_<layer>_<model>[_<target>][_<variant>]``, meaning and description), the registry
  in ``dataset.info`` and the App's styling;
- :mod:`~camcore.store.heatmaps`: pushing maps (PNG files + labels, with a journal) and reading
  them back;
- :mod:`~camcore.store.findings`: findings on samples;
- :mod:`~camcore.store.app`: the FiftyOne App's URL and the one App session this process serves;
- :mod:`~camcore.store.app_server`: the App's server process (a patient wait, a light supervisor);
- :mod:`~camcore.store.runs`: a dataset's queued (delegated) compute_cams runs, as App pages are told of them.

Never imports streamlit.
"""
from __future__ import annotations

from camcore.store import views
from camcore.store.app import DEFAULT_APP_PORT, app_session, app_url, close_app, launch_app
from camcore.store.datasets import (
    FINDINGS_FIELD,
    MARK,
    box_rule,
    boxes_by_sample,
    chosen_samples,
    db_errors,
    detection_fields,
    distinct_tags,
    fresh_dataset,
    get_sample,
    ids_and_paths,
    label_fields,
    label_values,
    list_datasets,
    load_dataset,
    make_view,
    most_boxes,
    require_image,
    root_dataset,
    sample_boxes,
    sample_ids,
    sample_image_path,
    sample_with_label,
    segmentation_fields,
    segmentation_labels,
    segmentation_masks_by_sample,
)
from camcore.store.fields import (
    DECLARED_ATTRIBUTES,
    FIELD_PREFIX,
    HEATMAP_COLORSCALE,
    LABEL_ATTRIBUTES,
    declare_heatmap_field,
    declare_heatmap_fields,
    heatmap_fields,
    stored_fields,
    stored_identity,
)
from camcore.store.findings import (
    FINDING_TAG_PREFIX,
    FINDING_TAGS,
    add_finding,
    count_findings,
    finding_fields_for_app,
    finding_labels,
    finding_tag,
    findings_view,
    list_findings,
)
from camcore.store.heatmaps import (
    DELETE_BATCH,
    FOREIGN_JOURNAL_GRACE,
    HEATMAP_RANGE,
    JOURNAL_SUFFIX,
    PENDING_DIR,
    STALE_TEMP_SECONDS,
    HeatmapWriter,
    clean_orphans,
    heatmap_path,
    push_heatmaps,
    push_many,
    read_heatmap,
    referenced_paths,
)
from camcore.store.schema import refresh_schema

__all__ = [
    "DECLARED_ATTRIBUTES", "DEFAULT_APP_PORT", "DELETE_BATCH",
    "FIELD_PREFIX", "FINDING_TAG_PREFIX", "FINDING_TAGS", "FINDINGS_FIELD",
    "FOREIGN_JOURNAL_GRACE", "HEATMAP_COLORSCALE", "HEATMAP_RANGE", "JOURNAL_SUFFIX", "LABEL_ATTRIBUTES",
    "MARK", "PENDING_DIR", "STALE_TEMP_SECONDS", "add_finding", "app_session", "app_url", "box_rule", "boxes_by_sample",
    "chosen_samples",
    "most_boxes",
    "clean_orphans", "close_app", "count_findings", "db_errors", "declare_heatmap_field", "declare_heatmap_fields",
    "detection_fields", "finding_fields_for_app",
    "distinct_tags", "finding_labels", "fresh_dataset", "finding_tag", "findings_view", "get_sample", "heatmap_fields",
    "heatmap_path", "HeatmapWriter", "ids_and_paths", "label_fields", "label_values", "launch_app",
    "list_datasets", "list_findings", "load_dataset", "make_view", "push_heatmaps", "push_many",
    "read_heatmap", "referenced_paths", "refresh_schema", "require_image", "root_dataset", "sample_boxes", "sample_ids",
    "sample_image_path",
    "sample_with_label", "segmentation_fields", "segmentation_labels", "segmentation_masks_by_sample",
    "stored_fields", "stored_identity", "views",
]
