"""What Compare and Explore say after a click cut a run of slow heatmaps (ui/compute.py), driven
outside a browser: the page's progress bar is a stand-in that raises, as Streamlit does at the
bar's next call once a click (Cancel, or any other) or Stop ended the script."""
from __future__ import annotations

import pytest
from cam_support import chelsea_crop

from camcore.engine import Explainer
from camcore.models import load_model
from ui import compute, session_memory


class _ScriptEnded(Exception):
    """Streamlit's rerun or stop, raised at an st.* call of the script it ends."""


class _Bar:
    """The page's bar; at its call `cut_at` it ends the script, as Streamlit does at the click's
    thread's next st.* call."""

    def __init__(self, cut_at: int | None) -> None:
        self.calls: list[str] = []
        self.cut_at = cut_at

    def progress(self, fraction: float, text: str = "") -> None:
        self.calls.append(text)
        if len(self.calls) == self.cut_at:
            raise _ScriptEnded()


class _Slot:
    def empty(self) -> None:
        pass


@pytest.fixture(scope="module")
def effnet():
    return load_model("efficientnet_lite0", "auto", "cpu")


def _cut(monkeypatch, ex: Explainer, run: list[tuple[str, str]], cut_at: int | None = None,
         cancel_during: str | None = None) -> tuple[str | None, _Bar]:
    """Run `run`, cut at the bar's call `cut_at`, or by the next run's cancel while the method
    `cancel_during` computes (fast reruns: the click's run starts at once, on another thread, and
    cancels this one's job); then what the next run says."""
    bar = _Bar(cut_at)
    monkeypatch.setattr(compute, "_slow_progress_area", lambda: (_Slot(), bar))
    heatmap = ex.heatmap

    def cancelled_during(method: str, *args, **kwargs):
        if method == cancel_during:
            lock, jobs = session_memory.jobs()
            with lock:
                jobs[session_memory.session_id()]["cancel"].set()
        return heatmap(method, *args, **kwargs)

    monkeypatch.setattr(ex, "heatmap", cancelled_during)
    for m, layer in run:
        ex.allow(m, layer, False)  # the user said go
    if cut_at is None:
        compute._run_slow(ex, run, False, rerun=False)  # stopped by the next run: it returns
    else:
        with pytest.raises(_ScriptEnded):
            compute._run_slow(ex, run, False, rerun=False)
    return compute._settle_interrupted(ex, False), bar


def test_a_click_while_a_pair_that_cannot_stop_finishes_names_the_next_pair(effnet, monkeypatch):
    """Grad-CAM (one pass: nothing to stop mid-way) finishes after the click that came while it
    computed; the pair cut is Score-CAM, not started, and the note says so, with Grad-CAM's map
    kept (it was named as the pair cancelled, at 0%, while its map was shown)."""
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=4)
    run = [("gradcam", "stage0"), ("scorecam", "stage0")]
    said, bar = _cut(monkeypatch, ex, run, cancel_during="gradcam")
    assert bar.calls == ["Grad-CAM on stage0 (1/2) · starting…"], bar.calls  # Score-CAM never started
    assert said is not None and said.startswith("Stopped Score-CAM on stage0 at 0%; 1 new heatmap finished before it"), said
    assert ex.deferred("scorecam", "stage0") == compute.CANCELLED
    assert ex.deferred("gradcam", "stage0") is None and ex.is_cached("gradcam", "stage0")


def test_a_click_during_a_pair_names_that_pair(effnet, monkeypatch):
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=4)
    said, _bar = _cut(monkeypatch, ex, [("scorecam", "stage0")], cut_at=3)
    assert said is not None and said.startswith("Stopped Score-CAM on stage0 at "), said
    assert "finished before it" not in said


def test_a_click_during_the_last_pair_that_then_finishes_cuts_nothing(effnet, monkeypatch):
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=4)
    said, _bar = _cut(monkeypatch, ex, [("gradcam", "stage0")], cancel_during="gradcam")
    assert said is None  # nothing was cut: no note of a cancel
    assert ex.is_cached("gradcam", "stage0") and ex.deferred("gradcam", "stage0") is None
