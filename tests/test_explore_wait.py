"""Issue 23, bug 1: a link with a named target opened while another session holds the same model.

Explore runs two shared passes (the prediction, then the named target's pass); each says whom it
waits for in a box with a Cancel button. Both boxes had one key, so the page ended in
StreamlitDuplicateElementKey ('cam_wait') and stayed there. The other session here is a thread
holding the cached model's real lock, as a Batch or Score-CAM in another tab does: it holds it when
the page starts, lets the page's first pass through, and takes it again before the second one
(the order a busy Batch gives by chance, made certain here)."""
from __future__ import annotations

import threading
from contextlib import contextmanager

from app_support import APP, TIMEOUT, run
from streamlit.testing.v1 import AppTest

from camcore import demo_data, modellock
from camcore.models import load_model

MODEL = "efficientnet_lite0"


def test_a_named_target_link_while_another_session_holds_the_model_shows_the_maps(monkeypatch):
    dataset = demo_data.ensure_demo_dataset()
    loaded = load_model(MODEL, "auto")  # the process-wide model the page gets too
    real_hold = modellock.hold
    page_waited, retake, taken = threading.Event(), threading.Event(), threading.Event()
    page_passes: list[str] = []
    depth: dict[int, int] = {}  # holds open per thread

    def other_session() -> None:
        with real_hold(loaded.lock, MODEL, "Score-CAM on head"):
            page_waited.wait(60)  # the page's first pass waits for us, then we let it through
        retake.wait(60)
        with real_hold(loaded.lock, MODEL, "Score-CAM on head"):
            taken.set()
            threading.Event().wait(1.5)  # the page's second pass waits for us too

    other = threading.Thread(target=other_session, daemon=True)

    @contextmanager
    def page_hold(lock, model, what, progress=None, cancel=None, since=None):
        def said(fraction, message):
            page_waited.set()
            if progress is not None:
                progress(fraction, message)

        depth[threading.get_ident()] = depth.get(threading.get_ident(), 0) + 1
        try:
            with real_hold(lock, model, what, said, cancel, since):
                yield
        finally:
            depth[threading.get_ident()] -= 1
        # a pass's own re-entrant hold (the forward inside run_pass) is not a pass: the outermost is
        if depth[threading.get_ident()] == 0 and threading.current_thread() is not other and lock is loaded.lock:
            page_passes.append(what)
            if len(page_passes) == 1:  # the other session takes the model back before the next pass
                retake.set()
                assert taken.wait(30)

    monkeypatch.setattr(modellock, "hold", page_hold)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"dataset": dataset.name, "sample": dataset.first().id, "model": MODEL,
                            "target": "tabby", "methods": "gradcam"})
    other.start()
    try:
        at.run(timeout=TIMEOUT)
    finally:
        page_waited.set()
        retake.set()
        other.join(30)
    assert taken.is_set()  # the other session held the model again before the page's second pass
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    run(at)  # and the page goes on as usual, on the named target
    assert "**Target:** tabby (chosen)" in [m.value for m in at.main.markdown]
    assert [s.value for s in at.main.selectbox if s.label == "Target class"] == [281]  # ImageNet's tabby
