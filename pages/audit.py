"""Audit: the sidebar's view drawn from its stored measures (on-object share, per class, confidence
against share); a click narrows the view, which the sidebar, the URL and the other pages follow."""
from __future__ import annotations

import streamlit as st

from ui import audit, page, text, urlstate
from ui.sidebar import Selection
from ui.state import Audit

NO_SELECTION = "Pick a dataset in the sidebar: the audit covers its view."


def main(sel: Selection) -> None:
    st.markdown("#### Audit")
    run = audit.pick_run(sel)
    if run is None:
        return
    urlstate.remember_audit(run.heatmap)
    s = audit.summary_of(sel, run)
    problem = audit.problem(s, sel, run)
    if problem:
        st.warning(text.escape(problem))
        return
    threshold = audit.threshold_of(s)
    no_share = audit.no_share(s, run)
    click = ("Click a class" if no_share else "Click a bar, a point or a class (shift-click adds bars or points), "
             "or pick Box Select in a chart's toolbar and drag,")
    st.caption(f"{s.total:,} samples in the sidebar's view · {s.with_measures:,} measured · {s.with_share:,} with "
               f"an object to measure on · {text.escape(audit.describe_about(s.settings[0][0]))}. {click} to narrow "
               "the view; the sidebar, the URL and the Review page follow.")
    if no_share:  # two empty charts would look like a drawing error
        st.info(text.escape(no_share))
    else:
        left, right = st.columns(2)
        with left:
            event = st.plotly_chart(audit.histogram_figure(s, threshold), key=Audit.HIST, on_select="rerun",
                                    selection_mode=("points", "box"))
            audit.narrow_to(audit.from_histogram(event, s, run), "hist")
        with right:
            missing = audit.no_scatter(s, run)
            if missing:  # an empty plot would look like a drawing error
                st.info(text.escape(missing))
            else:
                event = st.plotly_chart(audit.scatter_figure(s), key=Audit.SCATTER, on_select="rerun",
                                        selection_mode=("points", "box"))  # no lasso: a narrowing is ranges
                audit.narrow_to(audit.from_scatter(event, run), "scatter")
    rows = audit.class_rows(s, run)
    event = st.dataframe(rows, key=Audit.CLASSES, on_select="rerun", selection_mode="single-row",
                         hide_index=True, width="stretch", height=min(300, 38 + 35 * len(rows)),
                         placeholder=audit.NO_VALUE)  # not Streamlit's "None" in a cell with no share
    audit.narrow_to(audit.from_table(event, rows, run), "classes")
    for missing in (audit.no_map(sel, run), audit.no_bg(run)):
        if missing:
            st.caption(text.escape(missing))
    narrowed = sel.view_spec.narrow
    st.markdown(f"**{sel.count:,} samples** in the view" + (" (narrowed)" if narrowed else "")
                + ": review them worst first on the Review page, save them, or open them in the App.")
    audit.ways_out(sel)


page.serve("audit", main, NO_SELECTION)
