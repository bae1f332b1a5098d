"""pages/batch.py in-process (AppTest): run over a one-sample view, then again (all skipped)."""
from __future__ import annotations

import pytest
from app_support import APP, TIMEOUT, run
from streamlit.testing.v1 import AppTest

from camcore import demo_data
from fo_helpers import coded_identity

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::RuntimeWarning")]



def _run(at: AppTest) -> AppTest:
    return run(at, allow_errors=False)


def test_batch_page_runs_then_skips():
    dataset = demo_data.ensure_demo_dataset()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/batch.py")
    _run(at)
    at.sidebar.text_input(key="view_filename").input("chelsea")
    _run(at)
    assert at.multiselect(key="batch_methods").value == ["gradcam"]
    at.multiselect(key="batch_methods").select("xgradcam")
    at.radio(key="batch_rule").set_value("a named class")
    _run(at)
    at.selectbox(key="batch_class_efficientnet_lite0").set_value("tabby")
    _run(at)
    at.button(key="batch_start").click()
    _run(at)
    assert any("1 computed, 0 skipped" in s.value for s in at.success), [s.value for s in at.success]
    field = coded_identity(model="efficientnet_lite0", method="xgradcam", layer="head", target="tabby").field_name
    dataset.reload()
    assert len(dataset.exists(field)) == 1
    assert dataset.exists(field).first()[field].target == "tabby"

    at.button(key="batch_start").click()
    _run(at)
    assert any("0 computed, 1 skipped" in s.value for s in at.success), [s.value for s in at.success]
    # #17 item 7: the last progress line says that nothing was left, never "0/0 · 0.00 samples/s · ETA ?"
    lines = [b.proto.text for b in at.get("progress")]
    assert lines == ["Nothing to compute: all 1 samples of the view were done already (skipped)."], lines


def test_batch_marks_slow_methods():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/batch.py")
    _run(at)
    options = at.multiselect(key="batch_methods").options
    assert "Score-CAM  (slow)" in options and "Grad-CAM" in options, options


def test_progress_line_estimates_after_the_first_sample_and_says_what_is_skipped():
    from ui.batch_runs import progress_line

    first = progress_line(0, 100, 100, 2.5, 23.0, "a.jpg: gradcam on head")
    assert "ETA: estimating" in first and "23 s" not in first, first
    later = progress_line(8, 100, 100, 0.5, 600.0, "b.jpg")
    assert later.startswith("8/100 · 0.50 samples/s · ETA 10 min"), later
    resumed = progress_line(2, 5, 8, 0.5, 6.0, "c.jpg")
    assert resumed.startswith("2/5 · 3 skipped (already done) ·"), resumed
    assert progress_line(0, 0, 8, 0.0, None, "finished", finished=True) == \
        "Nothing to compute: all 8 samples of the view were done already (skipped)."
    assert "0/0" not in progress_line(0, 0, 8, 0.0, None, "checking")


def test_long_batches_say_hours_and_count_with_one_number_format():
    """#23 text: "ETA 348.8 min" reads as hours, and "24792" beside "24,792" becomes one format,
    on the Batch page's bar and in the CLI's progress line alike."""
    from camcore.progress import line
    from ui.batch_runs import progress_line

    page = progress_line(17, 24792, 24877, 1.19, 348.8 * 60, "x.jpg")
    assert page.startswith("17/24,792 · 85 skipped (already done) · 1.19 samples/s · ETA 5.8 h · "), page
    assert line(1017, 24792, 1.19, 348.8 * 60, "x.jpg") == "1,017/24,792 (1.19/s, ETA 5.8 h): x.jpg"
    assert line(3, 8, 0.5, 10.0, "y.jpg") == "3/8 (0.50/s, ETA 10 s): y.jpg"


# ---------------------------------------------------------------- interruptions: a closed tab, Cancel


def _batch_page_for(class_name: str) -> AppTest:
    """The Batch page on the demo's 8 samples, Grad-CAM for a named class (a field of this test's own)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/batch.py")
    _run(at)
    at.radio(key="batch_rule").set_value("a named class")
    _run(at)
    at.selectbox(key="batch_class_efficientnet_lite0").set_value(class_name)
    _run(at)
    return at


def _interrupt_at_heatmap(monkeypatch, n: int, interrupt) -> list:
    """Count Explainer.heatmap calls; call interrupt(ctx) in the n-th, from the script thread."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from camcore import batch, engine

    monkeypatch.setattr(batch, "PROGRESS_INTERVAL", 0.0, raising=False)  # progress after every heatmap
    calls = []
    real = engine.Explainer.heatmap

    def heatmap(self, *a, **k):
        calls.append(1)
        if len(calls) == n:
            interrupt(get_script_run_ctx())
        return real(self, *a, **k)

    monkeypatch.setattr(engine.Explainer, "heatmap", heatmap)
    return calls


def test_a_closed_tab_stops_the_batch_at_the_next_heatmap_and_a_reload_says_so(monkeypatch):
    dataset = demo_data.ensure_demo_dataset()
    total = len(dataset)
    field = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target="goldfish").field_name
    at = _batch_page_for("goldfish")
    # Streamlit requests a stop of the session's script when its websocket closes (tab closed or
    # reloaded): here during the second heatmap of a chunk of 8.
    calls = _interrupt_at_heatmap(monkeypatch, 2, lambda ctx: ctx.script_requests.request_stop())
    at.button(key="batch_start").click()
    _run(at)
    assert len(calls) == 2  # stopped at the next heatmap, not after the chunk
    dataset.reload()
    assert len(dataset.exists(field)) == 2  # what was computed is written
    monkeypatch.undo()

    reloaded = _batch_page_for("goldfish")  # a reload is a new session
    notes = [w.value for w in reloaded.warning]
    assert any("interrupted" in w and f"2 of {total} samples written" in w for w in notes), notes
    reloaded.button(key="batch_start").click()
    _run(reloaded)
    assert any(f"{total - 2} computed, 2 skipped" in s.value for s in reloaded.success), \
        [s.value for s in reloaded.success]
    assert not any("interrupted" in w.value for w in reloaded.warning)  # resumed: the note is gone


def test_cancel_reports_what_was_written(monkeypatch):
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData

    dataset = demo_data.ensure_demo_dataset()
    total = len(dataset)
    field = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target="tiger shark").field_name
    at = _batch_page_for("tiger shark")

    def click_cancel(ctx):  # what a click on Cancel does: its on_click, then a rerun request
        ctx.session_state["batch_cancel_requested"] = True
        ctx.script_requests.request_rerun(RerunData(page_script_hash=ctx.page_script_hash))

    calls = _interrupt_at_heatmap(monkeypatch, 3, click_cancel)
    at.button(key="batch_start").click()
    _run(at)
    assert len(calls) == 3
    dataset.reload()
    written = len(dataset.exists(field))
    assert written == 3
    notes = [w.value for w in at.warning]
    assert any(f"Cancelled: {written} of {total} saved, run again to resume" in w for w in notes), notes

    # #17 item 7: the rerun says how many it skips, and resumes
    at.button(key="batch_start").click()
    _run(at)
    lines = [b.proto.text for b in at.get("progress")]
    assert lines and lines[-1].startswith(f"{total - written}/{total - written} · {written} skipped"), lines
    assert any(f"{total - written} computed, {written} skipped" in s.value for s in at.success), \
        [s.value for s in at.success]


def test_batch_page_measures_switch_stores_the_measures():
    from camcore.store import measures as measure_store

    dataset = demo_data.ensure_demo_dataset()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/batch.py")
    _run(at)
    at.sidebar.text_input(key="view_filename").input("coffee")
    _run(at)
    at.toggle(key="batch_measures").set_value(True)
    _run(at)
    at.toggle(key="batch_faithfulness").set_value(False)
    at.number_input(key="batch_threshold").set_value(0.3)
    _run(at)
    at.button(key="batch_start").click()
    _run(at)
    assert any("1 computed" in s.value for s in at.success), [s.value for s in at.success]
    field = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target="predicted").field_name
    dataset.reload()
    about = measure_store.measure_runs(dataset)[field]["about"]
    assert dataset.exists(about).values(about) == ["t=0.3;obj=model;f=0"]
