"""Renderers for the Compare page: the layer x method grid with scores, the studies, the ranking."""
from __future__ import annotations

import os
import re

import fiftyone as fo
import numpy as np
import pandas as pd
import streamlit as st
from fiftyone import ViewField as F

from camcore import judge, methods, metrics, overlay, store, views
from camcore.engine import Explainer
from camcore.errors import CamError, StoreError
from camcore.models import LoadedModel
from ui import cache, render, sidebar, text

CELLS_PER_LINE = 4  # maps side by side in a row; more wrap to the next line (>= 150 px at 1280 px wide)
ROW_LABEL_PX = 120  # fixed width of a row's label ("block11", "layer4" never wrap letter by letter)
STUDY_NOTE = "cmp_study_note"  # what the last study did about the sample (shown once)
ENLARGE = "cmp_enlarge"  # the (method, layer) to show full size, set by a cell's Enlarge button
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


def apply_study(key: str) -> None:
    """Callback: set the widgets (the sidebar's model and weights, the sample) before the next run
    draws them, so that every widget shows what the study computes."""
    study = STUDIES[key]
    previous_weights = st.session_state.get("weights_choice")
    st.session_state["model"] = study["model"]
    st.session_state["cmp_target_request"] = study["target"]
    # An explicit untrained choice stays: the sidebar restores each model's own weights choice
    # (pretrained by default), which offline fails for the study's model.
    if previous_weights == sidebar.WEIGHTS_UNTRAINED:
        st.session_state.setdefault("_weights_by_model", {})[study["model"]] = sidebar.WEIGHTS_UNTRAINED
    # Both the widget's state and the copy the page restores it from (render.sticky*): a run that
    # cannot draw them (no weights yet for the study's model) must not lose the study's choice.
    for widget_key, value in ((f"cmp_layers_{study['model']}", study["layers"]), ("cmp_methods", study["methods"]),
                              ("cmp_aug", study["aug"]), ("cmp_eigen", study["eigen"])):
        st.session_state[widget_key] = value
        st.session_state[f"_kept_{widget_key}"] = value
        st.session_state.pop(f"_offered_{widget_key}", None)  # render.sticky_multiselect: set it again
    for widget_key in ("cmp_aug", "cmp_eigen"):  # shown_toggle: wins over the browser's old value
        st.session_state[f"_set_{widget_key}"] = st.session_state[widget_key]
    st.session_state.pop(STUDY_NOTE, None)
    sel = sidebar.current()
    if study["target"] and sel is not None:
        st.session_state[STUDY_NOTE] = _open_sample_with(sel, study["target"])


def _open_sample_with(sel, class_name: str) -> tuple[str, str]:
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
    fields = store.label_fields(view)
    if not fields:
        return None
    pattern = "^" + re.escape(class_name.strip()) + "$"
    try:
        matching = view.match_labels(filter=F("label").re_match(pattern, options="i"), fields=fields)
        if prefer and matching.select(prefer).count():
            return prefer
        ids = matching.limit(1).values("id")
    except Exception as exc:  # a database error: said at the UI edge
        raise StoreError(f"query on the view failed: {exc}") from exc
    return ids[0] if ids else None


def show_study_note() -> None:
    note = st.session_state.pop(STUDY_NOTE, None)
    if note:
        kind, message = note
        (st.warning if kind == "warning" else st.info)(text.escape(message), icon=":material/travel_explore:")


def use_untrained(model_key: str) -> None:
    """Callback of "use untrained weights": the sidebar's Weights for this model, untrained."""
    st.session_state["weights_choice"] = sidebar.WEIGHTS_UNTRAINED
    st.session_state.setdefault("_weights_by_model", {})[model_key] = sidebar.WEIGHTS_UNTRAINED


def untrained_offer(sel) -> None:
    """No weights for the sidebar's model: one button that switches to untrained weights."""
    st.button("Use untrained weights", key="use_untrained", icon=":material/shuffle:", type="primary",
              on_click=use_untrained, args=(sel.model,),
              help="Random weights, labelled UNTRAINED on every map: the mechanics of each method, not what "
                   "a trained model looks at.")


def shown_toggle(container, label: str, key: str, default: bool, **kwargs) -> bool:
    """A keyed toggle whose switch always shows the value the page computes with.

    A study sets the value in a callback, and the next run may not draw the switch (no weights
    for the study's model yet). The browser keeps the switch's old value meanwhile and sends it
    back with the next click (on "use untrained weights", say), which would silently undo the
    study; and Streamlit only tells the browser a value set in the same run that draws the widget.
    So a value set for the widget (`_set_<key>`, see apply_study) waits until a run draws it and
    then wins over what the browser sent; and the value is set again on every run, before the
    widget, so the browser always shows it."""
    kept_key, pending_key = f"_kept_{key}", f"_set_{key}"
    if pending_key in st.session_state:
        value = st.session_state.pop(pending_key)
    else:
        value = st.session_state.get(key, st.session_state.get(kept_key, default))
    st.session_state[key] = bool(value)
    value = container.toggle(label, key=key, **kwargs)
    st.session_state[kept_key] = value
    return value


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


def smoothing(h) -> str:
    """What smoothing made this map (the map's own flags: Eigen-CAM has no eigen_smooth)."""
    parts = [name for name, on in (("aug", h.aug_smooth), ("eigen", h.eigen_smooth)) if on]
    return " + ".join(parts) + " smoothing" if parts else "no smoothing"


def made_with(h, loaded: LoadedModel) -> str:
    """Method · layer · smoothing · weights · target: how one map was made (plain text)."""
    weights = "pretrained" if loaded.pretrained else "UNTRAINED"
    return (f"{methods.METHODS[h.method].label} · {h.layer} · {smoothing(h)} · {weights} weights · "
            f"target {h.target.name}")


def _lines(cells: list) -> tuple[list[list], int]:
    per_line = min(CELLS_PER_LINE, max(len(cells), 2))  # one map alone must not fill the page
    return [cells[i:i + per_line] for i in range(0, len(cells), per_line)], per_line


def grid(img, ex: Explainer, loaded: LoadedModel, layers, chosen, eigen: bool, alpha: float, cmap: str,
         with_scores: bool, mask, threshold: float) -> list[dict]:
    """Rows = layers, maps = methods (or, for one method, one row of layers: the layer study uses
    the width); a row wraps after CELLS_PER_LINE maps. Returns the scores table."""
    table = []
    transpose = len(chosen) == 1 and len(layers) > 1
    rows = [(methods.METHODS[chosen[0]].label, [(chosen[0], layer) for layer in layers])] if transpose else \
        [(layer, [(m, layer) for m in chosen]) for layer in layers]
    for row_label, cells in rows:
        row = st.container(horizontal=True, gap="small", key=f"cmp_row_{row_label}")
        row.container(width=ROW_LABEL_PX).markdown(f"**{text.escape(row_label)}**")
        maps = row.container()
        lines, per_line = _lines(cells)
        for line in lines:
            for col, (m, layer) in zip(maps.columns(per_line), line):
                # The header names what varies along the row: the layer (one method), else the method.
                header = layer if transpose else methods.METHODS[m].label
                entry = _cell(col, header, img, ex, loaded, m, layer, eigen, alpha, cmap, with_scores, mask,
                              threshold)
                if entry is not None:
                    table.append(entry)
    enlarged = st.session_state.pop(ENLARGE, None)
    if enlarged is not None and ex.is_cached(enlarged[0], enlarged[1], eigen):
        _enlarged_dialog(img, ex, loaded, *enlarged, eigen, alpha, cmap, with_scores, mask, threshold)
    return table


def _enlarge(method: str, layer: str) -> None:
    st.session_state[ENLARGE] = (method, layer)


def _cell(col, header: str, img, ex: Explainer, loaded: LoadedModel, m: str, layer: str, eigen: bool,
          alpha: float, cmap: str, with_scores: bool, mask, threshold: float) -> dict | None:
    col.markdown(f"**{text.escape(header)}**")
    try:
        h = ex.heatmap(m, layer, eigen)
    except CamError as exc:
        col.warning(text.escape(exc))
        return None
    out = overlay.overlay(img.rgb, h.map, alpha, cmap)
    col.image(out if loaded.pretrained else overlay.watermark_untrained(out, outside=True), width="stretch",
              caption=text.escape(made_with(h, loaded)))
    f = ex.faithfulness(m, h.layer, eigen) if with_scores else None
    share = metrics.mass_inside(h.map, mask) if mask is not None else None
    line = score_line(f, share, threshold) or f"{h.seconds:.2f} s"
    col.caption(("**blank map** (zero everywhere) · " if h.blank else "") + line,
                help=SCORES_HELP if f is not None else None)
    col.button("Enlarge", key=f"enlarge_{m}_{h.layer}", icon=":material/open_in_full:", type="tertiary",
               on_click=_enlarge, args=(m, layer), help="Show this map full size")
    keep, remove = (f.keep_relative, f.remove_relative) if f else (None, None)
    return {"method": m, "layer": h.layer,
            "keep (share of the score)": np.nan if keep is None else keep,
            "remove (share of the score)": np.nan if remove is None else remove,
            "share on object": share if share is not None else np.nan}


@st.dialog("Heatmap", width="large")
def _enlarged_dialog(img, ex: Explainer, loaded: LoadedModel, m: str, layer: str, eigen: bool, alpha: float,
                     cmap: str, with_scores: bool, mask, threshold: float) -> None:
    h = ex.heatmap(m, layer, eigen)
    out = overlay.overlay(img.rgb, h.map, alpha, cmap)
    st.image(out if loaded.pretrained else overlay.watermark_untrained(out, outside=True), width="stretch",
             caption=text.escape(made_with(h, loaded) + f" · weights: {loaded.weights_label}"))
    f = ex.faithfulness(m, h.layer, eigen) if with_scores else None
    share = metrics.mass_inside(h.map, mask) if mask is not None else None
    line = score_line(f, share, threshold)
    if line:
        st.caption(line, help=SCORES_HELP if f is not None else None)
    if h.blank:
        st.warning(h.BLANK_NOTE[0].upper() + h.BLANK_NOTE[1:] + ".")


ROAD_OPEN = "road_open"  # the ROAD expander's open state (kept: it stays open when its curve is ready)


def _request_road() -> None:
    st.session_state[ROAD_REQUESTED] = True
    st.session_state[ROAD_OPEN] = True


def road_panel(ex: Explainer, table: list[dict], eigen: bool) -> None:
    if not table:
        return
    # Keyed and stateful: it stays open (or closed) across reruns, whatever is drawn above it.
    with st.expander("ROAD curve (slower: a sparse imputation per point)", key=ROAD_OPEN, on_change="rerun"):
        options = [(r["method"], r["layer"]) for r in table]
        choice = st.selectbox("Heatmap", options, format_func=lambda o: f"{methods.METHODS[o[0]].label} · {o[1]}",
                              key="road_choice")
        # The curve stays on screen (other widgets rerun the page) while it is about this heatmap.
        about = (ex.model.spec.key, ex.model.weights_label, ex.image.path, ex.target.index, ex.aug_smooth,
                 ex.input_hw, choice, eigen)
        # A callback, not the return value: a click survives the router's one rerun.
        st.button("Compute ROAD", key="road_go", on_click=_request_road)
        chart = st.empty()  # one place: the progress, then the curve (no stale copy beside it)
        if st.session_state.pop(ROAD_REQUESTED, False):
            st.session_state.pop("road_curve", None)
            h = ex.heatmap(choice[0], choice[1], eigen)
            with chart.container():
                bar = st.progress(0.0, text="ROAD: removing the most / least relevant pixels first…")
                curve = metrics.road(ex.model, ex.x, h.map, ex.grad_target,
                                     progress=lambda f, msg: bar.progress(min(1.0, f), text=f"ROAD · {msg}"))
            st.session_state["road_curve"] = (about, curve)
        kept = st.session_state.get("road_curve")
        if kept is not None and kept[0] == about:
            curve = kept[1]
            morf, lerf = curve.relative(curve.morf), curve.relative(curve.lerf)
            relative = all(v is not None for _, v in morf + lerf)
            def pick(rel, raw):  # percent of the original score where there is one, else raw changes
                return [100 * v for _, v in rel] if relative else [v for _, v in raw]

            df = pd.DataFrame({"percentile": [p for p, _ in curve.morf],
                               "most relevant first": pick(morf, curve.morf),
                               "least relevant first": pick(lerf, curve.lerf)}).set_index("percentile")
            with chart.container():
                st.line_chart(df, height=320, x_label="pixels removed (percentile)",
                              y_label="score change (% of original)" if relative else "score change",
                              color=["#d62728", "#1f77b4"])
                st.caption(f"ROAD combined (LeRF − MoRF)/2 = {curve.combined:+.3f}: higher is more faithful.",
                           help="Removing the most relevant pixels first (MoRF) should drop the score fast; "
                                "removing the least relevant first (LeRF) should keep it.")


RANK_REQUESTED, ROAD_REQUESTED = "rank_requested", "road_requested"
RANK_DEFAULT = 50  # samples ranked unless the user asks for more (each one is a model pass)
RANK_PAGE = 16  # ranked samples shown per page



def ranking_panel(sel, loaded: LoadedModel, chosen, layers, names, threshold: float, default_class: int) -> None:
    st.markdown("#### Across the view: where does the model look for one class?")
    c1, c2, c3, c4 = st.columns(4)
    # The class follows the sample's target until the user picks another one.
    class_key, default_key = f"rank_class_{loaded.spec.key}", f"_default_rank_class_{loaded.spec.key}"
    if st.session_state.get(class_key) in (None, st.session_state.get(default_key)):
        st.session_state[class_key] = names[default_class]
    st.session_state[default_key] = names[default_class]
    cls = c1.selectbox("Class", list(names), key=class_key)
    method = c2.selectbox("Method", chosen, format_func=lambda k: methods.METHODS[k].label, key="rank_method")
    layer = c3.selectbox("Layer", layers, key="rank_layer")
    dataset = store.load_dataset(sel.dataset)
    # The sidebar's view itself (stages), its first N samples: each one costs a model pass.
    limit = int(c4.number_input("Samples to rank", 1, max(1, sel.count), min(sel.count, RANK_DEFAULT),
                                key="rank_limit", help=f"The first N of the {sel.count:,} samples in the "
                                                       "sidebar's view (its order: sort it to choose which)."))
    view = sel.view().limit(limit)
    boxes, masks = {}, {}
    # Where the object is: ground-truth masks or boxes from the dataset, or (segmentation models)
    # the model's own predicted mask.
    mask_fields = store.segmentation_fields(dataset)
    sources = list(mask_fields)
    if loaded.spec.task == "classification":
        sources += [f for f in store.label_fields(dataset)
                    if getattr(dataset.get_field(f), "document_type", None) is fo.Detections]
    fallback = "the predicted mask" if loaded.spec.task == "segmentation" else None
    field = c4.selectbox("Object from", [fallback] + sources, key=f"rank_object_{loaded.spec.key}",
                         index=1 if sources and fallback is None else 0,
                         format_func=lambda f: "(no object labels)" if f is None else f)
    if field and field != fallback:
        is_mask = field in mask_fields
        labels = store.segmentation_labels(dataset, field) if is_mask else store.label_values(dataset, field)
        # Preselect only a label that names the class; else ask (an unrelated default would score
        # the heatmaps against the wrong objects). The default follows the class.
        label_key = f"rank_object_label_{field}"
        guess = judge.match_object_label(labels, cls)
        if st.session_state.get(f"_class_for_{label_key}") != cls:
            st.session_state[label_key] = None if guess is None else labels[guess]
            st.session_state[f"_class_for_{label_key}"] = cls
        label = c4.selectbox("Object label", labels, index=None, key=label_key,
                             placeholder="choose the object's label",
                             help=text.escape(f"The label in {field!r} that marks the {cls!r} objects."))
        if label is None:
            st.info(f"No label in {text.escape(repr(field))} names {text.escape(repr(cls))}: choose under 'Object label' which label marks "
                    "its objects, then rank.")
        elif is_mask:
            masks = store.segmentation_masks_by_sample(view, field, label)
        else:
            boxes = store.boxes_by_sample(view, field, label)
    waiting = bool(field and field != fallback and label is None)
    # A callback, not the return value: a click survives the router's one rerun (router.ensure_routed).
    st.button(f"Rank {limit:,} samples", key="rank_go", on_click=render.request, args=(RANK_REQUESTED,), disabled=waiting,
              help="Choose the object's label first." if waiting else None)
    # What a ranking is about: rows ranked under other settings are never shown as this one's.
    what = f"{cls} · {methods.METHODS[method].label} · {layer} · object from " + (
        f"{field} = {label}" if field and field != fallback else (fallback or "no object labels"))
    context = (sel.dataset, sel.view_spec, limit, loaded.spec.key, loaded.weights_label, sel.input_size, what)
    if st.session_state.pop(RANK_REQUESTED, False):
        items = [judge.SampleItem(i, p, tuple(tuple(b) for b in boxes.get(i, ())), masks.get(i))
                 for i, p in zip(*view.values(["id", "filepath"]))]
        bar = st.progress(0.0)
        rows = judge.rank_by_share_inside(loaded, items, method, layer, cls, threshold, sel.input_size,
                                          progress=lambda f, msg: bar.progress(f, text=msg))
        bar.empty()
        st.session_state["rank_rows"] = {"context": context, "what": what, "rows": rows}
    ranked = st.session_state.get("rank_rows")
    if not ranked:
        return
    if ranked["context"] != context:
        st.info(f"The last ranking was for {text.escape(ranked['what'])}; the settings above have changed since. "
                "Press Rank to rank for them.")
        return
    rows = ranked["rows"]
    st.caption(f"Ranked for **{text.escape(what)}**, worst first; flagged below {threshold:.0%} on the object.")
    pages = max(1, -(-len(rows) // RANK_PAGE))
    shown = st.number_input(f"Page (of {pages}, {RANK_PAGE} a page)", 1, pages, 1, key="rank_page") if pages > 1 else 1
    folder = cache.common_folder(sel.dataset)
    cols = st.columns(4)
    for i, r in enumerate(rows[(shown - 1) * RANK_PAGE:shown * RANK_PAGE]):
        col = cols[i % 4]
        name = text.escape(views.relative_label(r.filepath, folder))
        if r.heatmap is None:
            col.caption(f"{name}: {text.escape(r.error)}")
            continue
        img = cache.image(r.filepath, os.path.getmtime(r.filepath))
        out = overlay.overlay(img.rgb, r.heatmap.map, 0.5, "jet")
        col.image(out if loaded.pretrained else overlay.watermark_untrained(out, outside=True), width="stretch")
        share = "n/a" if r.share_inside is None else f"{r.share_inside:.0%}"
        # The flag follows the threshold slider; the share itself does not depend on it.
        flagged = r.share_inside is not None and metrics.background_dominated(r.share_inside, threshold)
        col.caption(f"{name}: {share} on the object ({r.mask_source})"
                    + (" · **background-dominated**" if flagged else ""))

