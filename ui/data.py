"""What the pages read from and write to FiftyOne, through the store: pages never import it."""
from __future__ import annotations

from typing import Any

import numpy as np

from camcore import store
from camcore.store import views

FINDINGS_FIELD = store.FINDINGS_FIELD
DEFAULT_APP_PORT = store.DEFAULT_APP_PORT


def relative_label(path: str, folder: str) -> str:
    """A sample's path relative to the dataset's common folder (how samples are named on screen)."""
    return views.relative_label(path, folder)


def stored_fields(dataset: Any, sample_id: str, fields: list[str]) -> set[str]:
    """Which of these fields already hold a value on the sample (a push would replace them)."""
    return store.stored_fields(dataset, sample_id, fields)


# -- findings: what users concluded, across a dataset


def fresh_dataset(name: str) -> Any:
    """The dataset with what other processes recorded since this one loaded it (findings made in
    the App, the CLI, another explorer): re-read per page visit, one document, no samples."""
    return store.fresh_dataset(name)


def finding_labels(dataset: Any) -> list[str]:
    return store.finding_labels(dataset)


def finding_tag(label: str) -> str:
    """The sample tag a finding's label becomes in the FiftyOne App."""
    return store.finding_tag(label)


def findings_view(dataset: Any, labels: list[str]) -> Any:
    return store.findings_view(dataset, labels)


def count_findings(view: Any) -> int:
    return store.count_findings(view)


def list_findings(view: Any, skip: int, limit: int) -> list[dict]:
    return store.list_findings(view, skip=skip, limit=limit)


def read_heatmap(dataset: Any, sample_id: str, field: str) -> np.ndarray | None:
    return store.read_heatmap(dataset, sample_id, field)


# -- the FiftyOne App


def launch_app(dataset_or_view: Any, port: int) -> None:
    store.launch_app(dataset_or_view, port=port, explorer_url=explorer_address())


def explorer_address() -> str:
    """This explorer's own address, for the App it launches (the plugin's links point back here)."""
    import streamlit as st  # lazily: this module is otherwise the store's side

    port = st.get_option("server.port")
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"http://localhost:{port}" + (f"/{base}" if base else "")


def app_url(dataset_name: str, sample_id: str | None = None, port: int = DEFAULT_APP_PORT) -> str:
    return store.app_url(dataset_name, sample_id, port)


# -- a detector's boxes: the sample's own Detections


def sample_boxes(dataset_name: str, sample_id: str) -> list[tuple[str, str, str, list[float]]]:
    """(field, detection id, label, relative [x, y, w, h]) of the sample's Detections boxes; none
    when the dataset has no Detections field."""
    dataset = store.load_dataset(dataset_name)
    if not store.detection_fields(dataset):
        return []
    return store.sample_boxes(store.get_sample(dataset, sample_id))


def box_rule(dataset_name: str, sample_id: str, text: str) -> str:
    """A box request (top, det:<i>, class:<name>, all, id:<detection id>, field:<f>[:<i>]) as the
    engine's box rule; StoreError (one line) when the sample has no such box."""
    if text.partition(":")[0] not in ("id", "field"):
        return text
    return store.box_rule(store.get_sample(store.load_dataset(dataset_name), sample_id), text)


# -- Compare: a study's sample, and where the objects are for a ranking


def sample_with_label(view: Any, class_name: str, prefer: str | None = None) -> str | None:
    """The id of a sample in `view` with a label (classification or detection, any label field)
    named `class_name`, case-insensitive: `prefer` when it has one, else the view's first; None
    when none has. One server-side query, never a scan."""
    return store.sample_with_label(view, class_name, prefer)


def load_dataset(name: str) -> Any:
    return store.load_dataset(name)


def mask_fields(dataset: Any) -> list[str]:
    """The dataset's segmentation (mask) label fields."""
    return store.segmentation_fields(dataset)


def box_fields(dataset: Any) -> list[str]:
    """The dataset's Detections label fields."""
    return store.detection_fields(dataset)


def object_labels(dataset: Any, field: str, is_mask: bool) -> list[str]:
    """The labels of a mask field (its classes) or of a box field (its distinct labels)."""
    return store.segmentation_labels(dataset, field) if is_mask else store.label_values(dataset, field)


def object_masks(view: Any, field: str, label: str) -> dict[str, np.ndarray]:
    """Per sample id: where the mask field marks `label`."""
    return store.segmentation_masks_by_sample(view, field, label)


def object_boxes(view: Any, field: str, label: str) -> dict[str, list[list[float]]]:
    """Per sample id: the relative [x, y, w, h] boxes of `label` in the box field."""
    return store.boxes_by_sample(view, field, label)


def ids_and_paths(view: Any) -> list[tuple[str, str]]:
    return store.ids_and_paths(view)
