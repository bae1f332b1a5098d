"""Renderers for the Compare page: the layer x method grid with scores, the studies, the ranking."""
from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
import pandas as pd
import streamlit as st

from camcore import judge, methods, metrics, overlay, store, views
from camcore.engine import Explainer
from camcore.errors import CamError
from camcore.models import LoadedModel
from ui import cache, render, text

MIN_GRID_COLUMNS = 3
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
    """Callback: set the widgets (the sidebar's model included) before the next run draws them."""
    study = STUDIES[key]
    st.session_state["model"] = study["model"]
    st.session_state["cmp_target_request"] = study["target"]
    # Both the widget's state and the copy the page restores it from (render.sticky*): a run that
    # cannot draw them (no weights yet for the study's model) must not lose the study's choice.
    for widget_key, value in ((f"cmp_layers_{study['model']}", study["layers"]), ("cmp_methods", study["methods"]),
                              ("cmp_aug", study["aug"]), ("cmp_eigen", study["eigen"])):
        st.session_state[widget_key] = value
        st.session_state[f"_kept_{widget_key}"] = value
        st.session_state.pop(f"_offered_{widget_key}", None)


def score_line(f: metrics.Faithfulness | None, share: float | None, threshold: float) -> str:
    parts = []
    if f is not None:
        parts.append(f"keep Δ {f.keep_change:+.2f} · remove Δ {f.remove_change:+.2f}")
    if share is not None:
        flag = " · **background-dominated**" if metrics.background_dominated(share, threshold) else ""
        parts.append(f"{share:.0%} on the object{flag}")
    return " · ".join(parts)


def grid(img, ex: Explainer, loaded: LoadedModel, layers, chosen, eigen: bool, alpha: float, cmap: str,
         with_scores: bool, mask, threshold: float) -> list[dict]:
    """Rows = layers, columns = methods; returns the scores table."""
    table = []
    spec = [1] + [3] * max(len(chosen), MIN_GRID_COLUMNS)  # one method must not fill the page
    header = st.columns(spec)
    for col, m in zip(header[1:], chosen):
        col.markdown(f"**{methods.METHODS[m].label}**")
    for layer in layers:
        row = st.columns(spec)
        row[0].markdown(f"**{layer}**")
        for col, m in zip(row[1:], chosen):
            try:
                h = ex.heatmap(m, layer, eigen)
            except CamError as exc:
                col.warning(str(exc))
                continue
            out = overlay.overlay(img.rgb, h.map, alpha, cmap)
            col.image(out if loaded.pretrained else overlay.watermark_untrained(out, outside=True), width="stretch")
            f = ex.faithfulness(m, h.layer, eigen) if with_scores else None
            share = metrics.mass_inside(h.map, mask) if mask is not None else None
            line = score_line(f, share, threshold) or f"{h.seconds:.2f} s"
            col.caption(("**blank map** (zero everywhere) · " if h.blank else "") + line)
            table.append({"method": m, "layer": h.layer, "keep Δ": f.keep_change if f else np.nan,
                          "remove Δ": f.remove_change if f else np.nan,
                          "share on object": share if share is not None else np.nan})
    return table


def road_panel(ex: Explainer, table: list[dict], eigen: bool) -> None:
    if not table:
        return
    with st.expander("ROAD curve (slower: a sparse imputation per point)"):
        options = [(r["method"], r["layer"]) for r in table]
        choice = st.selectbox("Heatmap", options, format_func=lambda o: f"{methods.METHODS[o[0]].label} · {o[1]}",
                              key="road_choice")
        # The curve stays on screen (other widgets rerun the page) while it is about this heatmap.
        about = (ex.model.spec.key, ex.model.weights_label, ex.image.path, ex.target.index, ex.aug_smooth,
                 ex.input_hw, choice, eigen)
        # A callback, not the return value: a click survives the router's one rerun.
        st.button("Compute ROAD", key="road_go", on_click=render.request, args=(ROAD_REQUESTED,))
        if st.session_state.pop(ROAD_REQUESTED, False):
            with st.spinner("ROAD: removing pixels most / least relevant first…", show_time=True):
                h = ex.heatmap(choice[0], choice[1], eigen)
                st.session_state["road_curve"] = (about, metrics.road(ex.model, ex.x, h.map, ex.grad_target))
        kept = st.session_state.get("road_curve")
        if kept is not None and kept[0] == about:
            curve = kept[1]
            df = pd.DataFrame({"percentile": [p for p, _ in curve.morf],
                               "most relevant first": [v for _, v in curve.morf],
                               "least relevant first": [v for _, v in curve.lerf]}).set_index("percentile")
            st.line_chart(df, height=220, x_label="pixels removed (percentile)", y_label="target score change",
                          color=["#d62728", "#1f77b4"])
            st.caption(f"ROAD combined (LeRF − MoRF)/2 = {curve.combined:+.3f} — higher is more faithful.")


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
                             help=f"The label in {field!r} that marks the {cls!r} objects.")
        if label is None:
            st.info(f"No label in {field!r} names {cls!r}: choose under 'Object label' which label marks "
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
        st.info(f"The last ranking was for {ranked['what']}; the settings above have changed since. "
                "Press Rank to rank for them.")
        return
    rows = ranked["rows"]
    st.caption(f"Ranked for **{what}**, worst first; flagged below {threshold:.0%} on the object.")
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

