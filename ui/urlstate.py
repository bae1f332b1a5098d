"""The URL is the state: read once when a session starts, written at the end of every run.

Format (camcore.links): ?dataset=&view=&sample=&model=&weights=&layers=a,b&methods=x,y&target=&box=
The sidebar and the pages apply what a link asks for before drawing their widgets; what does not
exist gets a message and the default. app.py writes the URL after the page has run, so the URL
names what is on screen after the same run (written earlier, in the sidebar or before the page's
widgets, Chromium showed the previous state).
"""
from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

import streamlit as st

from camcore import links, methods, models, weights
from ui import text
from ui.state import Sidebar, Url, Widgets

_READ, _PENDING, _MESSAGES, PAGE_STATE = Url.READ, Url.PENDING, Url.MESSAGES, Url.PAGE_STATE


def say(message: str) -> None:
    """A message for the sidebar (a link that asked for something that does not exist). Shown as
    markdown-escaped text: it quotes what the link said."""
    st.session_state.setdefault(_MESSAGES, []).append(text.escape(message))


def show_messages(container) -> None:
    for message in st.session_state.pop(_MESSAGES, []):
        container.warning(message)


def pending() -> links.LinkState:
    return st.session_state.get(_PENDING) or links.LinkState()


def read_once(dataset_names: Sequence[str]) -> None:
    """On a session's first run: put the link's dataset, view, sample and model where the sidebar
    reads them; keep the rest for the page."""
    if st.session_state.get(_READ):
        return
    st.session_state[_READ] = True
    state = links.parse(st.query_params.to_dict())
    st.session_state[_PENDING] = state
    if state.dataset:
        if state.dataset in dataset_names:
            st.session_state[Sidebar.DATASET] = state.dataset
        else:
            say(f"No dataset named {state.dataset!r}: showing the demo dataset.")
    if state.view:
        st.session_state[Sidebar.VIEW] = "saved:" + state.view
        st.session_state[Url.VIEW_WANTED] = state.view
    if state.narrow:
        st.session_state[Sidebar.NARROW] = state.narrow
    wanted = {k: getattr(state, k) for k in ("tags", "field", "label", "conf", "file", "sort", "desc")
              if getattr(state, k)}
    if wanted:
        st.session_state[Url.FILTER_WANTED] = wanted
    if state.sample:
        st.session_state[Sidebar.JUMP] = state.sample
    if state.model:
        if state.model in models.MODELS:
            st.session_state[Sidebar.MODEL] = state.model
        else:
            say(f"No model {state.model!r}; one of {', '.join(models.MODELS)}. Showing the default model.")


def apply_filter(key: str, choices: Sequence | None = None) -> None:
    """Before the sidebar draws a Filter-and-sort widget: a link's value for it (URL key `key`),
    put in the widget's state when it is one of `choices` (None: free text), else said."""
    wanted = st.session_state.get(Url.FILTER_WANTED) or {}
    if key not in wanted:
        return
    value = wanted.pop(key)
    widget = _FILTER_WIDGETS[key]
    if key == "tags":
        known = [t for t in value if choices is not None and t in choices]
        unknown = [t for t in value if t not in known]
        if unknown:
            say(f"No sample is tagged {', '.join(map(repr, unknown))}: not filtered by it.")
        st.session_state[widget] = known
    elif key == "conf":
        try:
            lo, hi = (float(v) for v in value.split("-", 1))
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError
        except ValueError:
            say(f"A confidence range is lo-hi between 0 and 1, not {value!r}: not filtered by it.")
            return
        st.session_state[widget] = (lo, hi)
    elif key == "desc":
        st.session_state[widget] = value.lower() in ("1", "true", "yes")
    elif key == "file":
        st.session_state[widget] = value
    elif choices is not None and value in choices:
        st.session_state[widget] = value
    else:
        what = {"field": "label field", "label": "class", "sort": "field to sort by"}[key]
        say(f"No {what} {value!r} here: not {'sorted' if key == 'sort' else 'filtered'} by it.")


def filter_leftovers() -> None:
    """After the Filter-and-sort widgets: a link's values none of them took (a class or confidence
    range without a label field that has them) are said, not kept for later."""
    for key, value in (st.session_state.pop(Url.FILTER_WANTED, None) or {}).items():
        shown = ",".join(value) if isinstance(value, tuple) else value
        say(f"{key}={shown!r} needs a label field that has it (field=…): not filtered by it.")


_FILTER_WIDGETS = {"tags": Sidebar.VIEW_TAGS, "field": Sidebar.VIEW_LABEL_FIELD, "label": Sidebar.VIEW_LABEL,
                   "conf": Sidebar.VIEW_CONFIDENCE, "file": Sidebar.VIEW_FILENAME, "sort": Sidebar.VIEW_SORT,
                   "desc": Sidebar.VIEW_SORT_DESC}


def check_view(choices: dict[str, str]) -> None:
    """A link's saved view that the dataset does not have: say so (the sidebar falls back)."""
    wanted = st.session_state.pop(Url.VIEW_WANTED, None)
    if wanted is not None and "saved:" + wanted not in choices:
        say(f"No saved view named {wanted!r} in this dataset: showing all samples.")


def apply_weights(choices: dict[str, str]) -> None:
    """The link's weights (auto, untrained, or a file's name in the weights folder), once."""
    state = pending()
    if not state.weights or st.session_state.get(Url.WEIGHTS_DONE):
        return
    st.session_state[Url.WEIGHTS_DONE] = True
    wanted = state.weights
    found = weights.find_choice(wanted)
    label = found.label if found is not None and found.label in choices else None
    if label is None:
        say(f"No weights {wanted!r} for this model (auto, untrained or a file in {weights.weights_dir()}): "
            "using the pretrained weights.")
        return
    st.session_state[Sidebar.WEIGHTS] = label


def apply_page(spec: models.ModelSpec, layer_keys: Sequence[str], method_keys: Sequence[str],
               layers_key: str, methods_key: str, container=None) -> str | None:
    """Once per session, on the first page that draws layers and methods: put the link's layers and
    methods into those widgets (widgets.sticky_multiselect's kept values) and return its target
    class name (or None). Unknown names are reported and left out."""
    state = pending()
    if st.session_state.get(Url.PAGE_DONE) or not (state.layers or state.methods or state.target):
        return None
    st.session_state[Url.PAGE_DONE] = True
    problems = []
    if state.methods:
        by_name = {m: _method_key(m) for m in state.methods}
        good = [k for k in by_name.values() if k in method_keys]
        problems += [f"method {m!r}" for m, k in by_name.items() if k not in method_keys]
        if good:
            st.session_state[Widgets.kept(methods_key)] = good
            st.session_state.pop(methods_key, None)
    if state.layers:
        lowered = {name.lower(): name for name in layer_keys}
        good = [lowered[name.lower()] for name in state.layers if name.lower() in lowered]
        problems += [f"layer {name!r}" for name in state.layers if name.lower() not in lowered]
        if good:
            st.session_state[Widgets.kept(layers_key)] = good
            st.session_state.pop(layers_key, None)
    target = state.target or None
    if target is not None and target.lower() not in {n.lower() for n in spec.class_names()}:
        problems.append(f"target class {target!r}")
        target = None
    if problems:
        (container or st).warning(f"This link asks for what {text.escape(spec.label)} does not have: "
                                  f"{text.escape(', '.join(problems))}. "
                                  "Showing the defaults for those.")
    return target


def _method_key(name: str) -> str:
    try:
        return methods.get_method(name).key
    except Exception:  # an unknown name: reported by the caller
        return name


def remember_page(layers: Sequence[str] = (), method_keys: Sequence[str] = (), target: str | None = None,
                  box: str | None = None) -> None:
    """What the page shows, for the URL written at the end of the run (box: a detector's box rule)."""
    st.session_state[PAGE_STATE] = {"layers": tuple(layers), "methods": tuple(method_keys),
                                     "target": target or "", "box": box or ""}


def linked_box() -> str | None:
    """A link's box rule (a detection model's box), once per session; None when it names none."""
    if st.session_state.get(Url.BOX_DONE):
        return None
    st.session_state[Url.BOX_DONE] = True
    return pending().box or None


def remember_audit(run: str, reviewed: int | None = None) -> None:
    """The Audit / review page's run and queue position, for the URL written at the end of the run."""
    st.session_state[PAGE_STATE] = {**(st.session_state.get(PAGE_STATE) or {}), "run": run,
                                     "reviewed": "" if reviewed is None else str(reviewed)}


def write(page_path: str) -> None:
    """Set the URL to what this run put on screen (called by app.py after the page ran)."""
    params = _state(page_path).params()
    st.session_state.pop(PAGE_STATE, None)
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


def current_url(page_path: str = "explore") -> str:
    """The absolute URL of what is on screen now (for a finding), on the host the browser used."""
    origin = links.base_url()
    try:
        here = st.context.url
    except AttributeError:  # an older Streamlit: the configured base
        here = None
    if here:
        parts = urllib.parse.urlsplit(here)
        origin = f"{parts.scheme}://{parts.netloc}"
    return links.explorer_url(_state(page_path), page_path or "explore", base=origin)


def _state(page_path: str) -> links.LinkState:
    page_path = page_path or "explore"  # the default page's url path is empty
    sel = st.session_state.get(Sidebar.SELECTION)
    page_state = st.session_state.get(PAGE_STATE) or {}
    if sel is None:
        state = links.LinkState(dataset=st.session_state.get(Sidebar.DATASET) or "")
    else:
        choice = st.session_state.get(Sidebar.VIEW) or ""
        state = links.LinkState(
            dataset=sel.dataset, sample=sel.sample_id,
            view=choice.removeprefix("saved:") if choice.startswith("saved:") else "",
            model=sel.model if page_path in ("explore", "compare") else "",
            weights=_weights_param(sel.weights) if page_path in ("explore", "compare") else "",
            layers=page_state.get("layers", ()), methods=page_state.get("methods", ()),
            target=page_state.get("target", ""), box=page_state.get("box", ""), narrow=sel.view_spec.narrow,
            run=page_state.get("run", ""), reviewed=page_state.get("reviewed", ""), **_filter_params(sel.view_spec))
    return state


def _filter_params(spec) -> dict:
    """The sidebar's Filter and sort as URL values (views.ViewSpec -> LinkState fields)."""
    conf = f"{spec.confidence[0]:g}-{spec.confidence[1]:g}" if spec.confidence is not None else ""
    return {"tags": tuple(spec.tags), "field": spec.label_field, "label": spec.label, "conf": conf,
            "file": spec.filename_contains, "sort": spec.sort_field, "desc": "1" if spec.sort_reverse else ""}


def _weights_param(value: str) -> str:
    """untrained / a file's name (the folder is the weights folder); nothing for auto, the default."""
    return "" if value == weights.AUTO else weights.link_name(value)
