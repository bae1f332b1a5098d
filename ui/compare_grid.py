"""Compare's grid: a layer x method grid of maps from one pass, each with its faithfulness and
object share, a map enlarged on request, and the offer of scores that would take long. The maps
and scores come from ui/compute.py (`Grid`); nothing here computes."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from camcore import detection, methods, metrics, overlay
from camcore.models import LoadedModel
from camcore.results import Heatmap
from ui import text
from ui.compute import Cell, Grid, duration
from ui.state import Compare
from ui.widgets import request

CELLS_PER_LINE = 4  # maps side by side in a row; more wrap to the next line (>= 150 px at 1280 px wide)
ROW_LABEL_PX = 120  # fixed width of a row's label ("block11", "layer4" never wrap letter by letter)
SCORES_HELP = (
    "How much the target's score changes when the image is multiplied by the map (**keep**: only the "
    "highlight kept) and by one minus the map (**remove**: the highlight removed), as a share of the "
    "score on the unchanged image (pytorch_grad_cam.metrics.CamMultImageConfidenceChange). A faithful "
    "map keeps the score (keep near 0% or above) and loses it when removed (remove well below 0%). "
    "Relative, so models and targets compare: a segmentation score is a sum over the mask, a "
    "classifier's a logit.")
SCORES_AUTO_SECONDS = 5.0  # faithfulness scores computed unasked while they take less than this


def scores_offer(maps: Grid) -> None:
    """The faithfulness scores left out because they take long: what they cost, and the go."""
    c1, c2 = st.columns([3, 2], vertical_alignment="center")
    c1.caption(f"Faithfulness scores of {maps.scores_waiting} maps not computed yet: two forwards of the model "
               f"each, about {duration(maps.scores_seconds)} here. The maps come first.")
    c2.button(f"Compute scores (~{duration(maps.scores_seconds)})", key=Compare.SCORES_GO_BUTTON, on_click=request,
              args=(Compare.SCORES_GO,), icon=":material/play_arrow:", width="stretch")


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
            f"target {h.target.identity_name}")


def _lines(cells: list) -> tuple[list[list], int]:
    per_line = min(CELLS_PER_LINE, max(len(cells), 2))  # one map alone must not fill the page
    return [cells[i:i + per_line] for i in range(0, len(cells), per_line)], per_line


def overlaid(img, h: Heatmap, loaded: LoadedModel, alpha: float, cmap: str, boxes: Sequence = (),
             renormalise: bool = False):
    """The map over the image; a detector's boxes drawn on top (ui/boxes.to_draw), the map
    renormalised inside the explained boxes when asked; an untrained model's map is watermarked."""
    m = detection.renormalise_in_boxes(h.map, h.target.boxes) if renormalise and h.target.boxes else h.map
    out = overlay.overlay(img.rgb, m, alpha, cmap)
    if boxes:
        out = overlay.draw_boxes(out, list(boxes))
    return out if loaded.pretrained else overlay.watermark_untrained(out, outside=True)


def grid(img, maps: Grid, loaded: LoadedModel, layers: list[str], chosen: list[str], alpha: float, cmap: str,
         threshold: float, boxes: Sequence = (), renormalise: bool = False) -> list[dict]:
    """Rows = layers, maps = methods (or, for one method, one row of layers: the layer study uses
    the width); a row wraps after CELLS_PER_LINE maps. A detector's `boxes` (ui/boxes.to_draw) are
    drawn over every map. Returns the scores table."""
    look = (alpha, cmap, tuple(boxes), renormalise)
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
                entry = _cell(col, header, img, maps.cells[(m, layer)], loaded, m, layer, look, threshold)
                if entry is not None:
                    table.append(entry)
    enlarged = st.session_state.pop(Compare.ENLARGE, None)
    cell = maps.cells.get(tuple(enlarged)) if enlarged is not None else None
    if cell is not None and cell.heatmap is not None:
        _enlarged_dialog(img, cell, loaded, look, threshold)
    return table


def _enlarge(method: str, layer: str) -> None:
    st.session_state[Compare.ENLARGE] = (method, layer)


def _cell(col, header: str, img, cell: Cell, loaded: LoadedModel, m: str, layer: str, look: tuple,
          threshold: float) -> dict | None:
    col.markdown(f"**{text.escape(header)}**")
    h = cell.heatmap
    if h is None:
        col.warning(text.escape(cell.error))
        return None
    col.image(overlaid(img, h, loaded, *look), width="stretch", caption=text.escape(made_with(h, loaded)))
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
def _enlarged_dialog(img, cell: Cell, loaded: LoadedModel, look: tuple, threshold: float) -> None:
    h = cell.heatmap
    st.image(overlaid(img, h, loaded, *look), width="stretch",
             caption=text.escape(made_with(h, loaded) + f" · weights: {loaded.weights_label}"))
    line = score_line(cell.faithfulness, cell.share, threshold)
    if line:
        st.caption(line, help=SCORES_HELP if cell.faithfulness is not None else None)
    if h.blank:
        st.warning(h.BLANK_NOTE[0].upper() + h.BLANK_NOTE[1:] + ".")
