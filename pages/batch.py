"""Batch: heatmaps for every sample of the sidebar's view, saved to FiftyOne, resumable."""
from __future__ import annotations

import uuid

import streamlit as st

from camcore import methods, models
from ui import batch_runs, page, widgets
from ui.sidebar import Selection
from ui.state import Batch

START, CANCEL = Batch.START, Batch.CANCEL
NO_SELECTION = "Pick a dataset in the sidebar: the batch runs over its view (tags, file name, labels)."


def main(sel: Selection) -> None:
    start = st.session_state.pop(START, False)
    st.session_state.pop(CANCEL, None)  # the click's rerun is what stops a running batch (see ui/batch_runs.run)
    spec = models.get_spec(sel.model)
    st.markdown("#### Batch")
    st.text(f"dataset {sel.dataset} · {sel.count:,} samples in the sidebar's view "
            f"({sel.view_spec.describe()}) · model {spec.label}")

    offered = [m for m in methods.methods_for(spec.task, spec.family) if not m.layer_independent]
    detector = spec.task == "detection"
    c1, c2, c3 = st.columns([3, 3, 3] if detector else [3, 3, 2])  # a box rule is longer than a toggle
    chosen_methods = widgets.sticky_multiselect(
        c1, "Methods", [m.key for m in offered], [methods.DEFAULT_METHOD], Batch.METHODS,
        format_func=methods.method_label,
        help="(slow): one forward per channel of the layer, or a kernel PCA, for every sample.")
    chosen_layers = widgets.sticky_multiselect(c2, "Layers", [s.name for s in spec.layers], [spec.default_layer],
                                               Batch.layers(spec.key))
    target_rule = batch_runs.PREDICTED
    if detector:  # a detector explains boxes: its box rule, as `batch --box`
        target_rule = c3.text_input("Boxes", "top", key=Batch.BOXES, help=batch_runs.BOXES_HELP).strip() or "top"
        c3.caption(batch_runs.box_fields_hint(sel.dataset))
    elif c3.radio("Target", [batch_runs.PREDICTED, "a named class"], key=Batch.RULE,
                  help="predicted: each sample's own top class (one field; each label stores its class).") \
            != batch_runs.PREDICTED:
        target_rule = c3.selectbox("Class", list(spec.class_names()), key=Batch.target_class(spec.key))
    eigen_smooth = c3.toggle("eigen_smooth", key=Batch.EIGEN)
    measures = batch_runs.measure_controls(sel.dataset)
    if not chosen_methods or not chosen_layers:
        st.info("Choose at least one method and one layer.")
        return
    runs = batch_runs.options(sel, spec.key, tuple(chosen_methods), tuple(chosen_layers), target_rule, eigen_smooth,
                              measures, fresh=start)  # the run's click counts a field's boxes afresh
    fields = batch_runs.field_names(sel, runs)
    st.caption(batch_runs.fields_text(sel, runs, fields) +
               (" with their measures (`camm_<measure>_…`)" if measures else "") +
               ". Samples already done with the same settings are skipped. Runs in this app's process; "
               "for several workers or machines use `python -m camcore batch --workers N` (Ray, see README).")

    b1, b2, _ = st.columns([1, 1, 4])  # Cancel beside Run, not across the page
    # Callbacks, not return values: a click survives the router's one rerun (router.ensure_routed).
    b1.button("Run batch", key=Batch.START_BUTTON, type="primary", on_click=widgets.request, args=(START,))
    # A click on Cancel reruns the script: the running batch stops at its next heatmap (see ui/batch_runs.run).
    # Everything reported done is written; running again resumes.
    b2.button("Cancel", key=Batch.CANCEL_BUTTON, on_click=widgets.request, args=(CANCEL,))
    token = st.session_state.setdefault(batch_runs.TOKEN, uuid.uuid4().hex)
    batch_runs.pick_up(token)  # this session's batch that the click stopped: its report, once written
    batch_runs.other_runs(sel.dataset, start)
    if not start:
        last = st.session_state.get(batch_runs.LAST)
        if last and "report" in last:
            batch_runs.show(last)
        return
    batch_runs.run(sel, runs, fields, token)


page.serve("batch", main, NO_SELECTION)
