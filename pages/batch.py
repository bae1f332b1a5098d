"""Batch: heatmaps for every sample of the sidebar's view, saved to FiftyOne, resumable."""
from __future__ import annotations

from ui import router

router.ensure_routed("batch")

import streamlit as st  # noqa: E402

from camcore import batch, methods, models, store  # noqa: E402
from ui import page, sidebar  # noqa: E402

LAST = "batch_last_report"  # what the last (or interrupted) run reported, for the next rerun


START, CANCEL = "batch_start_requested", "batch_cancel_requested"


def _request(flag: str) -> None:
    st.session_state[flag] = True


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main() -> None:
    start = st.session_state.pop(START, False)
    cancelled = st.session_state.pop(CANCEL, False)
    sel = sidebar.current()
    if sel is None:
        st.info("Pick a dataset in the sidebar: the batch runs over its view (tags, file name, labels).")
        return
    spec = models.get_spec(sel.model)
    st.markdown("#### Batch")
    st.caption(f"dataset **{sel.dataset}** · {len(sel.sample_ids)} samples in the sidebar's view · "
               f"model **{spec.label}**")

    offered = [m for m in methods.methods_for(spec.task, spec.family) if not m.layer_independent]
    c1, c2, c3 = st.columns([3, 3, 2])
    chosen_methods = c1.multiselect("Methods", [m.key for m in offered], default=[methods.DEFAULT_METHOD],
                                    key="batch_methods", format_func=lambda k: methods.METHODS[k].label)
    chosen_layers = c2.multiselect("Layers", [s.name for s in spec.layers], default=[spec.default_layer],
                                   key=f"batch_layers_{spec.key}")
    rule = c3.radio("Target", ["predicted", "a named class"], key="batch_rule",
                    help="predicted: each sample's own top class (one field; each label stores its class).")
    target = batch.PREDICTED
    if rule != "predicted":
        target = c3.selectbox("Class", list(spec.class_names()), key=f"batch_class_{spec.key}")
    eigen_smooth = c3.toggle("eigen_smooth", key="batch_eigen_smooth")
    if not chosen_methods or not chosen_layers:
        st.info("Choose at least one method and one layer.")
        return
    fields = [store.heatmap_field_name(spec.key, m, layer, target)
              for m in chosen_methods for layer in chosen_layers]
    st.caption("Fields: " + ", ".join(f"`{f}`" for f in fields) +
               ". Samples already done with the same settings are skipped. Runs in this app's process; "
               "for several workers or machines use `python -m camcore batch --workers N` (Ray, see README).")

    b1, b2, _ = st.columns([1, 1, 4])  # Cancel beside Run, not across the page
    # Callbacks, not return values: a click survives the router's one rerun (router.ensure_routed).
    b1.button("Run batch", key="batch_start", type="primary", on_click=_request, args=(START,))
    # A click on Cancel reruns the script: Streamlit stops the running batch at its next progress
    # update. Everything reported done is already written; running again resumes.
    b2.button("Cancel", key="batch_cancel", on_click=_request, args=(CANCEL,))
    if cancelled and st.session_state.get(LAST, {}).get("running"):
        last = st.session_state[LAST]
        last["running"] = False
        st.warning(f"Cancelled after {last['done']} of {last['total']} samples; run again to resume.")
    if not start:
        last = st.session_state.get(LAST)
        if last and not last.get("running") and "report" in last:
            _show(last["report"])
        return

    bar = st.progress(0.0, text="Starting…")
    state = st.session_state[LAST] = {"running": True, "done": 0, "total": len(sel.sample_ids)}

    def progress(done: int, total: int, rate: float, eta: float | None, message: str) -> None:
        state.update(done=done, total=total)
        bar.progress(done / total if total else 1.0,
                     text=f"{done}/{total} · {rate:.2f} samples/s · ETA {_eta(eta)} · {message}")

    dataset = store.load_dataset(sel.dataset)
    view = dataset.select(list(sel.sample_ids), ordered=True)
    report = batch.run_batch(view, sel.model, sel.weights, chosen_methods, chosen_layers, target,
                             eigen_smooth, sel.input_size, progress=progress)
    state.update(running=False, report=report.to_dict())
    _show(state["report"])


def _show(report: dict) -> None:
    st.success(f"{report['done']} computed, {report['skipped']} skipped (already done), "
               f"{len(report['failed'])} failed in {report['seconds']:.1f} s.")
    for f in report["failed"]:
        st.warning(f"Sample `{f['sample_id']}`: {f['error']}")
    if report["fields"]:
        st.caption("Written to: " + ", ".join(f"`{f}`" for f in report["fields"]))


page.run(main)
