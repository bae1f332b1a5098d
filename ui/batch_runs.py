"""The Batch page's runs: one batch in the script thread with per-heatmap progress, stopped by
Cancel or a closed tab, and a process-wide record so a reloaded page can say what happened.

A click during a batch (Cancel, or any widget) reaches the running script in one of two ways. With
Streamlit's default fast reruns, the running script is told to stop and a new run of the same
session starts at once, beside it: the old run sets the batch's cancel, writes what it computed and
leaves its report in the process-wide record (its session_state is out of reach by then), and the new
run waits for that report (`pick_up`) and shows it. Without fast reruns (and in AppTest), the old
run gets a rerun request, keeps its report in session_state and the rerun shows it."""
from __future__ import annotations

import threading
import time
import uuid

import streamlit as st

from camcore import batch_options, store
from camcore.errors import CamError
from camcore.measures import MeasureOptions
from camcore.progress import eta_text
from ui import text
from ui.state import Batch

LAST, TOKEN = Batch.LAST, Batch.TOKEN
PREDICTED = batch_options.PREDICTED  # the target rule "each sample's own top class"
BOXES_HELP = ("A detector explains boxes: top (the top-scoring detection), top:<k> (the k best, a field "
              "each), det:<i>, class:<name> (every box of a class, summed), all; each optionally "
              "@<score threshold> (default 0.5); field:<Detections field>[:<class>] (every box of the "
              "sample's field, a field per box index, matched to the model's output by IoU and label). "
              "Samples without the box are skipped.")


@st.cache_resource(show_spinner=False)
def _runs() -> tuple[threading.Lock, dict[str, dict]]:
    """Process-wide: the batches this server runs or ran from the page (run id -> entry), so that a
    reloaded page (a new session, fresh session_state) can tell one is running or was interrupted."""
    return threading.Lock(), {}


def measure_controls(dataset_name: str) -> MeasureOptions | None:
    """The Batch page's measures switch: None when off, else where the object is, the background
    threshold and whether to score faithfulness (read by the Audit page)."""
    if not st.toggle("Store measures", key=Batch.MEASURES,
                     help="Also store per heatmap, as fields: the target's score and probability, the share of "
                          "heatmap mass on the object, the faithfulness scores and the background-dominated "
                          "flag. The Audit page and the FiftyOne App's filters read them."):
        return None
    dataset = store.load_dataset(dataset_name)
    sources = [None, *store.segmentation_fields(dataset), *store.detection_fields(dataset)]
    m1, m2, m3 = st.columns([3, 2, 2])
    field = m1.selectbox("Object from", sources, key=Batch.OBJECT_FIELD,
                         format_func=lambda f: "(the model's own mask or box; none: classifiers)" if f is None else f)
    threshold = m2.number_input("Background-dominated below", 0.0, 1.0, 0.5, 0.05, key=Batch.THRESHOLD,
                                help="share of the heatmap's mass on the object, 0..1")
    faith = m3.toggle("Faithfulness scores", value=False, key=Batch.FAITHFULNESS,
                      help="keep/remove confidence change: 3 forwards a heatmap, ~2.8x a batch (off by default)")
    any_object = bool(field) and m1.toggle("Any object of the field", key=Batch.ANY_OBJECT,
                                           help="Off: the label that names the explained class. On: every object "
                                                "(an untrained model, or classes named otherwise than the labels).")
    return MeasureOptions(object_field=field, threshold=float(threshold), faithfulness=bool(faith),
                          object_label="*" if any_object else "")


def options(sel, model: str, methods: tuple[str, ...], layers: tuple[str, ...], target_rule: str,
            eigen_smooth: bool, measures: MeasureOptions | None,
            fresh: bool = False) -> list[batch_options.BatchOptions]:
    """The page's choices, with the sidebar's weights and input size, as the options of a batch:
    one, or a detector's one per box rule (`target_rule` is then its box rule, as `batch --box`:
    top:<k> and a field's boxes stand for several); checked (a clear CamError where they do not fit).
    What a `field:` rule reads from the view (aggregations over all of it) is kept for this session's
    dataset and view across reruns; fresh (the click that runs the batch): read again."""
    base = batch_options.BatchOptions(model=model, weights=sel.weights, methods=methods, layers=layers,
                              target_rule=target_rule, eigen_smooth=eigen_smooth, input_size=sel.input_size,
                              measures=measures)
    view = sel.view()
    try:
        return [o.checked() for o in batch_options.box_batches(view, base, None, _box_facts(sel, view, fresh))]
    except CamError:  # refused (no such boxes, unknown labels): no Run button to click, so the next
        st.session_state.pop(Batch.BOX_FACTS, None)  # rerun reads the view again (the user may fix the data)
        raise


def _box_facts(sel, view, fresh: bool) -> batch_options.BoxFacts:
    """This session's facts of the sidebar's view: one memo, replaced when the dataset or the view
    changes (so it never grows), or when asked to read afresh."""
    where = (sel.dataset, sel.view_spec)
    kept = st.session_state.get(Batch.BOX_FACTS)
    if fresh or not kept or kept[0] != where:
        kept = (where, {})
        st.session_state[Batch.BOX_FACTS] = kept
    return batch_options.BoxFacts(view, kept[1])


def field_names(sel, runs: list[batch_options.BatchOptions]) -> list[str]:
    """The fields the runs write, as the dataset keeps them (a field of an older name holding the same map)."""
    dataset = store.load_dataset(sel.dataset)
    return list(dict.fromkeys(f for options in runs for f in options.field_names(dataset)))


def fields_text(sel, runs: list[batch_options.BatchOptions], fields: list[str]) -> str:
    """The plan's "Fields: ..." line; a detector's several box rules say which fields are whose box
    (a name cut to fit the App's sidebar may end in a hash that says nothing)."""
    if len(runs) < 2:
        return "Fields: " + ", ".join(f"`{f}`" for f in fields)
    dataset = store.load_dataset(sel.dataset)
    return "Fields, per box: " + "; ".join(
        f"{text.escape(str(o.target_rule))}: " + ", ".join(f"`{f}`" for f in o.field_names(dataset)) for o in runs)


def box_fields_hint(dataset_name: str) -> str:
    """Under the Boxes input: the dataset's Detections fields a `field:` rule can name."""
    names = store.detection_fields(store.load_dataset(dataset_name))
    return (text.escape("Detections fields: " + ", ".join(f"field:{n}" for n in names)) if names
            else "No Detections field in this dataset: the model's own boxes only.")


def _session_alive(session_id: str | None) -> bool:
    """Whether a browser is still connected to that session (True where unknown, e.g. AppTest)."""
    try:
        from streamlit import runtime

        return not session_id or not runtime.exists() or runtime.get_instance().is_active_session(session_id)
    except Exception:
        return True


def _known_alive(session_id: str | None) -> bool:
    """Whether that session is known to have a browser connected (False where unknown, e.g. AppTest)."""
    try:
        from streamlit import runtime

        # `is True`: AppTest's runtime is a mock, whose answers are not booleans
        return (bool(session_id) and runtime.exists()
                and runtime.get_instance().is_active_session(session_id) is True)
    except Exception:
        return False


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
        others = [dict(r) for r in runs.values()
                  if r["dataset"] == dataset and r["token"] != mine and r["state"] != "done"]
    for r in sorted(others, key=lambda r: r["started"]):
        counts = f"{r['done']:,} of {r['total']:,} samples written"
        if r["state"] == "interrupted":
            if starting:
                continue
            st.warning(f"A batch on this dataset was interrupted (its page was closed or reloaded) with {counts}; "
                       "run again to resume: samples already done are skipped.", icon=":material/history:")
        elif _session_alive(r["session"]):
            st.info(f"A batch on this dataset is running in another tab or session: {counts} so far "
                    f"(fields {text.escape(', '.join(r['fields']))}).", icon=":material/sync:")
        else:
            st.info(f"A batch on this dataset from a closed or reloaded page is stopping: {counts} so far. "
                    "Reload this page in a moment, then run again to resume.", icon=":material/sync:")


def progress_line(done: int, total: int, view_total: int, rate: float, eta: float | None, message: str,
                  finished: bool = False) -> str:
    """The progress bar's text: "done/total · skipped · rate · ETA · message". total: samples left
    to compute (the view less those found done so far, as camcore.batch reports it); view_total:
    samples in the view.

    The ETA is shown once a first sample is written: before that, the only measure is the first
    heatmaps of the first sample (a fast method can come before a slow one), which says little about
    the whole job. Never "0/0 · 0.00 samples/s · ETA ?": a run with nothing left to compute says so."""
    skipped = max(0, view_total - total)
    if total == 0:
        return (f"Nothing to compute: all {view_total:,} samples of the view were done already (skipped)."
                if finished else f"Checking which of the {view_total:,} samples are done already…")
    skip = f" · {skipped:,} skipped (already done)" if skipped else ""
    message = text.escape(message)  # progress text renders markdown; messages name files
    if finished:
        return f"{done:,}/{total:,}{skip} · {message}"
    left = eta_text(eta) if done > 0 and eta is not None else "ETA: estimating (after the first sample)"
    return f"{done:,}/{total:,}{skip} · {rate:.2f} samples/s · {left} · {message}"


WAIT_SECONDS = 600  # how long a new run waits for this session's stopping batch to hand over its report


def pick_up(token: str) -> None:
    """This session's batch that a click stopped (see the module docstring): wait until it has written
    what it computed, then keep its report for `show`. Nothing to do when there is none."""
    lock, runs = _runs()
    note = None
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        with lock:
            mine = [(k, r) for k, r in runs.items()
                    if r["token"] == token and r["state"] in ("running", "done")]
            if not mine:
                break
            done = [(k, r) for k, r in mine if r["state"] == "done"]
            for key, r in done:
                st.session_state[LAST] = r["result"]
                del runs[key]
            running = [r for _k, r in mine if r["state"] == "running"]
        if not running or time.monotonic() > deadline:
            break
        r = running[0]
        if note is None:
            note = st.empty()
        note.info(f"Cancelling: {r['done']:,} of {r['total']:,} written so far; the batch stops at its next "
                  "heatmap and writes what it computed…", icon=":material/hourglass_top:")
        time.sleep(0.25)
    if note is not None:
        note.empty()


def run(sel, rules: list[batch_options.BatchOptions], fields: list[str], token: str) -> None:
    """Run the batch here, in the script thread, with a progress bar that reports per heatmap.

    Streamlit interrupts a script at its next st.* call: Cancel or any click (a stop with fast
    reruns, else a rerun), a closed/reloaded tab (a stop). The progress callback catches that at the
    bar and sets the batch's cancel instead, so the batch stops at the next heatmap and writes what it
    computed; its report (the true counts) is kept, in session_state when it still can be, else in
    the process-wide record for the next run of this session (`pick_up`), and the interruption is
    raised again afterwards for Streamlit to finish."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    lock, runs = _runs()
    run_id = uuid.uuid4().hex
    session = ctx.session_id if ctx else None
    entry = {"dataset": sel.dataset, "token": token, "session": session,
             "state": "running", "done": 0, "total": sel.count, "fields": list(fields),
             "started": time.time(), "result": None}
    with lock:  # a new run on this dataset resumes what an interrupted one left
        for key in [k for k, r in runs.items()
                    if r["dataset"] == sel.dataset and r["state"] == "interrupted"]:
            del runs[key]
        runs[run_id] = entry
    st.session_state[LAST] = {"running": True}
    bar = st.progress(0.0, text=f"Starting: {sel.count:,} samples in the view; "
                                "those done already are skipped…")
    cancel = threading.Event()
    interrupted: list[BaseException] = []
    told = {"total": sel.count}

    def progress(done: int, total: int, rate: float, eta: float | None, message: str) -> None:
        entry.update(done=done, total=total)
        told["total"] = total
        if interrupted:
            return  # no more st.* calls: each would raise again
        try:
            bar.progress(min(1.0, done / total) if total else 0.0,
                         text=progress_line(done, total, sel.count, rate, eta, message))
        except BaseException as exc:  # Streamlit's rerun/stop request (a click, a closed tab), or an error
            interrupted.append(exc)
            cancel.set()

    outcome, state = "failed", None
    try:
        view = sel.view()  # the sidebar's view itself (stages), read a page at a time by the batch
        from camcore import batch  # the run loads torch; the page's form and its checks do not

        report = batch.run_batches(view, rules, progress=progress, cancel=cancel)  # a detector's box rules: one run
        if not report.cancelled:
            outcome = "finished"
        elif interrupted and _is_stop(interrupted[0]) and not _known_alive(session):
            outcome = "stopped"  # the session went away (tab closed or reloaded)
        else:  # Cancel, or another click: this session goes on
            outcome = "cancelled"
        entry.update(done=report.done, result={"running": False, "report": report.to_dict(),
                                               "total": entry["total"], "view_total": sel.count,
                                               "outcome": outcome})
        state = "interrupted" if outcome == "stopped" else "done"
        if not interrupted:
            st.session_state[LAST] = entry["result"]
        elif outcome == "cancelled":
            try:  # a rerun (no fast reruns): this session's state is still here
                st.session_state[LAST] = entry["result"]
                state = None
            except BaseException:  # a stop (fast rerun): the next run of this session picks it up
                pass
    finally:
        with lock:
            if state is None or (state == "done" and not interrupted) or outcome == "failed":
                runs.pop(run_id, None)
            else:  # for the run that comes next: this session's (pick_up), or a reload's (other_runs)
                entry["state"] = state
    if interrupted:
        raise interrupted[0]
    if outcome == "finished":  # the bar's last line: what happened, never "0/0 · … · ETA ?"
        total = told["total"]
        bar.progress(1.0, text=progress_line(report.done, total, sel.count, 0.0, None,
                                             f"finished in {report.seconds:.1f} s", finished=True))
    show(st.session_state[LAST])


def show(last: dict) -> None:
    report = last["report"]
    outcome = last.get("outcome", "finished")
    view_total = last.get("view_total", last["total"])
    failed = len(report["failed"])
    if outcome in ("cancelled", "stopped"):
        before = report["skipped"] + report.get("done_before", 0)  # done by earlier runs
        saved = before + report["done"]  # of the view: done before, and in this run
        left = max(0, view_total - saved - failed)
        st.warning(f"{'Cancelled' if outcome == 'cancelled' else 'Stopped'}: {saved:,} of {view_total:,} saved, "
                   f"run again to resume. ({report['done']:,} written in this run, {before:,} done "
                   f"already, {failed:,} failed, {left:,} left: the next run skips what is saved.)",
                   icon=":material/cancel:")
    elif report["done"] == 0 and not failed:
        st.success(f"Nothing to compute: 0 computed, {report['skipped']} skipped (already done with these "
                   "settings).")
    else:
        st.success(f"{report['done']} computed, {report['skipped']} skipped (already done), "
                   f"{failed} failed in {report['seconds']:.1f} s.")
    for f in report["failed"]:
        st.warning(f"Sample {text.escape(f['sample_id'])}: {text.escape(f['error'])}")
    if report["fields"]:
        st.caption("Fields: " + ", ".join(f"`{f}`" for f in report["fields"]))
