"""What every page does the same way: the error edge and loading the sidebar's model."""
from __future__ import annotations

import os
from typing import Callable

import streamlit as st

from camcore import models, store
from camcore.errors import CamError, ImageError, WeightsUnavailable
from camcore.images import LoadedImage
from camcore.models import LoadedModel
from ui import cache, render, text


def run(main: Callable[[], None]) -> None:
    """The UI edge: a CamError is its one-line message; anything else a message with details
    in an expander. Never a traceback page."""
    try:
        main()
    except CamError as exc:
        st.error(text.escape(exc))
    except Exception as exc:
        render.unexpected(exc)


def model_or_message(sel) -> LoadedModel | None:
    """The sidebar's model, or None after saying why not and what to do (no weights offline)."""
    try:
        with st.spinner("Loading the model…", show_time=True):
            loaded = cache.model(sel.model, sel.weights, models.weights_identity(sel.model, sel.weights))
    except WeightsUnavailable as exc:
        st.error(text.escape(exc))
        st.info("To explore the mechanics anyway, choose **untrained (random weights)** under Weights in "
                "the sidebar, or pick EfficientNet-Lite0, which works offline.")
        return None
    if not loaded.pretrained:
        st.warning("**UNTRAINED weights**: these heatmaps explain a random network, not a trained model.",
                   icon=":material/warning:")
    return loaded


def image_or_message(sel) -> tuple[LoadedImage, tuple] | None:
    """The selected sample's image and its cache key, or None after saying what is wrong with the
    file (missing, unreadable) and what to do about it."""
    try:
        path = store.sample_image_path(store.get_sample(store.load_dataset(sel.dataset), sel.sample_id))
        mtime = os.path.getmtime(path)
        img = cache.image(path, mtime)
    except (ImageError, OSError) as exc:
        reason = str(exc) if isinstance(exc, ImageError) else f"cannot read the image file {sel.filepath}: {exc}"
        st.error(f"{text.escape(reason.rstrip('.'))}. Pick another sample, or fix the file path in the dataset.",
                 icon=":material/broken_image:")
        return None
    return img, (sel.dataset, sel.sample_id, mtime)
