"""Two runs: two heatmap runs (two weights of one model, or two models) over the sidebar's view;
per sample the change of on-object share, most changed first, both maps side by side; per class
which got better and which worse."""
from __future__ import annotations

import streamlit as st

from ui import audit, page, text
from ui.sidebar import Selection
from ui.state import Audit

NO_SELECTION = "Pick a dataset in the sidebar: the runs are compared over its view."
ROWS = 200  # most-changed samples listed


def main(sel: Selection) -> None:
    st.markdown("#### Two runs side by side")
    picked = audit.pick_two(sel)
    if picked is None:
        return
    run_a, run_b = picked
    view = sel.view()
    problem = audit.runs_problem(view, run_a, run_b)
    if problem:
        st.warning(text.escape(problem))
        return
    both = audit.count_both(view, run_a, run_b)
    if both == 0:
        st.warning("No sample of this view has an on-object share from both runs: measure both with the same "
                   "object field (a batch with measures for each).")
        return
    # Classes as B (after) explained them by default: A is often the untrained or older run.
    by_name = st.radio("Classes as explained by", ["B", "A"], key=Audit.RUNS_BY, horizontal=True,
                       format_func=lambda r: f"run {r}")
    by = run_b if by_name == "B" else run_a
    rows = audit.class_changes(view, run_a, run_b, by=by)
    better, worse = sum(r[3] for r in rows), sum(r[4] for r in rows)
    st.caption(f"{both:,} samples measured by both runs · share on the object got better on {better:,}, worse on "
               f"{worse:,} (a change under 0.02 counts as the same).")
    left, right = st.columns([1, 1])
    left.plotly_chart(audit.class_change_figure(rows, by_name), key=Audit.RUNS_CLASSES)
    table, config = audit.class_change_table(rows)
    right.dataframe(table, column_config=config, hide_index=True, width="stretch", height=300)
    changes = audit.most_changed(view, run_a, run_b, limit=ROWS, by=by)
    st.markdown(f"**Most changed first** ({min(ROWS, both):,} of {both:,}): pick a row to see both maps.")
    table = [{"file": c.filepath.rsplit("/", 1)[-1], "class": c.cls, "share A": round(c.share_a, 3),
              "share B": round(c.share_b, 3), "change": round(c.change, 3)} for c in changes]
    event = st.dataframe(table, key=Audit.RUNS_PAGE, on_select="rerun", selection_mode="single-row",
                         hide_index=True, width="stretch", height=240)
    chosen = list(getattr(getattr(event, "selection", None), "rows", None) or [0])
    change = changes[chosen[0]]
    st.caption(text.escape(f"{change.filepath} · {change.cls} · change {change.change:+.3f}"))
    audit.side_by_side(sel, change, run_a, run_b)


page.serve("runs", main, NO_SELECTION)
