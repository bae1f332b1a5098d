"""Renderers for the Compare page: the layer x method grid with scores, the studies, the ROAD curve
and the ranking. The maps, scores and rankings come from ui/compute.py; nothing here computes."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from camcore import judge, methods, metrics, overlay, store
from camcore.errors import CamError
from camcore.models import LoadedModel
from camcore.results import Heatmap
from camcore.store import views
from ui import cache, sidebar, text
from ui.compute import Cell, Grid, Progress, duration
from ui.state import Compare, Sidebar
from ui.widgets import preset, request

CELLS_PER_LINE = 4  # maps side by side in a row; more wrap to the next line (>= 150 px at 1280 px wide)
ROW_LABEL_PX = 120  # fixed width of a row's label ("block11", "layer4" never wrap letter by letter)
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
SCORES_HELP = (
    "How much the target's score changes when the image is multiplied by the map (**keep**: only the "
    "highlight kept) and by one minus the map (**remove**: the highlight removed), as a share of the "
    "score on the unchanged image (pytorch_grad_cam.metrics.CamMultImageConfidenceChange). A faithful "
    "map keeps the score (keep near 0% or above) and loses it when removed (remove well below 0%). "
    "Relative, so models and targets compare: a segmentation score is a sum over the mask, a "
    "classifier's a logit.")
SCORES_AUTO_SECONDS = 5.0  # faithfulness scores computed unasked while they take less than this
RANK_DEFAULT = 50  # samples ranked unless the user asks for more (each one is a model pass)
RANK_PAGE = 16  # ranked samples shown per page


def apply_study(key: str) -> None:
    """Callback: set the widgets (the sidebar's model and weights, the sample) before the next run
    draws them, so that every widget shows what the study computes."""
    study = STUDIES[key]
    previous_weights = st.session_state.get(Sidebar.WEIGHTS)
    st.session_state[Sidebar.MODEL] = study["model"]
    st.session_state[Compare.TARGET_REQUEST] = study["target"]
    # An explicit untrained choice stays: the sidebar restores each model's own weights choice
    # (pretrained by default), which offline fails for the study's model.
    if previous_weights == sidebar.WEIGHTS_UNTRAINED:
        st.session_state.setdefault(Sidebar.WEIGHTS_BY_MODEL, {})[study["model"]] = sidebar.WEIGHTS_UNTRAINED
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


def scores_offer(maps: Grid) -> None:
    """The faithfulness scores left out because they take long: what they cost, and the go."""
    c1, c2 = st.columns([3, 2], vertical_alignment="center")
    c1.caption(f"Faithfulness scores of {maps.scores_waiting} maps not computed yet: two forwards of the model "
               f"each, about {duration(maps.scores_seconds)} here. The maps come first.")
    c2.button(f"Compute scores (~{duration(maps.scores_seconds)})", key=Compare.SCORES_GO_BUTTON, on_click=request,
              args=(Compare.SCORES_GO,), icon=":material/play_arrow:", width="stretch")


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
        found = sample_with_class(sel.view(), class_name, sel.sample_id)
    except CamError as exc:
        return "warning", f"Could not look for a sample with {class_name!r}: {exc}"
    if found is None:
        return "warning", (f"No sample in the sidebar's view has a label naming {class_name!r}: the study runs "
                           f"on the open sample ({sel.label}), which may not show one.")
    if found == sel.sample_id:
        return "info", f"The open sample's labels name {class_name!r}: the study runs on it."
    sidebar.choose_sample(found)
    return "info", f"Opened a sample whose labels name {class_name!r} (the open one's do not)."


def sample_with_class(view, class_name: str, prefer: str | None = None) -> str | None:
    """The id of a sample in `view` with a label (classification or detection, any label field)
    named `class_name`, case-insensitive: `prefer` when it has one, else the view's first; None
    when none has."""
    return store.sample_with_label(view, class_name, prefer)


def show_study_note() -> None:
    note = st.session_state.pop(Compare.STUDY_NOTE, None)
    if note:
        kind, message = note
        (st.warning if kind == "warning" else st.info)(text.escape(message), icon=":material/travel_explore:")


def use_untrained(model_key: str) -> None:
    """Callback of "use untrained weights": the sidebar's Weights for this model, untrained."""
    st.session_state[Sidebar.WEIGHTS] = sidebar.WEIGHTS_UNTRAINED
    st.session_state.setdefault(Sidebar.WEIGHTS_BY_MODEL, {})[model_key] = sidebar.WEIGHTS_UNTRAINED


def untrained_offer(sel: sidebar.Selection) -> None:
    """No weights for the sidebar's model: one button that switches to untrained weights."""
    st.button("Use untrained weights", key=Compare.USE_UNTRAINED, icon=":material/shuffle:", type="primary",
              on_click=use_untrained, args=(sel.model,),
              help="Random weights, labelled UNTRAINED on every map: the mechanics of each method, not what "
                   "a trained model looks at.")


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0%}"


def score_line(f: metrics.Faithfulness | None, share: float | None, threshold: float) -> str:
    parts = []
    if f is not None:
        keep, remove = percent(f.keep_relative), percent(f.remove_relative)
        parts.append(f"keep Δ {keep} · remove Δ {remove} of the score")
    if share is not None:
        flag = " · **background-dominated**" if metrics.background_dominated(share, threshold) else ""
        parts.append(f"{share:.0%} on the object{flag}")
    return " · ".join(parts)


def smoothing(h: Heatmap) -> str:
    """What smoothing made this map (the map's own flags: Eigen-CAM has no eigen_smooth)."""
    parts = [name for name, on in (("aug", h.aug_smooth), ("eigen", h.eigen_smooth)) if on]
    return " + ".join(parts) + " smoothing" if parts else "no smoothing"


def made_with(h: Heatmap, loaded: LoadedModel) -> str:
    """Method · layer · smoothing · weights · target: how one map was made (plain text)."""
    weights = "pretrained" if loaded.pretrained else "UNTRAINED"
    return (f"{methods.METHODS[h.method].label} · {h.layer} · {smoothing(h)} · {weights} weights · "
            f"target {h.target.name}")


def _lines(cells: list) -> tuple[list[list], int]:
    per_line = min(CELLS_PER_LINE, max(len(cells), 2))  # one map alone must not fill the page
    return [cells[i:i + per_line] for i in range(0, len(cells), per_line)], per_line


def _overlay(img, h: Heatmap, loaded: LoadedModel, alpha: float, cmap: str):
    out = overlay.overlay(img.rgb, h.map, alpha, cmap)
    return out if loaded.pretrained else overlay.watermark_untrained(out, outside=True)


def grid(img, maps: Grid, loaded: LoadedModel, layers: list[str], chosen: list[str], alpha: float, cmap: str,
         threshold: float) -> list[dict]:
    """Rows = layers, maps = methods (or, for one method, one row of layers: the layer study uses
    the width); a row wraps after CELLS_PER_LINE maps. Returns the scores table."""
    table = []
    transpose = len(chosen) == 1 and len(layers) > 1
    rows = [(methods.METHODS[chosen[0]].label, [(chosen[0], layer) for layer in layers])] if transpose else \
        [(layer, [(m, layer) for m in chosen]) for layer in layers]
    for row_label, cells in rows:
        row = st.container(horizontal=True, gap="small", key=Compare.row(row_label))
        row.container(width=ROW_LABEL_PX).markdown(f"**{text.escape(row_label)}**")
        box = row.container()
        lines, per_line = _lines(cells)
        for line in lines:
            for col, (m, layer) in zip(box.columns(per_line), line, strict=False):
                # The header names what varies along the row: the layer (one method), else the method.
                header = layer if transpose else methods.METHODS[m].label
                entry = _cell(col, header, img, maps.cells[(m, layer)], loaded, m, layer, alpha, cmap, threshold)
                if entry is not None:
                    table.append(entry)
    enlarged = st.session_state.pop(Compare.ENLARGE, None)
    cell = maps.cells.get(tuple(enlarged)) if enlarged is not None else None
    if cell is not None and cell.heatmap is not None:
        _enlarged_dialog(img, cell, loaded, alpha, cmap, threshold)
    return table


def _enlarge(method: str, layer: str) -> None:
    st.session_state[Compare.ENLARGE] = (method, layer)


def _cell(col, header: str, img, cell: Cell, loaded: LoadedModel, m: str, layer: str, alpha: float, cmap: str,
          threshold: float) -> dict | None:
    col.markdown(f"**{text.escape(header)}**")
    h = cell.heatmap
    if h is None:
        col.warning(text.escape(cell.error))
        return None
    col.image(_overlay(img, h, loaded, alpha, cmap), width="stretch", caption=text.escape(made_with(h, loaded)))
    f = cell.faithfulness
    line = score_line(f, cell.share, threshold) or f"{h.seconds:.2f} s"
    col.caption(("**blank map** (zero everywhere) · " if h.blank else "") + line,
                help=SCORES_HELP if f is not None else None)
    col.button("Enlarge", key=Compare.enlarge(m, layer), icon=":material/open_in_full:", type="tertiary",
               on_click=_enlarge, args=(m, layer), help="Show this map full size")
    keep, remove = (f.keep_relative, f.remove_relative) if f else (None, None)
    return {"method": m, "layer": h.layer,
            "keep (share of the score)": np.nan if keep is None else keep,
            "remove (share of the score)": np.nan if remove is None else remove,
            "share on object": cell.share if cell.share is not None else np.nan}


@st.dialog("Heatmap", width="large")
def _enlarged_dialog(img, cell: Cell, loaded: LoadedModel, alpha: float, cmap: str, threshold: float) -> None:
    h = cell.heatmap
    st.image(_overlay(img, h, loaded, alpha, cmap), width="stretch",
             caption=text.escape(made_with(h, loaded) + f" · weights: {loaded.weights_label}"))
    line = score_line(cell.faithfulness, cell.share, threshold)
    if line:
        st.caption(line, help=SCORES_HELP if cell.faithfulness is not None else None)
    if h.blank:
        st.warning(h.BLANK_NOTE[0].upper() + h.BLANK_NOTE[1:] + ".")


# -- the ROAD curve of one map: the controls, then (the page computes) the curve


@dataclass(frozen=True)
class RoadAsk:
    choice: tuple[str, str]  # (method, layer) of the map, as the scores table names it
    about: tuple  # what a kept curve must be about to stay on screen
    chart: Any  # the one place for the progress, then the curve
    go: bool  # the user asked for a new curve


def _request_road() -> None:
    st.session_state[Compare.ROAD_REQUESTED] = True
    st.session_state[Compare.ROAD_OPEN] = True


def road_controls(maps: Grid, table: list[dict], eigen: bool) -> RoadAsk | None:
    """The ROAD expander: which map, and the button. None when the grid has no map."""
    if not table:
        return None
    # Keyed and stateful: it stays open (or closed) across reruns, whatever is drawn above it.
    with st.expander("ROAD curve (slower: a sparse imputation per point)", key=Compare.ROAD_OPEN,
                     on_change="rerun"):
        options = [(r["method"], r["layer"]) for r in table]
        choice = st.selectbox("Heatmap", options, format_func=lambda o: f"{methods.METHODS[o[0]].label} · {o[1]}",
                              key=Compare.ROAD_CHOICE)
        # A callback, not the return value: a click survives the router's one rerun.
        st.button("Compute ROAD", key=Compare.ROAD_GO, on_click=_request_road)
        chart = st.empty()  # one place: the progress, then the curve (no stale copy beside it)
    go = st.session_state.pop(Compare.ROAD_REQUESTED, False)
    if go:
        st.session_state.pop(Compare.ROAD_CURVE, None)
    # The curve stays on screen (other widgets rerun the page) while it is about this heatmap.
    return RoadAsk(tuple(choice), maps.about + (tuple(choice), eigen), chart, go)


def road_progress(ask: RoadAsk) -> Progress:
    with ask.chart.container():
        bar = st.progress(0.0, text="ROAD: removing the most / least relevant pixels first…")
    return lambda f, msg: bar.progress(min(1.0, f), text=f"ROAD · {msg}")


def keep_road(ask: RoadAsk, curve: metrics.RoadCurve) -> None:
    st.session_state[Compare.ROAD_CURVE] = (ask.about, curve)


def road_chart(ask: RoadAsk) -> None:
    """The kept curve, while it is about the chosen map."""
    kept = st.session_state.get(Compare.ROAD_CURVE)
    if kept is None or kept[0] != ask.about:
        return
    curve = kept[1]
    morf, lerf = curve.relative(curve.morf), curve.relative(curve.lerf)
    relative = all(v is not None for _, v in morf + lerf)

    def pick(rel, raw):  # percent of the original score where there is one, else raw changes
        return [100 * v for _, v in rel] if relative else [v for _, v in raw]

    df = pd.DataFrame({"percentile": [p for p, _ in curve.morf],
                       "most relevant first": pick(morf, curve.morf),
                       "least relevant first": pick(lerf, curve.lerf)}).set_index("percentile")
    with ask.chart.container():
        st.line_chart(df, height=320, x_label="pixels removed (percentile)",
                      y_label="score change (% of original)" if relative else "score change",
                      color=["#d62728", "#1f77b4"])
        st.caption(f"ROAD combined (LeRF − MoRF)/2 = {curve.combined:+.3f}: higher is more faithful.",
                   help="Removing the most relevant pixels first (MoRF) should drop the score fast; "
                        "removing the least relevant first (LeRF) should keep it.")


# -- across the view: the ranking's controls, then (the page computes) the ranked samples


@dataclass(frozen=True)
class RankAsk:
    cls: str
    method: str
    layer: str
    view: Any  # the sidebar's view, its first `limit` samples
    boxes: dict
    masks: dict
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
    field, fallback, label, boxes, masks = _object_source(c4, sel, loaded, view, cls)
    waiting = bool(field and field != fallback and label is None)
    # A callback, not the return value: a click survives the router's one rerun (router.ensure_routed).
    st.button(f"Rank {limit:,} samples", key=Compare.RANK_GO, on_click=request, args=(Compare.RANK_REQUESTED,),
              disabled=waiting, help="Choose the object's label first." if waiting else None)
    what = f"{cls} · {methods.METHODS[method].label} · {layer} · object from " + (
        f"{field} = {label}" if field and field != fallback else (fallback or "no object labels"))
    context = (sel.dataset, sel.view_spec, limit, loaded.spec.key, loaded.weights_label, sel.input_size, what)
    go = st.session_state.pop(Compare.RANK_REQUESTED, False)
    return RankAsk(cls, method, layer, view, boxes, masks, what, context, go)


def _object_source(c4, sel: sidebar.Selection, loaded: LoadedModel, view, cls: str):
    """Where the object is: ground-truth masks or boxes from the dataset, or (segmentation models)
    the model's own predicted mask: (field, fallback, label, boxes, masks)."""
    dataset = store.load_dataset(sel.dataset)
    boxes, masks = {}, {}
    mask_fields = store.segmentation_fields(dataset)
    sources = list(mask_fields)
    if loaded.spec.task == "classification":
        sources += store.detection_fields(dataset)
    fallback = "the predicted mask" if loaded.spec.task == "segmentation" else None
    field = c4.selectbox("Object from", [fallback] + sources, key=Compare.rank_object(loaded.spec.key),
                         index=1 if sources and fallback is None else 0,
                         format_func=lambda f: "(no object labels)" if f is None else f)
    label = None
    if field and field != fallback:
        is_mask = field in mask_fields
        labels = store.segmentation_labels(dataset, field) if is_mask else store.label_values(dataset, field)
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
        elif is_mask:
            masks = store.segmentation_masks_by_sample(view, field, label)
        else:
            boxes = store.boxes_by_sample(view, field, label)
    return field, fallback, label, boxes, masks


def rank_items(ask: RankAsk) -> list[judge.SampleItem]:
    """The samples to rank, with where their object is."""
    return [judge.SampleItem(i, p, tuple(tuple(b) for b in ask.boxes.get(i, ())), ask.masks.get(i))
            for i, p in store.ids_and_paths(ask.view)]


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
        name = text.escape(views.relative_label(r.filepath, folder))
        if r.heatmap is None:
            col.caption(f"{name}: {text.escape(r.error)}")
            continue
        img = cache.image(r.filepath, os.path.getmtime(r.filepath))
        col.image(_overlay(img, r.heatmap, loaded, 0.5, "jet"), width="stretch")
        share = "n/a" if r.share_inside is None else f"{r.share_inside:.0%}"
        # The flag follows the threshold slider; the share itself does not depend on it.
        flagged = r.share_inside is not None and metrics.background_dominated(r.share_inside, threshold)
        col.caption(f"{name}: {share} on the object ({text.escape(r.mask_source)})"
                    + (" · **background-dominated**" if flagged else ""))
