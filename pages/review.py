"""Review: the sidebar's (narrowed) view worst first, each sample with its stored heatmap over the
image (no model pass), keyboard shortcuts, findings, and "reviewed 37 of 412" in the URL."""
from __future__ import annotations

import streamlit as st

from ui import audit, page, review, text, urlstate, widgets
from ui.sidebar import Selection
from ui.state import Audit

NO_SELECTION = "Pick a dataset in the sidebar: the queue is its (narrowed) view."


def main(sel: Selection) -> None:
    st.markdown("#### Review queue")
    run = audit.pick_run(sel)
    if run is None:
        return
    view = sel.view()
    settings = audit.settings_in(view, run)
    total = sum(n for _about, n in settings)
    if total == 0:
        urlstate.remember_audit(run.heatmap)
        st.warning(f"No sample of this view has stored measures in {text.escape(run.heatmap)}: widen the view "
                   "(✕ beside the narrowing in the sidebar), or store measures with a batch.")
        return
    mixed = audit.mixed_line(settings)
    if mixed:  # worst first would rank shares of different kinds together: nothing to review or record
        urlstate.remember_audit(run.heatmap)
        st.warning(text.escape(mixed))
        return
    pos = review.position(total, (sel.dataset, sel.view_spec, run.heatmap))
    urlstate.remember_audit(run.heatmap, pos + 1)
    st.markdown(f"**Reviewed {pos + 1} of {total:,}** · lowest share on the object first (no object: last) · keys: "
                + " · ".join(f"`{k}` {what}" for k, what in review.SHORTCUTS))
    b1, b2, b3, b4, b5 = st.columns([1, 1, 2, 3, 1])
    b1.button("◀ Prev", key=Audit.PREV, shortcut="k", on_click=review.step, args=(-1, total),
              disabled=pos == 0)
    b2.button("Next ▶", key=Audit.NEXT, shortcut="j", on_click=review.step, args=(1, total),
              disabled=pos >= total - 1)
    (sample_id, path), = audit.worst_first(view, run, pos, 1)
    b3.selectbox("Finding", list(audit.FINDING_TAGS), key=Audit.TAG, label_visibility="collapsed")
    review.note_for(sample_id)
    b4.text_input("Note", key=Audit.NOTE, placeholder="note (optional)", label_visibility="collapsed")
    b5.button("Record", key=Audit.RECORD, shortcut="f", on_click=review.record, args=(sel, sample_id, run))
    said = st.session_state.pop("_review_said", None)
    if said:
        st.success(text.escape(said))
    measures = audit.sample_measures(sel, sample_id, run)
    if st.session_state.pop(Audit.COMPUTE_REQUESTED, False):  # the click's run: compute first, then draw
        with st.spinner("Computing the heatmap and its measures…", show_time=True):
            st.info(text.escape(review.compute(sel, sample_id, run, str(measures.get("about") or ""))))
        measures = audit.sample_measures(sel, sample_id, run)
    stored = review.stored(sel, sample_id, run)
    if stored.problem:
        what = ("No stored heatmap for this sample" if stored.problem == "missing"
                else "The stored heatmap is " + stored.problem)
        st.warning(text.escape(what) + ".")
        # A callback, not the return value: a click survives the router's one rerun (router.ensure_routed).
        st.button("Compute it now", key=Audit.COMPUTE, type="primary", on_click=widgets.request,
                  args=(Audit.COMPUTE_REQUESTED,))
    review.draw_sample(sel, sample_id, path, stored, measures)


page.serve("review", main, NO_SELECTION)
