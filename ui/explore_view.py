"""Renderers for the Explore page: the main map with its fine controls, the grid, the prediction.
They draw from frozen results (compute.Shown, Heatmap) and never compute."""
from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from camcore import detection, methods, overlay
from camcore.images import LoadedImage
from camcore.models import LoadedModel
from camcore.results import Heatmap
from ui import boxes as boxes_mod
from ui import chips, text
from ui.compute import Shown, pair_label
from ui.state import Explore

GRID_COLUMNS = 4
MAX_DRAWN, MAX_CAPTIONED = 30, 12  # a detector's other boxes drawn, and written on


def caption(h: Heatmap, weights: str | None = None) -> str:
    """Method · layer · target (· smoothing) (· weights, for the main view; the grid omits them)."""
    m = methods.METHODS[h.method].label
    smooth = "".join([" · aug" if h.aug_smooth else "", " · eigen" if h.eigen_smooth else ""])
    blank = " · BLANK (zero everywhere)" if h.blank else ""
    box = f" [{h.target.box_ref}]" if h.target.box_ref else ""
    return f"{m} · {h.layer} · {h.target.name}{box}{smooth}{blank}" + (f" · {weights}" if weights else "")


def overlay_image(img: LoadedImage, h: Heatmap, alpha: float, cmap: str, pretrained: bool,
                  boxes: list | None = None, renormalise: bool = False):
    """The map over the image; a detector's boxes drawn on top (overlay.draw_boxes), the map
    renormalised inside the explained boxes when asked."""
    m = detection.renormalise_in_boxes(h.map, h.target.boxes) if renormalise and h.target.boxes else h.map
    out = overlay.overlay(img.rgb, m, alpha, cmap)
    if boxes:
        out = overlay.draw_boxes(out, boxes)
    return out if pretrained else overlay.watermark_untrained(out, outside=True)


def drawn_boxes(shown: Shown) -> list:
    """A detector's boxes to draw over Explore's maps (ui/boxes.to_draw), at the picker's threshold."""
    result = shown.result
    if result.prediction.task != "detection":
        return []
    threshold = float(st.session_state.get(Explore.BOX_THRESHOLD, detection.DEFAULT_THRESHOLD))
    return boxes_mod.to_draw(result.target, result.prediction, threshold, MAX_DRAWN, MAX_CAPTIONED)


def blank_warning(h: Heatmap) -> str:
    return h.BLANK_NOTE[0].upper() + h.BLANK_NOTE[1:] + "."


def prediction_panel(container, img: LoadedImage, shown: Shown, loaded: LoadedModel) -> None:
    """The image with what the model predicts: the mask and its classes, or the top-5 chart."""
    result = shown.result
    pred = result.prediction
    if pred.task == "segmentation":
        mask_img = overlay.segmentation_overlay(img.rgb, pred.mask, 0.55, len(shown.class_names))
        container.image(mask_img if loaded.pretrained else overlay.watermark_untrained(mask_img, outside=True),
                        caption="predicted mask" + ("" if loaded.pretrained else " · UNTRAINED"), width="stretch")
        found = chips.class_chips(pred.classes, overlay.palette(len(shown.class_names)))
        container.markdown("**Classes found** (share of pixels)" + chips.untrained_chip(loaded.pretrained)
                           + "<br>" + found, unsafe_allow_html=True)
    elif pred.task == "classification":
        container.image(img.rgb, caption="input image", width="stretch")
        df = pd.DataFrame({"class": [c.name for c in pred.classes], "probability": [c.score for c in pred.classes]})
        container.markdown("**Top-5 prediction**")
        # A table with in-cell bars: long ImageNet names and the percentages are never clipped.
        container.dataframe(df, hide_index=True, width="stretch", column_config={
            "class": st.column_config.TextColumn("class"),
            "probability": st.column_config.ProgressColumn("probability", format="percent", min_value=0.0,
                                                           max_value=1.0)})
    t = result.target
    if pred.task == "detection":
        threshold = float(st.session_state.get(Explore.BOX_THRESHOLD, detection.DEFAULT_THRESHOLD))
        listed = [d for d in pred.boxes if d.score >= threshold]
        df = pd.DataFrame({"#": [d.index for d in listed], "label": [d.name for d in listed],
                           "score": [round(d.score, 3) for d in listed],
                           "box (x1, y1, x2, y2)": [", ".join(f"{v:.0f}" for v in d.box) for d in listed]})
        container.markdown(f"**Detections** at score ≥ {threshold:g}: {len(listed)} of {len(pred.boxes)}")
        container.dataframe(df, hide_index=True, width="stretch", column_config={
            "label": st.column_config.TextColumn("label")})
        extra = f" · score {t.score:.2f}" if t.score is not None else ""
        extra += f" · IoU {t.iou:.2f}" if t.iou is not None and t.iou < 1 else ""
        container.markdown(f"**Box:** {text.escape(t.name)} · {text.escape(t.box_ref)}{extra} "
                           f"({text.escape(t.rule)})")
    note = f" — _{text.escape(t.note)}_" if t.note else ""
    if pred.task != "detection":
        container.markdown(f"**Target:** {text.escape(t.name)} ({t.rule}){note}")
    height, width = result.input_size
    cost = boxes_mod.pass_cost(result.timings)  # another box of this image: the kept forward served it
    container.caption(f"weights: {text.escape(loaded.weights_label)} · input {width}×{height} · {cost}")


def _walk_controls(side, chosen_layers: list[str], chosen_methods: list[str], layers_key: str):
    """Walk the chosen layers and methods (the map on screen is always one that Push and a
    finding cover), opacity, colormap, raw map: (layer, method, alpha, cmap, show_raw)."""
    for key, options in ((layers_key, chosen_layers), (Explore.WALK_METHOD, chosen_methods)):
        if st.session_state.get(key) not in options:  # a layer or method just taken out of the selection
            st.session_state.pop(key, None)
    walk_layer = (side.select_slider("Walk the layers", chosen_layers, key=layers_key)
                  if len(chosen_layers) > 1 else chosen_layers[0])
    walk_method = (side.select_slider("Walk the methods", chosen_methods, key=Explore.WALK_METHOD,
                                      format_func=lambda k: methods.METHODS[k].label)
                   if len(chosen_methods) > 1 else chosen_methods[0])
    alpha = side.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=Explore.ALPHA)
    f1, f2 = side.columns(2, vertical_alignment="bottom")
    cmap = f1.selectbox("Colormap", overlay.COLORMAPS, key=Explore.COLORMAP)
    show_raw = f2.toggle("Raw map", key=Explore.SHOW_RAW, help="The map on its own, with its colour bar.")
    return walk_layer, walk_method, alpha, cmap, show_raw


@st.fragment
def heatmaps_fragment(img: LoadedImage, snapshot: Callable[[], Shown | None], loaded: LoadedModel,
                      pairs: list[tuple[str, str]], chosen_layers: list[str], chosen_methods: list[str],
                      layers_key: str) -> None:
    """The main map with the fine controls beside it (walk, opacity, colormap, raw map), then the
    grid. Everything here redraws alone: the model never reruns for it. `snapshot` reads the maps
    computed so far (never computes): a fragment rerun replays its arguments from the last full
    run, and must show what exists now, e.g. the maps a stopped slow run finished."""
    shown = snapshot()
    if shown is None:  # the session's memory let the pass go (a tab that reconnected): the page's run remakes it
        st.rerun()
    main, side = st.columns([3, 2])
    walk_layer, walk_method, alpha, cmap, show_raw = _walk_controls(side, chosen_layers, chosen_methods, layers_key)
    h = shown.heatmap(walk_method, walk_layer)
    boxes = drawn_boxes(shown)
    renorm = bool(boxes) and side.toggle("Renormalise inside the box", key=Explore.BOX_RENORM,
                                         help="Scale the map to 0..1 inside each explained box, zero outside.")
    with main.container(key=Explore.MAIN):
        if h is not None:
            st.image(overlay_image(img, h, alpha, cmap, loaded.pretrained, boxes, renorm),
                     caption=caption(h, loaded.weights_label),
                     width="stretch")
            if h.blank:  # an empty overlay must not read as "the model looks nowhere"
                st.warning(blank_warning(h))
        else:
            why = shown.why_waiting(walk_method, walk_layer)
            st.info(f"{pair_label(walk_method, walk_layer)} is not computed yet"
                    + (f" ({why}: see its Run button above)." if why else " (see the progress above)."),
                    icon=":material/hourglass_empty:")
    if h is not None and show_raw:
        side.pyplot(overlay.colorbar_figure(h.raw, cmap, f"raw {h.method} on {h.layer}: "
                                                         f"{h.raw_range[0]:.3g} … {h.raw_range[1]:.3g}"),
                    width="stretch")
    prediction_panel(side, img, shown, loaded)
    maps = [x for x in (shown.heatmap(m, layer) for m, layer in pairs) if x is not None]
    maps = list({(x.method, x.layer): x for x in maps}.values())
    if len(maps) > 1 or (maps and h is None):
        st.markdown(f"**Grid** · {len(maps)} heatmaps")
        cols = st.columns(min(GRID_COLUMNS, len(maps)))
        for i, x in enumerate(maps):
            cols[i % len(cols)].image(overlay_image(img, x, alpha, cmap, loaded.pretrained, boxes, renorm),
                                      caption=caption(x, "pretrained" if loaded.pretrained else "UNTRAINED"),
                                      width="stretch")
