"""What every page does the same way: the error edge and loading the sidebar's model."""
from __future__ import annotations

from typing import Callable

import streamlit as st

from camcore.errors import CamError, WeightsUnavailable
from camcore.models import LoadedModel
from ui import cache, render


def run(main: Callable[[], None]) -> None:
    """The UI edge: a CamError is its one-line message; anything else a message with details
    in an expander. Never a traceback page."""
    try:
        main()
    except CamError as exc:
        st.error(str(exc))
    except Exception as exc:
        render.unexpected(exc)


def model_or_message(sel) -> LoadedModel | None:
    """The sidebar's model, or None after saying why not and what to do (no weights offline)."""
    try:
        with st.spinner("Loading the model…", show_time=True):
            loaded = cache.model(sel.model, sel.weights)
    except WeightsUnavailable as exc:
        st.error(str(exc))
        st.info("To explore the mechanics anyway, choose **untrained (random weights)** under Weights in "
                "the sidebar, or pick EfficientNet-Lite0, which works offline.")
        return None
    if not loaded.pretrained:
        st.warning("**UNTRAINED weights**: these heatmaps explain a random network, not a trained model.",
                   icon=":material/warning:")
    return loaded
