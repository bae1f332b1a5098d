"""Slow work that can be confirmed, followed and cancelled, and a model lock nobody waits behind
silently (camcore only: no Streamlit). The page side is in test_apptest.py and
test_browser_explore.py."""
from __future__ import annotations

import threading
import time

import fiftyone as fo
import numpy as np
import pytest
import torch
from cam_support import chelsea_crop
from fo_helpers import make_heatmap, make_result, unique_name, write_images

from camcore import modellock, perturbation, store
from camcore.engine import Deferred, Explainer
from camcore.errors import Cancelled
from camcore.models import load_model


@pytest.fixture(scope="module")
def effnet():
    return load_model("efficientnet_lite0", "auto", "cpu")


# -- the model's lock: whom a waiter waits for, and a cancel while it waits ----------------------

def test_a_waiter_is_told_who_holds_the_model_and_can_cancel():
    lock = threading.RLock()
    taken, release = threading.Event(), threading.Event()

    def other_session():
        with modellock.hold(lock, "efficientnet_lite0", "Score-CAM on head"):
            taken.set()
            release.wait(30)

    t = threading.Thread(target=other_session)
    t.start()
    try:
        assert taken.wait(30)
        busy = modellock.holder(lock)
        assert busy is not None and busy.what == "Score-CAM on head" and busy.model == "efficientnet_lite0"
        said: list[str] = []
        cancel = threading.Event()

        def progress(fraction, message):
            said.append(message)
            if len(said) == 2:
                cancel.set()  # the user's Cancel while waiting

        started = time.monotonic()
        with pytest.raises(Cancelled):
            with modellock.hold(lock, "efficientnet_lite0", "a model pass", progress, cancel):
                pytest.fail("took a lock another thread holds")
        assert time.monotonic() - started < 5  # within a poll or two, not when the other is done
        assert said and said[0].startswith("Waiting for another session's Score-CAM on head on efficientnet_lite0")
        assert "running since" in said[0]
    finally:
        release.set()
        t.join(30)
    assert modellock.holder(lock) is None
    with modellock.hold(lock, "m", "again"):  # free again, nothing left registered
        assert modellock.holder(lock).what == "again"


def test_scorecam_holds_the_model_per_batch_so_another_pass_runs_between(effnet, monkeypatch):
    """A pass of another session waits one batch of forwards at most, not the whole method."""
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=4)  # 16 channels: 4 batches
    holds: list[str] = []
    real = modellock.hold

    def watched(lock, model, what, *args, **kwargs):
        holds.append(what)
        return real(lock, model, what, *args, **kwargs)

    other = {}

    def progress(fraction, message):
        if "channels" in message and "pass" not in other:
            def other_session():  # must get the model now, between two batches
                other["pass"] = Explainer(effnet, chelsea_crop(224), None, ("stage3",))
            t = threading.Thread(target=other_session)
            t.start()
            t.join(60)
            other["done_between"] = not t.is_alive()

    monkeypatch.setattr(modellock, "hold", watched)
    ex.heatmap("scorecam", "stage0", progress=progress)
    assert other.get("done_between"), "another session's pass waited for the whole Score-CAM"
    assert holds.count("Score-CAM on stage0") >= 4, holds  # one hold per batch (+ eval)


def test_the_guard_wraps_every_batch_of_forwards():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    acts = model[1](model[0](x)).detach()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    entered = []

    class Guard:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    weights = perturbation.score_cam_weights(model, model[0], x, acts, ClassifierOutputTarget(1), batch_size=2,
                                             guard=Guard)
    assert weights.shape == (1, 6) and len(entered) == 4  # 6 channels: one timed, then batches of 2, 2 and 1


# -- deferred heatmaps and estimates ---------------------------------------------------------------

def test_a_deferred_heatmap_is_never_computed_implicitly(effnet):
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0", "head"))
    est = ex.estimate("scorecam", "head")
    assert est is not None and est.channels == 1280 and est.seconds > 0
    assert ex.estimate("gradcam", "head") is None  # not a one-forward-per-channel method
    ex.defer("scorecam", "stage0", False, "awaiting your go")
    with pytest.raises(Deferred, match="Score-CAM on stage0: awaiting your go"):
        ex.heatmap("scorecam", "stage0")
    assert not ex.is_cached("scorecam", "stage0")
    ex.allow("scorecam", "stage0", False)
    assert ex.allowed("scorecam", "stage0") and ex.deferred("scorecam", "stage0") is None
    assert ex.heatmap("scorecam", "stage0").map.shape == (224, 224)
    # a run measures the cost per channel: the next estimate on this model says "measured"
    again = Explainer(effnet, chelsea_crop(224), None, ("stage0",)).estimate("scorecam", "stage0")
    assert again.measured and again.channels == 16


def test_a_measured_rate_is_the_methods_on_that_layer(effnet, monkeypatch):
    """Ablation-CAM's cost per channel is the model after the layer (its copies share the layers
    before), Score-CAM's a whole forward: a run of one measures neither the other's rate nor its
    own on another layer."""
    from camcore.engine import explainer

    monkeypatch.setattr(explainer, "_PER_CHANNEL", {})  # what other tests in this process measured
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0", "stage5"))
    ex.heatmap("ablationcam", "stage5")
    assert ex.estimate("ablationcam", "stage5").measured
    assert not ex.estimate("scorecam", "stage5").measured
    assert not ex.estimate("ablationcam", "stage0").measured


def test_aug_smoothing_counts_and_follows_every_augmented_copy_and_a_cancel_stops_it(effnet, monkeypatch):
    """With aug_smooth Score-CAM runs once per augmented copy (six times the forwards): its estimate
    says so, its progress covers all six, and a cancel stops it after the batch under way. Before,
    the six runs reported no progress and ignored the cancel (Compare's all-methods study: Cancel
    took half a minute on DeiT), and the estimate counted one copy."""
    from camcore.engine import explainer

    monkeypatch.setattr(explainer, "_PER_CHANNEL", {})  # what other tests in this process measured
    assert len(list(explainer._tta_transforms())) == explainer.AUG_SMOOTH_PASSES == 6
    plain = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=4).estimate("scorecam", "stage0")
    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), aug_smooth=True, batch_size=4)  # 16 channels
    est = ex.estimate("scorecam", "stage0")
    assert (est.channels, est.copies, est.measured) == (16, 6, False)
    assert est.seconds == pytest.approx(6 * plain.seconds)

    seen: list[tuple[float, str]] = []
    ex.heatmap("scorecam", "stage0", progress=lambda f, m: seen.append((f, m)))
    assert seen, "no progress from Score-CAM with aug_smooth"
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0), seen
    assert [m for _, m in seen if m.endswith("augmented copy 6 of 6")], seen
    assert ex.estimate("scorecam", "stage0").measured  # the six copies' forwards measured the rate

    cancel = threading.Event()
    said: list[tuple[float, str]] = []

    def cut_in_the_second_copy(fraction: float, message: str) -> None:
        said.append((fraction, message))
        if message.endswith("augmented copy 2 of 6") and fraction > 1 / 6:
            cancel.set()

    again = Explainer(effnet, chelsea_crop(224), None, ("stage0",), aug_smooth=True, batch_size=4)
    with pytest.raises(Cancelled):
        again.heatmap("ablationcam", "stage0", progress=cut_in_the_second_copy, cancel=cancel)
    assert max(f for f, _ in said) < 2 / 6, said  # stopped in the second copy, not after all six
    assert not again.is_cached("ablationcam", "stage0")


# -- the FiftyOne App shows the field just pushed, with a heatmap colour scale -------------------

def test_the_app_shows_only_the_latest_push_with_a_colour_scale(tmp_path):
    size = (24, 32)
    files = write_images(tmp_path / "img", ["a.png"], size=size)
    ds = fo.Dataset(unique_name("app-fields"))
    try:
        ds.add_samples([fo.Sample(filepath=p) for p in files])
        ds.compute_metadata()
        ds.set_values("gt", {ds.first().id: fo.Classification(label="cat")}, key_field="id")
        sid = ds.first().id
        [first] = store.push_heatmaps(ds, sid, make_result(size, [make_heatmap(size, "gradcam")]),
                                      heatmap_dir=tmp_path / "hm")
        pair = make_result(size, [make_heatmap(size, "layercam"), make_heatmap(size, "xgradcam", seed=3)])
        second = store.push_heatmaps(ds, sid, pair, heatmap_dir=tmp_path / "hm")
        config = fo.load_dataset(ds.name).app_config
        active = config.active_fields
        # FiftyOne's default (the gt label) plus the newest map only (issue #21: one map at a time)
        assert active.exclude is False and active.paths == ["gt", second[-1]], active.paths
        scales = {c["path"]: c["name"] for c in config.color_scheme.colorscales}
        assert scales.get(first) == scales.get(second[0]) == "jet"
        # the full description stays on the field (the App shows it in the field's info)
        assert "CAM Explorer:" in (ds.get_field(first).description or "")
        assert np.isfinite(ds.first()[second[0]].range[1])
    finally:
        ds.delete()
