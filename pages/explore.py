"""Explore: one sample, live heatmaps over layers and methods, push to FiftyOne."""
from __future__ import annotations

import streamlit as st

from camcore import methods
from ui import boxes, compute, explore_view, page, save_panel, style, text, thumbnails, urlstate, widgets
from ui.sidebar import Selection
from ui.state import Explore


def main(sel: Selection) -> None:
    style.page_style()
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

    detector = spec.task == "detection"
    # A detector's first pass lists every box it finds (any score): the box picker reads it.
    base = compute.shared_pass(loaded, image_key, img, "top@0" if detector else None, False, sel.input_size,
                               f"Running {spec.key} on the image…", slot="prediction")
    if base is None:
        return

    # -- what to compute: one compact row; the fine controls sit beside the map (the fragment)
    offered = methods.methods_for(spec.task, spec.family)
    c1, c2, c3, c4 = st.columns([9, 5, 5, 4])  # Methods wide: five chips keep the map above the fold
    layer_names = [s.name for s in spec.layers]
    # A link's layers, methods and target, once per session (unknown ones are said, then defaulted).
    linked_target = urlstate.apply_page(spec, layer_names, [m.key for m in offered], Explore.layers(spec.key),
                                        Explore.METHODS)
    # Sticky: another model keeps the methods that apply to it, and the way back restores the rest.
    chosen_methods = widgets.sticky_multiselect(
        c1, "Methods", [m.key for m in offered], [methods.DEFAULT_METHOD], Explore.METHODS,
        format_func=methods.method_label,
        help="(slow) marks methods that run the model once per channel (or more): seconds to minutes on a "
             "CPU. Those estimated over a few seconds wait for your go. eigen_smooth keeps the first principal "
             "component of the map; aug_smooth (slow: 6 passes) averages it over flips and brightness. "
             + methods.not_offered(spec.task, spec.family),
    )
    chosen_layers = widgets.sticky_multiselect(c2, "Layers", layer_names, [spec.default_layer],
                                               Explore.layers(spec.key))
    box = None
    if detector:
        box, target = boxes.box_picker(c3, base.prediction, sel.dataset, sel.sample_id, urlstate.linked_box())
    else:
        target = widgets.target_picker(c3, base.prediction, base.class_names, requested=linked_target)
    # pytorch-grad-cam's own option names, without help icons: they read whole in this column at
    # 1280 px (the Methods help explains them)
    eigen_smooth = c4.toggle("eigen_smooth", key=Explore.EIGEN)
    aug_smooth = c4.toggle("aug_smooth", key=Explore.AUG)
    if not chosen_methods or not chosen_layers:
        st.info("Choose at least one method and one layer.")
        return

    ex = compute.shared_pass(loaded, image_key, img, target, aug_smooth, sel.input_size,
                             "Running the model (one forward + backward feeds every method and layer)…")
    if ex is None:
        return
    urlstate.remember_page(chosen_layers, chosen_methods,
                           base.class_names[int(target)] if target is not None and not detector else None, box)
    pairs = [(m, layer) for m in chosen_methods for layer in chosen_layers]
    # What is cached or fast shows at once; slow heatmaps compute below it, then the page reruns.
    slot = st.container()
    with slot:
        for e in compute.compute(ex, pairs, eigen_smooth, "fast"):
            st.warning(e)

    on_screen = compute.shown(ex, pairs, eigen_smooth)
    explore_view.heatmaps_fragment(img, compute.snapshot(ex, pairs, eigen_smooth), loaded, pairs,
                                   chosen_layers, chosen_methods, Explore.walk_layer(spec.key))
    with st.expander("Samples around this one", expanded=False):
        thumbnails.thumbnail_strip(sel)
    save_panel.save_panel(sel, on_screen, pairs)
    with slot:
        for e in compute.compute(ex, pairs, eigen_smooth, "slow", rerun=True):
            st.warning(e)


page.serve("explore", main)
