"""Compare: a layer x method grid for one sample from one pass, with faithfulness and bias scores."""
from __future__ import annotations

import contextlib

import streamlit as st

from camcore import detection, methods, metrics, overlay
from ui import (
    boxes,
    compare_grid,
    compare_ranking,
    compare_road,
    compare_studies,
    compute,
    page,
    text,
    urlstate,
    widgets,
)
from ui.sidebar import Selection
from ui.state import Compare


def main(sel: Selection) -> None:
    st.markdown(f"#### Compare layers and methods · {text.escape(sel.label)}")
    s1, s2 = st.columns(2)
    for col, key in zip((s1, s2), compare_studies.STUDIES, strict=True):
        col.button(compare_studies.study_label(key), key=Compare.study(key), on_click=compare_studies.apply_study,
                   args=(key,), width="stretch",
                   help="Sets the model, layers, methods and smoothing, and runs every map at once, slow ones "
                        "included (the time is that of its last run here).")
    compare_studies.show_study_note()
    loaded = page.model_or_message(sel)
    if loaded is None:  # no weights for this model here: one click to untrained ones
        compare_studies.untrained_offer(sel)
        return
    spec = loaded.spec
    shown = page.image_or_message(sel)
    if shown is None:
        return
    img, image_key = shown

    offered = [m.key for m in methods.methods_for(spec.task, spec.family)]
    detector = spec.task == "detection"
    c1, c2, c3 = st.columns([3, 3, 2])
    layer_names = [s.name for s in spec.layers]
    linked_target = urlstate.apply_page(spec, layer_names, offered, Compare.layers(spec.key), Compare.METHODS)
    if linked_target is not None:
        st.session_state[Compare.TARGET_REQUEST] = linked_target
    # Sticky: the choices survive a visit to another page and a run that could not draw them.
    layers = widgets.sticky_multiselect(c1, "Rows: layers", layer_names, [spec.default_layer],
                                        key=Compare.layers(spec.key))
    chosen = widgets.sticky_multiselect(
        c2, "Columns: methods", offered, [methods.DEFAULT_METHOD], key=Compare.METHODS,
        format_func=methods.method_label, help=methods.not_offered(spec.task, spec.family) or None)
    eigen = widgets.shown_toggle(c3, "eigen_smooth", Compare.EIGEN, False)
    aug = widgets.shown_toggle(c3, "aug_smooth (slow)", Compare.AUG, False)
    if not layers or not chosen:
        st.info("Choose at least one layer and one method.")
        return
    with st.spinner("Running the model once for the whole grid…", show_time=True):
        base = compute.explainer(loaded, image_key, img, "top@0" if detector else None, False, sel.input_size)
    box = None
    if detector:  # a detector explains a box (the same picker and URL key as Explore's)
        box, target = boxes.box_picker(c1, base.prediction, sel.dataset, sel.sample_id, urlstate.linked_box(),
                                       key=Compare.BOX, threshold_key=Compare.BOX_THRESHOLD)
    else:
        target = widgets.target_picker(c1, base.prediction, base.class_names, key=Compare.TARGET,
                                       requested=st.session_state.pop(Compare.TARGET_REQUEST, None))
    urlstate.remember_page(layers, chosen, base.class_names[int(target)] if target is not None and not detector
                           else None, box)
    with st.spinner("Running the model…", show_time=True):
        ex = compute.explainer(loaded, image_key, img, target, aug, sel.input_size)
    pairs = [(m, layer) for layer in layers for m in chosen]
    study_done = compare_studies.study_go(ex, pairs, eigen)
    for e in compute.compute(ex, pairs, eigen):
        st.warning(e)

    o1, o2, o3, o4 = st.columns(4)
    alpha = o1.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key=Compare.ALPHA)
    cmap = o2.selectbox("Colormap", overlay.COLORMAPS, key=Compare.CMAP)
    # the scores and the view's ranking measure a class's score: not defined for a box (yet)
    with_scores = not detector and o3.toggle("Faithfulness scores", value=True, key=Compare.SCORES,
                                             help=compare_grid.SCORES_HELP)
    # a short label: a quarter of the page at 1280 px cuts Explore's "Renormalise inside the box"
    renorm = detector and o3.toggle("Renormalise in box", key=Compare.BOX_RENORM,
                                    help="Renormalise inside the box: each map scaled to 0..1 inside each "
                                         "explained box, zero outside.")
    threshold = widgets.sticky(o4.slider, "Background-dominated below", Compare.THRESHOLD,
                               metrics.DEFAULT_BACKGROUND_THRESHOLD, 0.0, 1.0, step=0.05,
                               help="Share of heatmap mass on the object.")
    # the maps first; scores that would take long wait for a go (with their time on the button)
    scores_go = st.session_state.pop(Compare.SCORES_GO, False)
    with st.spinner("Computing the faithfulness scores…", show_time=True) if scores_go else contextlib.nullcontext():
        maps = compute.grid(ex, pairs, eigen, with_scores, None if scores_go else compare_grid.SCORES_AUTO_SECONDS)
    if maps.scores_waiting:
        compare_grid.scores_offer(maps)
    if study_done is not None:
        study_done()
    target_now = maps.result.target
    smoothing = " + ".join(n for n, on in (("aug", aug), ("eigen", eigen)) if on) or "none"
    named = text.escape(target_now.identity_name)
    # a detector's box switch: what it cost (the session's kept forward), as Explore says it
    cost = f" · {boxes.pass_cost(maps.result.timings)}" if detector else ""
    st.caption(f"Every map: target **{named}** ({text.escape(target_now.rule)}) · weights: "
               f"{text.escape(loaded.weights_label)} · smoothing: {smoothing} (eigen only where the method has it) · "
               + ("the explained box drawn over every map" if detector else
                  "object = predicted mask of the target" if maps.mask is not None else
                  "no object mask here (classification: rank the view below with a segmentation or detections field)")
               + cost)
    box_threshold = st.session_state.get(Compare.BOX_THRESHOLD, detection.DEFAULT_THRESHOLD)
    drawn = boxes.to_draw(target_now, maps.result.prediction, box_threshold)
    table = compare_grid.grid(img, maps, loaded, layers, chosen, alpha, cmap, threshold, drawn, renorm)
    road = compare_road.road_controls(maps, table, eigen)
    if road is not None:
        if road.go:
            compare_road.keep_road(road, compute.road(ex, maps.find(*road.choice), compare_road.road_progress(road)))
        compare_road.road_chart(road)
    st.divider()
    if detector:
        st.caption("Faithfulness scores and the view's ranking are for class targets: a detector's box has none yet.")
        return
    _ranking(sel, loaded, chosen, layers, ex.class_names, threshold, maps.result.target.index)


def _ranking(sel: Selection, loaded, chosen, layers, names, threshold: float, default_class: int) -> None:
    """Across the view: the controls, the ranking when asked for, the last ranking."""
    ask = compare_ranking.ranking_controls(sel, loaded, chosen, layers, names, default_class)
    compare_ranking.ranking_interrupted()
    if ask.go:
        compare_ranking.start_ranking()
        bar, progress = compare_ranking.progress_bar()
        rows = compute.rank(loaded, compare_ranking.rank_items(ask), ask.method, ask.layer, ask.cls, threshold,
                            sel.input_size, progress)
        bar.empty()
        compare_ranking.keep_ranking(ask, rows)
    compare_ranking.ranking_results(sel, loaded, ask, threshold)


page.serve("compare", main)
