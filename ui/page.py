"""What every page does the same way: the preamble (routing, the selection check, the error edge)
and loading the sidebar's model and image."""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable

import streamlit as st

from camcore import models, store
from camcore.errors import CamError, ImageError, WeightsUnavailable
from camcore.images import LoadedImage
from camcore.models import LoadedModel
from ui import cache, router, sidebar, text
from ui.sidebar import Selection

PICK_A_SAMPLE = "Pick a dataset and a sample in the sidebar."


def serve(url_path: str, main: Callable[[Selection | None], None], missing: str | None = PICK_A_SAMPLE) -> None:
    """The page preamble: outside app.py's navigation, hop through it (router.ensure_routed);
    then, with the sidebar's selection, run `main` at the error edge. `missing`: what to say when
    there is no selection (app.py runs such a page only when the view has samples); None for a
    page about the whole dataset, whose `main` takes None."""
    router.ensure_routed(url_path)
    sel = sidebar.current()
    if sel is None and missing is not None:
        st.info(missing)
        return
    run(lambda: main(sel))


def run(main: Callable[[], None]) -> None:
    """The UI edge: a CamError is its one-line message; anything else a message with details
    in an expander. Never a traceback page."""
    try:
        main()
    except CamError as exc:
        st.error(text.escape(exc))
    except Exception as exc:
        unexpected(exc)


def unexpected(exc: BaseException) -> None:
    st.error(f"Something went wrong: {type(exc).__name__}: {text.escape(exc)}. Try another sample, model or method; "
             "if it persists, report it with the details below.")
    with st.expander("Details"):
        st.code("".join(traceback.format_exception(exc)))


def model_or_message(sel: Selection) -> LoadedModel | None:
    """The sidebar's model, or None after saying why not and what to do (no weights offline)."""
    try:
        with st.spinner("Loading the model…", show_time=True):
            loaded = cache.model(sel.model, sel.weights, models.load_version(sel.model, sel.weights))
    except WeightsUnavailable as exc:
        st.error(text.escape(exc))
        st.info("To explore the mechanics anyway, choose **untrained (random weights)** under Weights in "
                "the sidebar, or pick EfficientNet-Lite0, which works offline.")
        return None
    if not loaded.pretrained:
        st.warning("**UNTRAINED weights**: these heatmaps explain a random network, not a trained model.",
                   icon=":material/warning:")
    return loaded


def image_or_message(sel: Selection) -> tuple[LoadedImage, tuple] | None:
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
