"""Faithfulness and bias scores: equal to pytorch_grad_cam.metrics on the same inputs, and the
object-share helpers on masks and boxes."""
from __future__ import annotations

import numpy as np
import pytest
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst

from cam_support import FACE_BOX, chelsea, chelsea_crop, chelsea_small
from camcore import engine, judge, metrics, models


@pytest.fixture(scope="module")
def explainer() -> engine.Explainer:
    return engine.Explainer(models.load_model("efficientnet_lite0"), chelsea_crop(), None, ("head",))


def test_faithfulness_equals_the_library_metric(explainer):
    ex = explainer
    h = ex.heatmap("gradcam", "head")
    cams = metrics.input_map(h.map, ex.input_hw)[None]
    module = ex.model.module
    keep = CamMultImageConfidenceChange()(ex.x, cams, [ex.grad_target], module)[0]
    remove = CamMultImageConfidenceChange()(ex.x, 1 - cams, [ex.grad_target], module)[0]
    f = ex.faithfulness("gradcam", "head")
    assert f.keep_change == pytest.approx(float(keep), abs=1e-5)
    assert f.remove_change == pytest.approx(float(remove), abs=1e-5)
    assert f.original_score == pytest.approx(float(ex.grad_target(module(ex.x)[0])), abs=1e-5)
    assert ex.faithfulness("gradcam", "head") is f  # memoised: the grid never recomputes it


def _library_faithfulness(ex: engine.Explainer, h) -> tuple[float, float]:
    cams = metrics.input_map(h.map, ex.input_hw)[None]
    module = ex.model.module
    keep = CamMultImageConfidenceChange()(ex.x, cams, [ex.grad_target], module)[0]
    remove = CamMultImageConfidenceChange()(ex.x, 1 - cams, [ex.grad_target], module)[0]
    return float(keep), float(remove)


@pytest.mark.parametrize("model, size, layers", [("efficientnet_lite0", None, ("head",)),
                                                 ("deeplabv3", 32, ("layer1", "layer4"))])
def test_faithfulness_of_several_maps_is_one_batched_forward_equal_to_the_library(model, size, layers):
    """The library's metric runs the unchanged input again on each call (five forwards a map): the
    explainer takes the original score from its pass and runs every map's two perturbed inputs in
    one batched forward, with the library's values (a segmentation score is a sum over the mask:
    compared relatively)."""
    ex = engine.Explainer(models.load_model(model, "untrained" if model == "deeplabv3" else "auto"),
                          chelsea_small(32, 48) if size else chelsea_crop(), None, layers, input_size=size)
    maps = [ex.heatmap(method, layer) for method in ("gradcam", "xgradcam") for layer in layers]
    batches: list[int] = []
    handle = ex.model.module.register_forward_hook(lambda _m, args, _out: batches.append(int(args[0].shape[0])))
    try:
        got = ex.faithfulness_of(maps)
        assert ex.faithfulness_of(maps) == got  # memoised
    finally:
        handle.remove()
    assert batches == [2 * len(maps)], batches
    original = float(ex.grad_target(ex.model.module(ex.x)[0]))
    for h, f in zip(maps, got, strict=True):
        keep, remove = _library_faithfulness(ex, h)
        scale = max(1.0, abs(original))
        assert f.original_score == pytest.approx(original, abs=1e-5 * scale)
        assert f.keep_change == pytest.approx(keep, abs=1e-5 * scale)
        assert f.remove_change == pytest.approx(remove, abs=1e-5 * scale)


def test_road_equals_the_library_metric(explainer):
    ex = explainer
    h = ex.heatmap("gradcam", "head")
    cams = metrics.input_map(h.map, ex.input_hw)[None]
    curve = metrics.road(ex.model, ex.x, h.map, ex.grad_target, percentiles=(50,))
    morf = ROADMostRelevantFirst(50)(ex.x, cams, [ex.grad_target], ex.model.module)[0]
    lerf = ROADLeastRelevantFirst(50)(ex.x, cams, [ex.grad_target], ex.model.module)[0]
    # the imputer adds noise: the library's own two calls differ slightly too
    assert curve.morf[0][1] == pytest.approx(float(morf), abs=0.5)
    assert curve.lerf[0][1] == pytest.approx(float(lerf), abs=0.5)
    assert curve.combined == pytest.approx((curve.lerf[0][1] - curve.morf[0][1]) / 2)


def test_mass_inside_and_the_background_flag():
    heat = np.zeros((10, 20), np.float32)
    heat[:, :5] = 1.0  # all mass on the left quarter
    mask = np.zeros((10, 20), bool)
    mask[:, :10] = True
    assert metrics.mass_inside(heat, mask) == pytest.approx(1.0)
    assert metrics.mass_inside(heat, ~mask) == pytest.approx(0.0)
    assert metrics.mass_inside(np.zeros_like(heat), mask) == 0.0
    assert metrics.background_dominated(0.3, 0.5) and not metrics.background_dominated(0.7, 0.5)
    # a mask at another resolution is resized to the heatmap's
    assert metrics.mass_inside(heat, np.repeat(np.repeat(mask, 2, 0), 2, 1)) == pytest.approx(1.0)


def test_boxes_mask_uses_fiftyone_relative_boxes():
    m = metrics.boxes_mask((100, 200), [[0.25, 0.5, 0.5, 0.25]])
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (50, 74, 50, 149)


def test_ranking_puts_background_focused_samples_first():
    model = models.load_model("efficientnet_lite0")
    img = chelsea()
    h, w = img.size
    x0, y0, x1, y1 = FACE_BOX
    face = (x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h)
    corner = (0.0, 0.0, 0.2, 0.2)  # a box on background/fur: little of the heatmap falls there
    items = [judge.SampleItem("face", img.path, (face,)), judge.SampleItem("corner", img.path, (corner,)),
             judge.SampleItem("nobox", img.path, ()), judge.SampleItem("missing", "/nonexistent.png", ())]
    seen = []
    rows = judge.rank_by_share_inside(model, items, "gradcam", "head", "Egyptian cat",
                                      progress=lambda f, m: seen.append(f))
    assert [r.sample_id for r in rows][:2] == ["corner", "face"]
    assert rows[0].background_dominated and not rows[1].background_dominated
    assert rows[1].share_inside > 0.5
    nobox = next(r for r in rows if r.sample_id == "nobox")
    assert nobox.share_inside is None and nobox.mask_source == "no boxes for this class"
    missing = next(r for r in rows if r.sample_id == "missing")
    assert missing.heatmap is None and "not found" in missing.error
    assert seen[-1] == 1.0


def test_ranking_progress_moves_per_sample_with_a_rate_and_what_is_left():
    """Issue 23 design 3: the ranking's progress was a bare "8/50" per batch of 8, still for 45 s."""
    model = models.load_model("efficientnet_lite0")
    img = chelsea()
    items = [judge.SampleItem(f"s{i}", img.path, ((0.0, 0.0, 0.5, 0.5),)) for i in range(5)]
    said: list[tuple[float, str]] = []
    judge.rank_by_share_inside(model, items, "gradcam", "head", "Egyptian cat", batch=8,
                               progress=lambda f, m: said.append((f, m)))
    fractions = [f for f, _m in said]
    assert len(set(fractions)) >= 6, said  # 0, each of the 5 samples, done: not once per batch
    assert fractions == sorted(fractions)
    assert said[0][1].startswith("0 of 5 samples · running the model on samples 1-5")
    later = [m for _f, m in said[1:-1]]
    assert later and all("/s · ETA " in m for m in later), later


def test_ranking_with_ground_truth_masks_at_another_resolution():
    model = models.load_model("efficientnet_lite0")
    img = chelsea()
    h, w = img.size
    x0, y0, x1, y1 = FACE_BOX
    face = np.zeros((h // 2, w // 2), bool)  # a label mask at half the image's resolution
    face[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = True
    corner = np.zeros((h // 2, w // 2), bool)
    corner[: h // 10, : w // 10] = True
    empty = np.zeros((10, 10), bool)
    items = [judge.SampleItem("face", img.path, (), face), judge.SampleItem("corner", img.path, (), corner),
             judge.SampleItem("empty", img.path, (), empty)]
    rows = judge.rank_by_share_inside(model, items, "gradcam", "head", "Egyptian cat")
    assert [r.sample_id for r in rows] == ["corner", "face", "empty"]
    assert rows[1].mask_source == "label mask" and rows[1].share_inside > 0.5
    assert rows[0].background_dominated
    assert rows[2].share_inside is None and rows[2].mask_source == "class not in the label mask"


@pytest.mark.parametrize("labels, cls, expected", [
    (["background", "cat", "dog"], "tabby cat", 1),
    (["background", "object"], "jersey", 1),  # no name matches: the first non-background label
    (["0", "1", "2"], "jersey", 1),
    (["Dog", "CAT"], "Egyptian cat", 1),
    (["background"], "jersey", 0),
    ([], "jersey", 0),
])
def test_guess_object_label(labels, cls, expected):
    assert judge.guess_object_label(labels, cls) == expected
