"""Compare's ranking across the view: where does the model look for one class? The controls
(class, method, layer, samples, where the object is), then (the page computes it with
ui/compute.rank) the ranked samples, worst first, a page at a time."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import streamlit as st

from camcore import judge, methods, metrics
from camcore.models import LoadedModel
from ui import cache, data, sidebar, text
from ui.compare_grid import overlaid
from ui.compute import Progress
from ui.state import Compare
from ui.widgets import request

RANK_DEFAULT = 50  # samples ranked unless the user asks for more (each one is a model pass)
RANK_PAGE = 16  # ranked samples shown per page


@dataclass(frozen=True)
class RankAsk:
    cls: str
    method: str
    layer: str
    view: Any  # the sidebar's view, its first `limit` samples
    objects: tuple[str, str, bool] | None  # (field, label, is a mask field): read at the Rank click
    what: str  # what a ranking is about, in words
    context: tuple  # rows ranked under other settings are never shown as this one's
    go: bool


def ranking_controls(sel: sidebar.Selection, loaded: LoadedModel, chosen: list[str], layers: list[str],
                     names: tuple[str, ...], default_class: int) -> RankAsk:
    """Class, method, layer, how many samples, where the object is; the Rank button."""
    st.markdown("#### Across the view: where does the model look for one class?")
    c1, c2, c3, c4 = st.columns(4)
    # The class follows the sample's target until the user picks another one.
    class_key, default_key = Compare.rank_class(loaded.spec.key), Compare.rank_class_default(loaded.spec.key)
    if st.session_state.get(class_key) in (None, st.session_state.get(default_key)):
        st.session_state[class_key] = names[default_class]
    st.session_state[default_key] = names[default_class]
    cls = c1.selectbox("Class", list(names), key=class_key)
    method = c2.selectbox("Method", chosen, format_func=lambda k: methods.METHODS[k].label, key=Compare.RANK_METHOD)
    layer = c3.selectbox("Layer", layers, key=Compare.RANK_LAYER)
    # The sidebar's view itself (stages), its first N samples: each one costs a model pass.
    limit = int(c4.number_input("Samples to rank", 1, max(1, sel.count), min(sel.count, RANK_DEFAULT),
                                key=Compare.RANK_LIMIT, help=f"The first N of the {sel.count:,} samples in the "
                                                             "sidebar's view (its order: sort it to choose which)."))
    view = sel.view().limit(limit)
    field, fallback, label, objects = _object_source(c4, sel, loaded, cls)
    waiting = bool(field and field != fallback and label is None)
    # A callback, not the return value: a click survives the router's one rerun (router.ensure_routed).
    st.button(f"Rank {limit:,} samples", key=Compare.RANK_GO, on_click=request, args=(Compare.RANK_REQUESTED,),
              disabled=waiting, help="Choose the object's label first." if waiting else None)
    what = f"{cls} · {methods.METHODS[method].label} · {layer} · object from " + (
        f"{field} = {label}" if field and field != fallback else (fallback or "no object labels"))
    context = (sel.dataset, sel.view_spec, limit, loaded.spec.key, loaded.weights_label, sel.input_size, what)
    go = st.session_state.pop(Compare.RANK_REQUESTED, False)
    return RankAsk(cls, method, layer, view, objects, what, context, go)


def _object_source(c4, sel: sidebar.Selection, loaded: LoadedModel, cls: str):
    """Where the object is: ground-truth masks or boxes from the dataset, or (segmentation models)
    the model's own predicted mask: (field, fallback, label, (field, label, is a mask) or None).
    Nothing is read over the view here (this runs at every rerun): the masks or boxes at the click."""
    dataset = data.load_dataset(sel.dataset)
    objects = None
    mask_fields = data.mask_fields(dataset)
    sources = list(mask_fields)
    if loaded.spec.task == "classification":
        sources += data.box_fields(dataset)
    fallback = "the predicted mask" if loaded.spec.task == "segmentation" else None
    field = c4.selectbox("Object from", [fallback] + sources, key=Compare.rank_object(loaded.spec.key),
                         index=1 if sources and fallback is None else 0,
                         format_func=lambda f: "(no object labels)" if f is None else f)
    label = None
    if field and field != fallback:
        is_mask = field in mask_fields
        # a box field's labels: a distinct over the dataset, kept a minute per dataset (ui/cache)
        labels = data.object_labels(dataset, field, is_mask) if is_mask else cache.label_values(sel.dataset, field)
        # Preselect only a label that names the class; else ask (an unrelated default would score
        # the heatmaps against the wrong objects). The default follows the class.
        label_key = Compare.rank_object_label(field)
        guess = judge.match_object_label(labels, cls)
        if st.session_state.get(Compare.rank_object_label_class(field)) != cls:
            st.session_state[label_key] = None if guess is None else labels[guess]
            st.session_state[Compare.rank_object_label_class(field)] = cls
        label = c4.selectbox("Object label", labels, index=None, key=label_key,
                             placeholder="choose the object's label",
                             help=text.escape(f"The label in {field!r} that marks the {cls!r} objects."))
        if label is None:
            st.info(f"No label in {text.escape(repr(field))} names {text.escape(repr(cls))}: choose under "
                    "'Object label' which label marks its objects, then rank.")
        else:
            objects = (field, label, is_mask)
    return field, fallback, label, objects


def rank_items(ask: RankAsk) -> list[judge.SampleItem]:
    """The samples to rank, with where their object is (read now: the Rank click's run)."""
    boxes: dict = {}
    masks: dict = {}
    if ask.objects is not None:
        field, label, is_mask = ask.objects
        if is_mask:
            masks = data.object_masks(ask.view, field, label)
        else:
            boxes = data.object_boxes(ask.view, field, label)
    return [judge.SampleItem(i, p, tuple(tuple(b) for b in boxes.get(i, ())), masks.get(i))
            for i, p in data.ids_and_paths(ask.view)]


def progress_bar() -> tuple[Any, Progress]:
    """A progress bar and the callback that moves it."""
    bar = st.progress(0.0)
    return bar, lambda f, msg: bar.progress(f, text=msg)


def start_ranking() -> None:
    """A ranking begins: the last one goes (it would be shown as if it were this one's)."""
    st.session_state.pop(Compare.RANK_ROWS, None)
    st.session_state[Compare.RANK_RUNNING] = True


def ranking_interrupted() -> None:
    """A ranking that a click (▶, any widget) stopped before it ended: said, never replaced by
    the previous one."""
    if st.session_state.pop(Compare.RANK_RUNNING, False):
        st.warning("The ranking was stopped before it finished: a click (▶, a setting) reruns the page. Nothing "
                   "of it is shown; press Rank to run it again.", icon=":material/cancel:")


def keep_ranking(ask: RankAsk, rows: list) -> None:
    st.session_state[Compare.RANK_ROWS] = {"context": ask.context, "what": ask.what, "rows": rows}
    st.session_state.pop(Compare.RANK_RUNNING, None)


def ranking_results(sel: sidebar.Selection, loaded: LoadedModel, ask: RankAsk, threshold: float) -> None:
    """The last ranking, a page at a time, while it is about the settings above."""
    ranked = st.session_state.get(Compare.RANK_ROWS)
    if not ranked:
        return
    if ranked["context"] != ask.context:
        st.info(f"The last ranking was for {text.escape(ranked['what'])}; the settings above have changed since. "
                "Press Rank to rank for them.")
        return
    rows = ranked["rows"]
    st.caption(f"Ranked for **{text.escape(ask.what)}**, worst first; flagged below {threshold:.0%} on the object.")
    pages = max(1, -(-len(rows) // RANK_PAGE))
    shown = st.number_input(f"Page (of {pages}, {RANK_PAGE} a page)", 1, pages, 1,
                            key=Compare.RANK_PAGE) if pages > 1 else 1
    folder = cache.common_folder(sel.dataset)
    cols = st.columns(4)
    for i, r in enumerate(rows[(shown - 1) * RANK_PAGE:shown * RANK_PAGE]):
        col = cols[i % 4]
        name = text.escape(data.relative_label(r.filepath, folder))
        if r.heatmap is None:
            col.caption(f"{name}: {text.escape(r.error)}")
            continue
        img = cache.image(r.filepath, os.path.getmtime(r.filepath))
        col.image(overlaid(img, r.heatmap, loaded, 0.5, "jet"), width="stretch")
        share = "n/a" if r.share_inside is None else f"{r.share_inside:.0%}"
        # The flag follows the threshold slider; the share itself does not depend on it.
        flagged = r.share_inside is not None and metrics.background_dominated(r.share_inside, threshold)
        col.caption(f"{name}: {share} on the object ({text.escape(r.mask_source)})"
                    + (" · **background-dominated**" if flagged else ""))
