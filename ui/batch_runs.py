"""The Batch page's runs: one batch in the script thread with per-heatmap progress, stopped by
Cancel or a closed tab, and a process-wide record so a reloaded page can say what happened."""
from __future__ import annotations

import threading
import time
import uuid

import streamlit as st

from camcore import batch

LAST = "batch_last_report"  # what the last (or interrupted) run reported, for the next rerun
TOKEN = "batch_session_token"  # this session's mark on the runs it starts (a reload is a new session)


@st.cache_resource(show_spinner=False)
def _runs() -> tuple[threading.Lock, dict[str, dict]]:
    """Process-wide: the batches this server runs or ran from the page (run id -> entry), so that a
    reloaded page (a new session, fresh session_state) can tell one is running or was interrupted."""
    return threading.Lock(), {}


def _session_alive(session_id: str | None) -> bool:
    """Whether a browser is still connected to that session (True where unknown, e.g. AppTest)."""
    try:
        from streamlit import runtime

        return not session_id or not runtime.exists() or runtime.get_instance().is_active_session(session_id)
    except Exception:
        return True


def _is_stop(exc: BaseException) -> bool:
    """Streamlit stops a script when its session goes away (tab closed or reloaded) or on Stop;
    a rerun (Cancel, any widget) raises RerunException instead."""
    return type(exc).__name__ == "StopException"


def other_runs(dataset: str, starting: bool) -> None:
    """Say what batches of other sessions (another tab, a closed or reloaded page) did here.
    starting: this run starts a batch, which resumes what an interrupted one left (no note)."""
    lock, runs = _runs()
    mine = st.session_state.get(TOKEN)
    with lock:
        others = [dict(r) for r in runs.values() if r["dataset"] == dataset and r["token"] != mine]
    for r in sorted(others, key=lambda r: r["started"]):
        counts = f"{r['done']} of {r['total']} samples written"
        if r["state"] == "interrupted":
            if starting:
                continue
            st.warning(f"A batch on this dataset was interrupted (its page was closed or reloaded) with {counts}; "
                       "run again to resume: samples already done are skipped.", icon=":material/history:")
        elif _session_alive(r["session"]):
            st.info(f"A batch on this dataset is running in another tab or session: {counts} so far "
                    f"(fields {', '.join(r['fields'])}).", icon=":material/sync:")
        else:
            st.info(f"A batch on this dataset from a closed or reloaded page is stopping: {counts} so far. "
                    "Reload this page in a moment, then run again to resume.", icon=":material/sync:")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run(sel, chosen_methods, chosen_layers, target, eigen_smooth, fields, token) -> None:
    """Run the batch here, in the script thread, with a progress bar that reports per heatmap.

    Streamlit interrupts a script at its next st.* call: Cancel (a rerun) or a closed/reloaded tab
    (a stop). The progress callback catches that at the bar, sets the batch's cancel instead, so
    the batch stops at the next heatmap and writes what it computed; its report (the true counts)
    is kept, and the interruption is raised again afterwards for Streamlit to finish."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    lock, runs = _runs()
    run_id = uuid.uuid4().hex
    entry = {"dataset": sel.dataset, "token": token, "session": ctx.session_id if ctx else None,
             "state": "running", "done": 0, "total": sel.count, "fields": list(fields),
             "started": time.time()}
    with lock:  # a new run on this dataset resumes what an interrupted one left
        for key in [k for k, r in runs.items() if r["dataset"] == sel.dataset and r["state"] != "running"]:
            del runs[key]
        runs[run_id] = entry
    st.session_state[LAST] = {"running": True}
    bar = st.progress(0.0, text="Starting…")
    cancel = threading.Event()
    interrupted: list[BaseException] = []

    def progress(done: int, total: int, rate: float, eta: float | None, message: str) -> None:
        entry.update(done=done, total=total)
        if interrupted:
            return  # no more st.* calls: each would raise again
        try:
            bar.progress(done / total if total else 1.0,
                         text=f"{done}/{total} · {rate:.2f} samples/s · ETA {_eta(eta)} · {message}")
        except BaseException as exc:  # Streamlit's rerun/stop request (Cancel, a closed tab), or an error
            interrupted.append(exc)
            cancel.set()

    outcome = "failed"
    try:
        view = sel.view()  # the sidebar's view itself (stages), read a page at a time by the batch
        report = batch.run_batch(view, sel.model, sel.weights, chosen_methods, chosen_layers, target,
                                 eigen_smooth, sel.input_size, progress=progress, cancel=cancel)
        if not report.cancelled:
            outcome = "finished"
        else:  # a stop: the session went away (or Stop); a rerun: Cancel (or another widget) here
            outcome = "stopped" if interrupted and _is_stop(interrupted[0]) else "cancelled"
        st.session_state[LAST] = {"running": False, "report": report.to_dict(), "total": entry["total"],
                                  "outcome": outcome}
        entry.update(done=report.done)
    finally:
        with lock:
            if outcome == "stopped":
                entry["state"] = "interrupted"  # for the page that comes next (a reload, another tab)
            else:
                runs.pop(run_id, None)
    if interrupted:
        raise interrupted[0]
    show(st.session_state[LAST])


def show(last: dict) -> None:
    report = last["report"]
    outcome = last.get("outcome", "finished")
    if outcome in ("cancelled", "stopped"):
        left = last["total"] - report["done"] - len(report["failed"])
        st.warning(f"{'Cancelled' if outcome == 'cancelled' else 'Stopped'}: {report['done']} of "
                   f"{last['total']} samples written, {len(report['failed'])} failed, {left} left "
                   f"({report['skipped']} were done already); run again to resume.")
    else:
        st.success(f"{report['done']} computed, {report['skipped']} skipped (already done), "
                   f"{len(report['failed'])} failed in {report['seconds']:.1f} s.")
    for f in report["failed"]:
        st.warning(f"Sample `{f['sample_id']}`: {f['error']}")
    if report["fields"]:
        st.caption("Fields: " + ", ".join(f"`{f}`" for f in report["fields"]))
