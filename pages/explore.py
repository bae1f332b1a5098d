"""Explore: one sample, live heatmaps over layers and methods, push to FiftyOne."""
from __future__ import annotations

from ui import router

router.ensure_routed("explore")

import streamlit as st  # noqa: E402

from camcore import methods  # noqa: E402
from ui import cache, page, render, sidebar, text, urlstate  # noqa: E402


def main() -> None:
    sel = sidebar.current()
    if sel is None:
        st.info("Pick a dataset and a sample in the sidebar.")
        return
    st.markdown(f"#### {text.escape(sel.label)}")
    # Data strings as text: names and ids never become markup.
    st.text(f"dataset {sel.dataset} · sample {sel.position + 1:,} of {sel.count:,} · id {sel.sample_id}")
    with st.expander("Samples around this one", expanded=False):
        render.thumbnail_strip(sel)

    loaded = page.model_or_message(sel)
    if loaded is None:
        return

    shown = page.image_or_message(sel)
    if shown is None:
        return
    img, image_key = shown
    for note in img.notes:
        st.caption(f"Note: {note}")
    spec = loaded.spec

    with st.spinner(f"Running {spec.key} on the image…", show_time=True):
        base = cache.explainer(loaded, image_key, img, None, False, sel.input_size)

    # -- how to look
    offered = methods.methods_for(spec.task, spec.family)
    c1, c2, c3 = st.columns([3, 3, 2])
    layer_names = [s.name for s in spec.layers]
    # A link's layers, methods and target, once per session (unknown ones are said, then defaulted).
    linked_target = urlstate.apply_page(spec, layer_names, [m.key for m in offered], f"layers_{spec.key}",
                                        "methods")
    target = render.target_picker(c1, base.prediction, base.class_names, requested=linked_target)
    # Sticky: another model keeps the methods that apply to it, and the way back restores the rest.
    chosen_methods = render.sticky_multiselect(
        c2, "Methods", [m.key for m in offered], [methods.DEFAULT_METHOD], "methods",
        format_func=lambda k: methods.METHODS[k].label + ("  (slow)" if methods.METHODS[k].slow else ""),
        help="(slow) marks methods that run the model once per channel (or more): seconds to minutes on a CPU.",
    )
    chosen_layers = render.sticky_multiselect(c1, "Layers", layer_names, [spec.default_layer],
                                              f"layers_{spec.key}")
    eigen_smooth = c3.toggle("eigen_smooth", key="eigen_smooth", help="Keep the first principal component.")
    aug_smooth = c3.toggle("aug_smooth (slow)", key="aug_smooth", help="Average over flips and brightness: 6 passes.")
    if not chosen_methods or not chosen_layers:
        st.info("Choose at least one method and one layer.")
        return

    w1, w2 = st.columns(2)
    for key, options in ((f"walk_layer_{spec.key}", chosen_layers), ("walk_method", chosen_methods)):
        if st.session_state.get(key) not in options:  # a layer or method just taken out of the selection
            st.session_state.pop(key, None)
    # Walk the chosen layers only: the map on screen is always one that Push and a finding cover.
    walk_layer = (w1.select_slider("Walk the layers", chosen_layers, key=f"walk_layer_{spec.key}")
                  if len(chosen_layers) > 1 else chosen_layers[0])
    walk_method = (w2.select_slider("Walk the methods", chosen_methods, key="walk_method",
                                    format_func=lambda k: methods.METHODS[k].label)
                   if len(chosen_methods) > 1 else chosen_methods[0])

    with st.spinner("Running the model (one forward + backward feeds every method and layer)…", show_time=True):
        ex = cache.explainer(loaded, image_key, img, target, aug_smooth, sel.input_size)
    urlstate.remember_page(chosen_layers, chosen_methods,
                           base.class_names[int(target)] if target is not None else None)
    pairs = [(m, l) for m in chosen_methods for l in chosen_layers]
    errors = render.compute(ex, pairs, eigen_smooth)
    for e in errors:
        st.warning(e)

    render.heatmaps_fragment(img, ex, loaded, pairs, (walk_method, walk_layer), eigen_smooth)
    render.save_panel(sel, ex, pairs, eigen_smooth)


page.run(main)
