"""Process-wide caches (st.cache_resource, st.cache_data) around camcore's loaders. The
explainers (the shared pass) are per session, in ui/session_memory.py (freed when the tab closes)."""
from __future__ import annotations

import streamlit as st

from camcore import demo_data, images, models, store
from camcore.store import views


@st.cache_resource(max_entries=6, show_spinner=False)
def model(key: str, weights: str, version: tuple = ()) -> models.LoadedModel:
    """`version` (models.load_version) is only part of the key: a models-file entry or a
    weights file replaced at the same path is loaded again, never served from the cache."""
    # camcore caches per process too; this keeps Streamlit's cache page honest and bounded.
    return models.load_model(key, weights)


@st.cache_resource(show_spinner=False)
def demo_dataset_name() -> str:
    return demo_data.ensure_demo_dataset().name


# Shared by every session: 32 images, and never more than this many bytes (32 photos of up to
# 4096 px a side would be 1.6 GB).
IMAGE_CACHE_BYTES = 256 * 2**20


@st.cache_data(max_entries=32, max_size=IMAGE_CACHE_BYTES, show_spinner=False)
def image(path: str, mtime: float) -> images.LoadedImage:  # mtime: a changed file is reloaded
    return images.load_image(path)


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(path: str, mtime: float, side: int = 160):
    """A small RGB thumbnail, or None when the file cannot be read (the strip must not fail)."""
    try:
        img = images.load_image(path).rgb
    except images.ImageError:
        return None
    scale = side / max(img.shape[:2])
    import cv2

    return cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


# Per-dataset facts that cost one server-side pass over the dataset (distinct values) or a few
# index lookups: computed once a minute at most, never on every click.
DATASET_FACTS_TTL = 60


@st.cache_data(ttl=DATASET_FACTS_TTL, max_entries=64, show_spinner=False)
def distinct_tags(dataset_name: str) -> list[str]:
    return store.distinct_tags(store.load_dataset(dataset_name))


@st.cache_data(ttl=DATASET_FACTS_TTL, max_entries=64, show_spinner=False)
def label_values(dataset_name: str, field: str) -> list[str]:
    return store.label_values(store.load_dataset(dataset_name), field)


@st.cache_data(ttl=DATASET_FACTS_TTL, max_entries=64, show_spinner=False)
def common_folder(dataset_name: str) -> str:
    return views.common_folder(store.load_dataset(dataset_name))


@st.cache_data(ttl=DATASET_FACTS_TTL, max_entries=256, show_spinner=False)
def view_count(dataset_name: str, spec: views.ViewSpec) -> int:
    """Samples in a view: one server-side count a minute at most (the position label's '/ N')."""
    return views.count(views.build_view(store.load_dataset(dataset_name), spec))
