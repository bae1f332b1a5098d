"""Compare's studies: the article's two studies one click away (they set the sidebar's model and
weights, the grid's layers and methods, and open a sample that shows the target), and the offer of
untrained weights where a model has none here."""
from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st

from camcore import methods
from camcore.errors import CamError
from ui import data, sidebar, sidebar_look, text
from ui.compute import duration
from ui.state import Compare, Sidebar
from ui.widgets import preset

# The article's two studies, one click away: (model, layers, methods, target, aug, eigen).
STUDIES = {
    "layer_progression": {
        "label": "Layer progression (DeepLabV3, layer1 → layer4, person)",
        "model": "deeplabv3", "layers": ["layer1", "layer2", "layer3", "layer4"], "methods": ["gradcam"],
        "target": "person", "aug": False, "eigen": False,
    },
    "all_methods": {
        "label": "All methods (DeiT-tiny, the article's 8, aug + eigen smoothing)",
        "model": "deit_tiny", "layers": ["block11"], "methods": list(methods.ARTICLE_METHODS),
        "target": None, "aug": True, "eigen": True,
    },
}


def apply_study(key: str) -> None:
    """Callback: set the widgets (the sidebar's model and weights, the sample) before the next run
    draws them, so that every widget shows what the study computes."""
    study = STUDIES[key]
    previous_weights = st.session_state.get(Sidebar.WEIGHTS)
    st.session_state[Sidebar.MODEL] = study["model"]
    st.session_state[Compare.TARGET_REQUEST] = study["target"]
    # An explicit untrained choice stays: the sidebar restores each model's own weights choice
    # (pretrained by default), which offline fails for the study's model.
    if previous_weights == sidebar_look.WEIGHTS_UNTRAINED:
        st.session_state.setdefault(Sidebar.WEIGHTS_BY_MODEL, {})[study["model"]] = sidebar_look.WEIGHTS_UNTRAINED
    # Through the widgets' sticky copies: a run that cannot draw them (no weights yet for the
    # study's model) must not lose the study's choice.
    preset(Compare.layers(study["model"]), study["layers"])
    preset(Compare.METHODS, study["methods"])
    preset(Compare.AUG, study["aug"], toggle=True)
    preset(Compare.EIGEN, study["eigen"], toggle=True)
    st.session_state.pop(Compare.STUDY_NOTE, None)
    st.session_state[Compare.STUDY_GO] = (key, time.monotonic())  # no second "Run all" click
    sel = sidebar.current()
    if study["target"] and sel is not None:
        st.session_state[Compare.STUDY_NOTE] = _open_sample_with(sel, study["target"])


@st.cache_resource(show_spinner=False)
def _study_seconds() -> dict[str, float]:
    """Process-wide: how long each study took here the last time (the estimate on its button)."""
    return {}


def study_label(key: str) -> str:
    """The study's button: its name, and what it took the last time it ran in this process."""
    took = _study_seconds().get(key)
    return STUDIES[key]["label"] + (f" · ~{duration(took)}" if took is not None else "")


def study_go(ex, pairs: list, eigen: bool) -> Callable[[], None] | None:
    """If a study's button started this run: every map of the grid may run (the click was the
    go, slow ones and the faithfulness scores included); returns what to call once they are
    computed (it times the study)."""
    go = st.session_state.pop(Compare.STUDY_GO, None)
    if go is None:
        return None
    key, clicked = go
    for m, layer in pairs:
        ex.allow(m, layer, eigen)
    st.session_state[Compare.SCORES_GO] = True  # the scores too

    def done() -> None:
        _study_seconds()[key] = time.monotonic() - clicked
    return done


def _open_sample_with(sel: sidebar.Selection, class_name: str) -> tuple[str, str]:
    """Open a sample of the sidebar's view whose labels name the class (the open one if it does):
    (alert kind, message). One server-side query on the view, never a scan."""
    try:
        found = data.sample_with_label(sel.view(), class_name, sel.sample_id)
    except CamError as exc:
        return "warning", f"Could not look for a sample with {class_name!r}: {exc}"
    if found is None:
        return "warning", (f"No sample in the sidebar's view has a label naming {class_name!r}: the study runs "
                           f"on the open sample ({sel.label}), which may not show one.")
    if found == sel.sample_id:
        return "info", f"The open sample's labels name {class_name!r}: the study runs on it."
    sidebar.choose_sample(found)
    return "info", f"Opened a sample whose labels name {class_name!r} (the open one's do not)."


def show_study_note() -> None:
    note = st.session_state.pop(Compare.STUDY_NOTE, None)
    if note:
        kind, message = note
        (st.warning if kind == "warning" else st.info)(text.escape(message), icon=":material/travel_explore:")


def use_untrained(model_key: str) -> None:
    """Callback of "use untrained weights": the sidebar's Weights for this model, untrained."""
    st.session_state[Sidebar.WEIGHTS] = sidebar_look.WEIGHTS_UNTRAINED
    st.session_state.setdefault(Sidebar.WEIGHTS_BY_MODEL, {})[model_key] = sidebar_look.WEIGHTS_UNTRAINED


def untrained_offer(sel: sidebar.Selection) -> None:
    """No weights for the sidebar's model: one button that switches to untrained weights."""
    st.button("Use untrained weights", key=Compare.USE_UNTRAINED, icon=":material/shuffle:", type="primary",
              on_click=use_untrained, args=(sel.model,),
              help="Random weights, labelled UNTRAINED on every map: the mechanics of each method, not what "
                   "a trained model looks at.")
