"""Hardening: sessions computing at once on one cached model, and hooks never outliving a call.

Streamlit runs every session on its own thread and the app caches one model per process, so
8 threads computing on the same LoadedModel must each get exactly what they would get alone,
and no hook may stay on any module after success, an error raised mid-pass, or a cancel.
"""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch
from cam_support import chelsea_crop, chelsea_rgb, hook_count

from camcore import perturbation, targets
from camcore.engine import Explainer
from camcore.errors import Cancelled, CamError, ModelError
from camcore.images import from_array
from camcore.models import load_model

LAYERS = ("stage0", "stage3")  # stage0: 16 channels, so Score-CAM is 16 small forwards


@pytest.fixture(scope="module")
def effnet():
    return load_model("efficientnet_lite0", "auto", "cpu")


def _image(i: int):
    """Eight different images: crops, flips and a colour swap of chelsea (real content, so
    the predictions and heatmaps differ between jobs)."""
    if i % 4 == 0:
        return chelsea_crop(224)
    rgb = chelsea_rgb()
    h, w = rgb.shape[:2]
    x0 = (i * 37) % (w - 260)
    crop = rgb[20 : 20 + 260, x0 : x0 + 260]
    if i % 2:
        crop = crop[:, ::-1]
    if i % 3 == 2:
        crop = crop[..., ::-1]
    crop = cv2.resize(np.ascontiguousarray(crop), (224, 224), interpolation=cv2.INTER_AREA)
    return from_array(np.ascontiguousarray(crop), f"job-{i}")


# (target request, methods): every job has its own image, target and method mix.
JOBS = [
    (None, ("gradcam", "layercam")),
    ("tabby", ("eigencam", "scorecam")),
    (285, ("gradcam",)),  # Egyptian cat
    ("tiger cat", ("layercam", "eigencam")),
    (967, ("gradcam", "eigencam")),  # espresso: a class that is not in the picture
    (None, ("layercam",)),
    (1, ("gradcam", "layercam", "eigencam")),
    ("Persian cat", ("scorecam", "gradcam")),
]

def _run(model, i: int) -> dict:
    target, methods = JOBS[i]
    ex = Explainer(model, _image(i), target, LAYERS, batch_size=16)
    layers = ("stage0",) if "scorecam" in methods else LAYERS  # Score-CAM on 16 channels only
    maps, errors = ex.heatmaps(methods, layers)
    assert not errors, errors
    return {"target": ex.target, "top": ex.prediction, **{(h.method, h.layer): (h.map, h.raw) for h in maps}}


def test_eight_threads_get_exactly_their_single_thread_heatmaps(effnet, monkeypatch):
    # Score-CAM's batches are sized by the time one took (perturbation.time_sized_batch): under a
    # loaded machine the threaded runs would sum in other batch sizes and differ at 1e-6 for that
    # reason alone. The size is the cap here, the same for every run, so only a mix-up can differ.
    monkeypatch.setattr(perturbation, "time_sized_batch", lambda seconds_per_channel, cap, budget=0.0: cap)
    before = hook_count(effnet.module)
    alone = [_run(effnet, i) for i in range(len(JOBS))]
    # The jobs really differ (otherwise mixing them up could not be seen).
    assert len({alone[i]["target"].index for i in range(len(JOBS))}) >= 6
    assert hook_count(effnet.module) == before

    together: list = [None] * len(JOBS)
    failures: list = []
    start = threading.Barrier(len(JOBS))

    def work(i: int) -> None:
        try:
            start.wait()
            together[i] = _run(effnet, i)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append((i, repr(exc)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a job hung"
    assert not failures, failures
    for i, (a, b) in enumerate(zip(alone, together)):
        assert a.keys() == b.keys()
        assert a["target"] == b["target"] and a["top"] == b["top"], f"job {i}: another prediction"
        for key in a:
            if key in ("target", "top"):
                continue
            np.testing.assert_allclose(b[key][0], a[key][0], rtol=0, atol=1e-6, err_msg=f"job {i} {key} map")
            np.testing.assert_allclose(b[key][1], a[key][1], rtol=1e-6, atol=1e-6, err_msg=f"job {i} {key} raw")
    assert hook_count(effnet.module) == before, "hooks left after concurrent runs"


# ---------------------------------------------------------------- hooks after errors and cancels


class _Boom(RuntimeError):
    pass


def test_no_hooks_after_a_target_that_raises_mid_pass(effnet, monkeypatch):
    """The forward ran (hooks fired), then the target's __call__ raises before the backward."""
    before = hook_count(effnet.module)

    class Raising:
        def __call__(self, output):
            raise _Boom("target exploded")

    monkeypatch.setattr(targets, "grad_cam_target", lambda *a, **k: Raising())
    with pytest.raises(_Boom):
        Explainer(effnet, chelsea_crop(224), None, LAYERS)
    assert hook_count(effnet.module) == before


def test_no_hooks_after_a_target_that_raises_inside_scorecam(effnet, monkeypatch):
    """The shared pass succeeds; the target then raises on Score-CAM's third batch."""
    before = hook_count(effnet.module)
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=4)
    calls = {"n": 0}
    real = ex.grad_target

    def flaky(output):
        calls["n"] += 1
        if calls["n"] > 8:
            raise _Boom("target exploded in a batch")
        return real(output)

    ex.grad_target = flaky
    with pytest.raises(_Boom):
        ex.heatmap("scorecam", "stage0")
    assert calls["n"] > 8
    assert hook_count(effnet.module) == before
    # The model is still usable, and the same Explainer still answers other methods.
    assert ex.heatmap("gradcam", "stage0").map.shape == (224, 224)


def test_unknown_layer_is_refused_before_any_hook(effnet):
    before = hook_count(effnet.module)
    with pytest.raises(ModelError, match="no_such_layer"):
        Explainer(effnet, chelsea_crop(224), None, ("stage0", "no_such_layer"))
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",))
    with pytest.raises(CamError):
        ex.heatmap("gradcam", "no_such_layer")
    assert hook_count(effnet.module) == before


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_cancel_before_and_during_a_perturbation_method(effnet, method):
    before = hook_count(effnet.module)
    layer = effnet.layer_module("stage0")
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=8)  # 16 channels: 2 batches
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        ex.heatmaps([method], ["stage0"], cancel=cancel)
    assert hook_count(effnet.module) == before

    # Cancelled mid-way: the progress callback sets the event after the first (one-channel) batch.
    during = threading.Event()
    seen = []

    def progress(fraction, message):
        seen.append(message)
        during.set()

    with pytest.raises(Cancelled):
        ex.heatmap(method, "stage0", progress=progress, cancel=during)
    assert len(seen) == 1 and seen[0].endswith(": 1/16 channels"), seen  # the first batch times one forward
    assert hook_count(effnet.module) == before
    assert effnet.module.get_submodule("blocks.0") is layer
    assert not ex.is_cached(method, "stage0"), "a cancelled map must not be memoised"
    # A later run without cancel completes.
    assert ex.heatmap(method, "stage0").map.shape == (224, 224)


class _WatchedLock:
    """The model's lock, watched: which thread holds it, and an event set when a thread other
    than the test's starts asking for it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._test_thread = threading.get_ident()
        self.owner: int | None = None
        self.depth = 0
        self.asked = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if threading.get_ident() != self._test_thread:
            self.asked.set()
        ok = self._lock.acquire(blocking, timeout)
        if ok:
            self.owner, self.depth = threading.get_ident(), self.depth + 1
        return ok

    def release(self) -> None:
        self.depth -= 1
        if not self.depth:
            self.owner = None
        self._lock.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def held_here(self) -> bool:
        return self.owner == threading.get_ident()


def test_hooks_registered_only_while_holding_the_model_lock(effnet, monkeypatch):
    """Hooks of one session must never fire on another session's forward: the engine registers
    them under the model's lock. No sleeps: the thread says when it asks for the lock and when
    it has registered its hooks, and every registration records whether it held the lock."""
    before = hook_count(effnet.module)
    lock = _WatchedLock()
    monkeypatch.setattr(effnet, "lock", lock)
    worker = threading.Thread(target=lambda: Explainer(effnet, chelsea_crop(224), None, LAYERS))
    held_at_registration: list[bool] = []
    hooked = threading.Event()  # set by the thread once it has registered a hook
    real_register = torch.nn.Module.register_forward_hook

    def watched_register(module, *args, **kwargs):
        handle = real_register(module, *args, **kwargs)
        if threading.current_thread() is worker:
            held_at_registration.append(lock.held_here())
            hooked.set()
        return handle

    monkeypatch.setattr(torch.nn.Module, "register_forward_hook", watched_register)
    with lock:
        worker.start()
        assert lock.asked.wait(120), "the thread never asked for the model's lock"
        # It now waits for the lock this thread holds: whatever it registered before asking is visible.
        assert not hooked.is_set(), "hooks registered before taking the model lock"
        assert hook_count(effnet.module) == before
    assert hooked.wait(120), "the thread never registered its hooks"
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert held_at_registration and all(held_at_registration), held_at_registration
    assert hook_count(effnet.module) == before

