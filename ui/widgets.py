"""Widgets whose state outlives what Streamlit would drop, and the button callback every page uses."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from camcore.results import Prediction
from ui.state import Explore, Widgets

AUTO_TARGET = "__auto__"


def request(flag: str) -> None:
    """A button's on_click: a click survives the router's one rerun (router.ensure_routed), a
    return value would not. The page pops the flag."""
    st.session_state[flag] = True


def target_picker(container, prediction: Prediction, names: tuple[str, ...], key: str | None = None,
                  requested: str | None = None) -> str | None:
    """Target class: what the model predicts comes first, then every class by name.
    `requested` (a class name, e.g. from a study button) preselects that class."""
    predicted = [c.index for c in prediction.classes]
    share = {c.index: c.score for c in prediction.classes}
    options = [AUTO_TARGET] + predicted + [i for i in range(len(names)) if i not in share]
    noun = "of pixels" if prediction.task == "segmentation" else "probability"

    def fmt(o):
        if o == AUTO_TARGET:
            return "auto (person if found, else largest class)" if prediction.task == "segmentation" \
                else f"auto (top-1: {prediction.classes[0].name})"
        return f"{names[o]} — predicted, {share[o]:.0%} {noun}" if o in share else names[o]

    key = key or Explore.target(len(names))
    if requested is not None:
        lowered = [n.lower() for n in names]
        st.session_state[key] = lowered.index(requested.lower()) if requested.lower() in lowered else AUTO_TARGET
    choice = fresh_label_selectbox(container, "Target class", options, fmt, key)
    return None if choice == AUTO_TARGET else str(choice)


def fresh_label_selectbox(container, label: str, options: list, fmt: Callable[[Any], str], key: str,
                          **kwargs) -> Any:
    """A keyed selectbox whose option labels depend on the data (the auto target names the top-1
    class). Streamlit sends a selectbox's value to the browser as its label, and the browser keeps
    showing the label it was last sent while the value stays the same: a new sample's
    "auto (top-1: espresso)" would still read "auto (top-1: jersey)". When the label of the
    current value changes, set the value again, which sends the new label."""
    shown_key = Widgets.shown_label(key)
    current = st.session_state.get(key)
    if current in options and st.session_state.get(shown_key) not in (None, fmt(current)):
        st.session_state[key] = current
    choice = container.selectbox(label, options, format_func=fmt, key=key, **kwargs)
    st.session_state[shown_key] = None if choice is None else fmt(choice)
    return choice


def sticky_multiselect(container, label: str, options: list, default: list, key: str, **kwargs) -> list:
    """A keyed multiselect whose choice survives what Streamlit would drop: a run that did not draw
    it (a model that failed to load: Streamlit forgets the state of undrawn widgets) and other
    options (another model): choices that do not apply now are kept for when they apply again."""
    kept_key, offered_key = Widgets.kept(key), Widgets.offered(key)
    kept = st.session_state.get(kept_key, list(default))
    if st.session_state.get(offered_key) != list(options) or key not in st.session_state:
        st.session_state[key] = [o for o in kept if o in options]
    st.session_state[offered_key] = list(options)
    chosen = container.multiselect(label, options, key=key, **kwargs)
    st.session_state[kept_key] = list(chosen) + [o for o in kept if o not in options and o not in chosen]
    return chosen


def sticky(widget: Callable[..., Any], label: str, key: str, default: Any, *args, **kwargs) -> Any:
    """A keyed widget (toggle, slider, ...) whose value survives a run or a page that did not draw
    it: Streamlit forgets the state of undrawn widgets, and a page visit would reset it."""
    kept_key = Widgets.kept(key)
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(kept_key, default)
    value = widget(label, *args, key=key, **kwargs)
    st.session_state[kept_key] = value
    return value


def shown_toggle(container, label: str, key: str, default: bool, **kwargs) -> bool:
    """A keyed toggle whose switch always shows the value the page computes with.

    A callback (a study) may set the value, and the next run may not draw the switch (no weights
    for the study's model yet). The browser keeps the switch's old value meanwhile and sends it
    back with the next click (on "use untrained weights", say), which would silently undo the
    study; and Streamlit only tells the browser a value set in the same run that draws the widget.
    So a value set for the widget (`preset(key, value, toggle=True)`) waits until a run draws it and then wins over
    what the browser sent; and the value is set again on every run, before the widget, so the
    browser always shows it."""
    kept_key, pending_key = Widgets.kept(key), Widgets.pending(key)
    if pending_key in st.session_state:
        value = st.session_state.pop(pending_key)
    else:
        value = st.session_state.get(key, st.session_state.get(kept_key, default))
    st.session_state[key] = bool(value)
    value = container.toggle(label, key=key, **kwargs)
    st.session_state[kept_key] = value
    return value


def preset(key: str, value: Any, toggle: bool = False) -> None:
    """Set a sticky widget's value from a callback, before the next run draws it: the widget's
    state and the copy it is restored from (a run that cannot draw it must not lose the value)."""
    st.session_state[key] = value
    st.session_state[Widgets.kept(key)] = value
    st.session_state.pop(Widgets.offered(key), None)  # sticky_multiselect: set it again
    if toggle:  # shown_toggle: wins over the browser's old value
        st.session_state[Widgets.pending(key)] = value
