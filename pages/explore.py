"""Explore: one sample, live heatmaps over layers and methods, push to FiftyOne."""
from __future__ import annotations

from ui import router

router.ensure_routed("explore")

import streamlit as st  # noqa: E402

from camcore import methods  # noqa: E402
from ui import page, render, sidebar, text, urlstate  # noqa: E402


def main() -> None:
    sel = sidebar.current()
    if sel is None:
        st.info("Pick a dataset and a sample in the sidebar.")
        return
    render.page_style()
    st.markdown(f"#### {text.escape(sel.label)}")
    # Data strings as text: names and ids never become markup.
    st.text(f"dataset {sel.dataset} · sample {sel.position + 1:,} of {sel.count:,} · id {sel.sample_id}")

    loaded = page.model_or_message(sel)
    if loaded is None:
        return

    shown = page.image_or_message(sel)
    if shown is None:
        return
    img, image_key = shown
    for note in img.notes:
        st.caption(f"Note: {text.escape(note)}")
    spec = loaded.spec

    base = render.shared_pass(loaded, image_key, img, None, False, sel.input_size,
                              f"Running {spec.key} on the image…")
    if base is None:
        return

    # -- what to compute: one compact row; the fine controls sit beside the map (the fragment)
    offered = methods.methods_for(spec.task, spec.family)
    c1, c2, c3, c4 = st.columns([9, 5, 5, 4])
    layer_names = [s.name for s in spec.layers]
    # A link's layers, methods and target, once per session (unknown ones are said, then defaulted).
    linked_target = urlstate.apply_page(spec, layer_names, [m.key for m in offered], f"layers_{spec.key}",
                                        "methods")
    # Sticky: another model keeps the methods that apply to it, and the way back restores the rest.
    chosen_methods = render.sticky_multiselect(
        c1, "Methods", [m.key for m in offered], [methods.DEFAULT_METHOD], "methods",
        format_func=lambda k: methods.METHODS[k].label + ("  (slow)" if methods.METHODS[k].slow else ""),
        help="(slow) marks methods that run the model once per channel (or more): seconds to minutes on a "
             "CPU. Those estimated over a few seconds wait for your go.",
    )
    chosen_layers = render.sticky_multiselect(c2, "Layers", layer_names, [spec.default_layer],
                                              f"layers_{spec.key}")
    target = render.target_picker(c3, base.prediction, base.class_names, requested=linked_target)
    eigen_smooth = c4.toggle("eigen_smooth", key="eigen_smooth", help="Keep the first principal component.")
    aug_smooth = c4.toggle("aug_smooth (slow)", key="aug_smooth", help="Average over flips and brightness: 6 passes.")
    if not chosen_methods or not chosen_layers:
        st.info("Choose at least one method and one layer.")
        return

    ex = render.shared_pass(loaded, image_key, img, target, aug_smooth, sel.input_size,
                            "Running the model (one forward + backward feeds every method and layer)…")
    if ex is None:
        return
    urlstate.remember_page(chosen_layers, chosen_methods,
                           base.class_names[int(target)] if target is not None else None)
    pairs = [(m, l) for m in chosen_methods for l in chosen_layers]
    # What is cached or fast shows at once; slow heatmaps compute below it, then the page reruns.
    slot = st.container()
    with slot:
        for e in render.compute(ex, pairs, eigen_smooth, "fast"):
            st.warning(e)

    render.heatmaps_fragment(img, ex, loaded, pairs, chosen_layers, chosen_methods, eigen_smooth,
                             f"walk_layer_{spec.key}")
    with st.expander("Samples around this one", expanded=False):
        render.thumbnail_strip(sel)
    render.save_panel(sel, ex, pairs, eigen_smooth)
    with slot:
        for e in render.compute(ex, pairs, eigen_smooth, "slow", rerun=True):
            st.warning(e)


page.run(main)
