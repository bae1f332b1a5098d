"""Compare: a layer x method grid for one sample from one pass, with faithfulness and bias scores."""
from __future__ import annotations

from ui import router

router.ensure_routed("compare")

import streamlit as st  # noqa: E402

from camcore import methods, metrics, overlay  # noqa: E402
from ui import cache, compare, page, render, sidebar, text, urlstate  # noqa: E402


def main() -> None:
    sel = sidebar.current()
    if sel is None:
        st.info("Pick a dataset and a sample in the sidebar.")
        return
    st.markdown(f"#### Compare layers and methods · {text.escape(sel.label)}")
    s1, s2 = st.columns(2)
    for col, key in zip((s1, s2), compare.STUDIES):
        col.button(compare.STUDIES[key]["label"], key=f"study_{key}", on_click=compare.apply_study, args=(key,),
                   width="stretch")
    compare.show_study_note()
    loaded = page.model_or_message(sel)
    if loaded is None:  # no weights for this model here: one click to untrained ones
        compare.untrained_offer(sel)
        return
    spec = loaded.spec
    shown = page.image_or_message(sel)
    if shown is None:
        return
    img, image_key = shown

    offered = [m.key for m in methods.methods_for(spec.task, spec.family)]
    c1, c2, c3 = st.columns([3, 3, 2])
    layer_names = [s.name for s in spec.layers]
    linked_target = urlstate.apply_page(spec, layer_names, offered, f"cmp_layers_{spec.key}", "cmp_methods")
    if linked_target is not None:
        st.session_state["cmp_target_request"] = linked_target
    # Sticky: the choices survive a visit to another page and a run that could not draw them.
    layers = render.sticky_multiselect(c1, "Rows: layers", layer_names, [spec.default_layer],
                                       key=f"cmp_layers_{spec.key}")
    chosen = render.sticky_multiselect(
        c2, "Columns: methods", offered, [methods.DEFAULT_METHOD], key="cmp_methods",
        format_func=lambda k: methods.METHODS[k].label + ("  (slow)" if methods.METHODS[k].slow else ""))
    eigen = compare.shown_toggle(c3, "eigen_smooth", "cmp_eigen", False)
    aug = compare.shown_toggle(c3, "aug_smooth (slow)", "cmp_aug", False)
    if not layers or not chosen:
        st.info("Choose at least one layer and one method.")
        return
    with st.spinner("Running the model once for the whole grid…", show_time=True):
        base = cache.explainer(loaded, image_key, img, None, False, sel.input_size)
    target = render.target_picker(c1, base.prediction, base.class_names, key="cmp_target",
                                  requested=st.session_state.pop("cmp_target_request", None))
    urlstate.remember_page(layers, chosen, base.class_names[int(target)] if target is not None else None)
    with st.spinner("Running the model…", show_time=True):
        ex = cache.explainer(loaded, image_key, img, target, aug, sel.input_size)
    for e in render.compute(ex, [(m, layer) for layer in layers for m in chosen], eigen):
        st.warning(e)

    o1, o2, o3, o4 = st.columns(4)
    alpha = o1.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="cmp_alpha")
    cmap = o2.selectbox("Colormap", overlay.COLORMAPS, key="cmp_cmap")
    with_scores = o3.toggle("Faithfulness scores", value=True, key="cmp_scores", help=compare.SCORES_HELP)
    threshold = render.sticky(o4.slider, "Background-dominated below", "cmp_threshold",
                              metrics.DEFAULT_BACKGROUND_THRESHOLD, 0.0, 1.0, step=0.05,
                              help="Share of heatmap mass on the object.")
    mask = None
    if ex.prediction.task == "segmentation":
        mask = ex.prediction.mask == ex.target.index
        mask = mask if mask.any() else None
    smoothing = " + ".join(n for n, on in (("aug", aug), ("eigen", eigen)) if on) or "none"
    st.caption(f"Every map: target **{text.escape(ex.target.name)}** ({text.escape(ex.target.rule)}) · weights: "
               f"{text.escape(loaded.weights_label)} · smoothing: {smoothing} (eigen only where the method has it) · "
               + ("object = predicted mask of the target" if mask is not None else
                  "no object mask here (classification: rank the view below with a segmentation or detections field)"))
    table = compare.grid(img, ex, loaded, layers, chosen, eigen, alpha, cmap, with_scores, mask, threshold)
    compare.road_panel(ex, table, eigen)
    st.divider()
    compare.ranking_panel(sel, loaded, chosen, layers, ex.class_names, threshold, ex.target.index)


page.run(main)
