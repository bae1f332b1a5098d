"""Compare's ROAD curve of one map of the grid: the controls, then (the page computes it with
ui/compute.road) the curve, kept on screen while it is about the chosen map."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from camcore import methods, metrics
from ui.compute import Grid, Progress
from ui.state import Compare


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
