"""The engine on real models: a trained model's Grad-CAM lands on the object, every method works
on every model (or is refused by the registry), hooks and swapped layers never outlive a call,
and targets are chosen as documented."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cam_support import FACE_BOX, chelsea, chelsea_crop, chelsea_small, hook_count
from pytorch_grad_cam import ShapleyCAM

from camcore import targets
from camcore.engine import ALL_LAYERS, Explainer, grid_pairs, iter_heatmaps
from camcore.engine import explainer as explainer_mod
from camcore.errors import CamError, MethodError, TargetError
from camcore.methods import METHODS, Kind
from camcore.models import MODELS, load_model
from camcore.results import ClassScore, Prediction

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def explain(loaded, image, methods, layers, target=None, aug_smooth=False, eigen_smooth=False,
            input_size=None):
    """Every method on every layer from one shared pass, as the CLI asks for them."""
    ex = Explainer(loaded, image, target, tuple(layers), aug_smooth, input_size)
    return ex.result(*ex.heatmaps(methods, layers, eigen_smooth))


def _weights(model: str) -> str:
    return "auto" if model == "efficientnet_lite0" else "untrained"  # no hub here: only this one is real


# ---------------------------------------------------------------- a trained model finds the cat


@pytest.fixture(scope="module")
def cat_result():
    loaded = load_model("efficientnet_lite0", "auto", "cpu")
    assert loaded.pretrained, "the packaged EfficientNet-Lite0 weights must load offline"
    return explain(loaded, chelsea(), ["gradcam"], ["head"])


def test_pretrained_prediction_on_chelsea_is_a_cat(cat_result):
    top = cat_result.prediction.top
    assert top.name in CAT_CLASSES, f"top-1 is {top.name!r}"
    assert sum(c.score for c in cat_result.prediction.classes if c.name in CAT_CLASSES) > 0.5
    assert cat_result.target.index == top.index and "top-1" in cat_result.target.rule
    assert cat_result.pretrained and "ImageNet" in cat_result.weights


def test_gradcam_on_chelsea_lands_on_the_cats_face(cat_result):
    h = cat_result.find("gradcam", "head")
    m = h.map
    assert m.shape == (300, 451) and m.dtype == np.float32 and np.isfinite(m).all()
    assert m.min() >= 0 and m.max() == pytest.approx(1.0, abs=1e-3)
    x0, y0, x1, y1 = FACE_BOX
    inside = np.zeros(m.shape, bool)
    inside[y0:y1, x0:x1] = True
    py, px = np.unravel_index(np.argmax(m), m.shape)
    assert inside[py, px], f"peak at (x={px}, y={py}), outside the face box {FACE_BOX}"
    ratio = m[inside].mean() / m[~inside].mean()
    assert ratio > 2.0, f"mean heatmap on the face is only {ratio:.2f}x the mean elsewhere"
    # The blurred background right of the cat holds little of the map.
    assert m[:, 390:].mean() < 0.5 * m[inside].mean()


def test_heatmaps_for_another_class_differ(cat_result):
    loaded = load_model("efficientnet_lite0", "auto", "cpu")
    other = explain(loaded, chelsea(), ["gradcam"], ["head"], target="espresso")
    assert other.target.name == "espresso" and other.target.rule == "chosen"
    assert np.abs(other.heatmaps[0].map - cat_result.heatmaps[0].map).mean() > 0.05


# ---------------------------------------------------------------- every method on every model

# (image, input_size, small layer for perturbation methods, default layer)
SETUPS = {
    "deeplabv3": (lambda: chelsea_small(32, 48), 32, "layer1", "layer4"),
    "deit_tiny": (lambda: chelsea_crop(224), None, "block11", "block11"),
    "efficientnet_lite0": (lambda: chelsea_crop(224), None, "stage0", "head"),
}
# The perturbation methods on DeepLabV3: one forward per channel of layer1 (256), each the cost of
# the input; at 16x24 the map is still far from flat (tests/test_reference.py), at half the CPU.
PERTURBATION_IMAGES = {"deeplabv3": (lambda: chelsea_small(16, 24), 16)}
_explainers: dict[tuple[str, bool], Explainer] = {}


def explainer_for(model: str, perturbation: bool = False) -> Explainer:
    perturbation = perturbation and model in PERTURBATION_IMAGES
    if (model, perturbation) not in _explainers:
        make_image, size, small, default = SETUPS[model]
        if perturbation:
            make_image, size = PERTURBATION_IMAGES[model]
            loaded = explainer_for(model).model  # the same model, another image
        else:
            loaded = load_model(model, _weights(model), "cpu")
        _explainers[model, perturbation] = Explainer(
            loaded, make_image(), None, tuple(dict.fromkeys((small, default))), input_size=size, batch_size=64
        )
    return _explainers[model, perturbation]


def _matrix():
    for model in MODELS:
        if MODELS[model].task == "detection":  # a box target: tests/test_detection.py
            continue
        for key, spec in METHODS.items():
            marks = [pytest.mark.slow] if spec.slow else []
            yield pytest.param(model, key, id=f"{model}-{key}", marks=marks)


@pytest.fixture
def no_release_on_gc(monkeypatch):
    """pytorch-grad-cam's CAM objects release their hooks in __del__, so in CPython a forgotten
    release would be hidden by garbage collection. Without it, only the engine's own release
    can remove them: the hook counts below then test the engine."""
    from pytorch_grad_cam import FinerCAM
    from pytorch_grad_cam.base_cam import BaseCAM

    monkeypatch.setattr(BaseCAM, "__del__", lambda self: None)
    monkeypatch.setattr(FinerCAM, "__del__", lambda self: None)


@pytest.mark.parametrize("model, method", list(_matrix()))
def test_every_method_on_every_model(model, method, no_release_on_gc):
    spec = METHODS[method]
    ex = explainer_for(model, spec.kind is Kind.PERTURBATION)
    _, _, small, default = SETUPS[model]
    layer = small if spec.kind is Kind.PERTURBATION else default
    before = hook_count(ex.model.module)
    reason = spec.unsupported_reason(ex.model.spec.task, ex.model.spec.family)
    if reason:
        with pytest.raises(MethodError) as err:
            ex.heatmap(method, layer)
        assert str(err.value) == reason and "\n" not in reason
        return
    h = ex.heatmap(method, layer)
    assert h.method == method and h.layer == (ALL_LAYERS if spec.layer_independent else layer)
    assert h.map.shape == ex.image.size and h.map.dtype == np.float32
    assert np.isfinite(h.map).all() and h.map.min() >= 0 and h.map.max() <= 1
    assert np.isfinite(h.raw).all() and h.raw_range[0] <= h.raw_range[1]
    assert h.target == ex.target
    assert hook_count(ex.model.module) == before, f"{method} left hooks on {model}"
    assert not ex.model.module.training
    assert ex.heatmap(method, layer) is h, "heatmaps are memoised"


def test_methods_for_lists_exactly_the_supported_ones():
    from camcore.methods import methods_for

    for spec in MODELS.values():
        ok = {m.key for m in methods_for(spec.task, spec.family)}
        assert ok == {k for k, m in METHODS.items() if m.unsupported_reason(spec.task, spec.family) is None}
    assert "fullgrad" not in {m.key for m in methods_for("classification", "vit")}
    assert "finercam" not in {m.key for m in methods_for("segmentation", "cnn")}


def test_aug_smooth_on_segmentation_gives_a_map():
    loaded = load_model("deeplabv3", "untrained", "cpu")
    result = explain(loaded, chelsea_small(32, 48), ["gradcam"], ["layer4"], aug_smooth=True, input_size=32)
    h = result.heatmaps[0]
    assert h.aug_smooth and h.map.shape == (32, 48) and np.isfinite(h.map).all()


def test_input_size_scales_the_segmentation_input():
    loaded = load_model("deeplabv3", "untrained", "cpu")
    result = explain(loaded, chelsea_small(40, 60), ["eigencam"], ["layer4"], input_size=32)
    assert result.input_size == (32, 48) and result.image_size == (40, 60)
    assert result.heatmaps[0].map.shape == (40, 60)
    assert not result.pretrained and "UNTRAINED" in result.weights


# ---------------------------------------------------------------- hooks, swapped layers, grads


@pytest.fixture(scope="module")
def effnet():
    return load_model("efficientnet_lite0", "auto", "cpu")


def _no_param_grads(module: torch.nn.Module) -> bool:
    return all(p.grad is None for p in module.parameters())


def test_no_hooks_or_grads_left_after_success(effnet, no_release_on_gc):
    before = hook_count(effnet.module)
    result = explain(
        effnet,
        chelsea_crop(224),
        ["gradcam", "eigencam", "fullgrad", "shapleycam", "finercam", "scorecam", "ablationcam"],
        ["stage0"],
    )
    assert len(result.heatmaps) == 7 and not result.errors
    assert hook_count(effnet.module) == before
    assert _no_param_grads(effnet.module), "a CAM left parameter gradients on the shared model"
    assert effnet.layer_module("stage0") is effnet.module.blocks[0]


def test_no_hooks_left_after_a_target_error(effnet):
    before = hook_count(effnet.module)
    with pytest.raises(TargetError):
        Explainer(effnet, chelsea_crop(224), "no such class", ("head", "stage3"))
    assert hook_count(effnet.module) == before


def test_no_hooks_left_when_the_forward_fails(effnet):
    before = hook_count(effnet.module)
    bad = chelsea_crop(224)
    original = explainer_mod.preprocess

    def wrong_channels(spec, rgb, size=None, device=None):
        return original(spec, rgb, size, device)[:, :2]  # a 2-channel tensor: the stem conv raises

    explainer_mod.preprocess = wrong_channels
    try:
        with pytest.raises(RuntimeError):
            Explainer(effnet, bad, None, ("head", "stage3"))
    finally:
        explainer_mod.preprocess = original
    assert hook_count(effnet.module) == before


class _ExplodingShapley(ShapleyCAM):
    """Raises IndexError after its hooks are registered and the forward ran: `with` would
    swallow exactly this error type."""

    def compute_cam_per_layer(self, *args, **kwargs):
        raise IndexError("boom inside the library")


def test_no_hooks_left_after_a_library_method_raises(effnet, monkeypatch, no_release_on_gc):
    import pytorch_grad_cam

    monkeypatch.setattr(pytorch_grad_cam, METHODS["shapleycam"].library_class, _ExplodingShapley)
    ex = Explainer(effnet, chelsea_crop(224), None, ("head",))
    before = hook_count(effnet.module)
    with pytest.raises(IndexError, match="boom"):
        ex.heatmap("shapleycam", "head")
    assert hook_count(effnet.module) == before
    assert _no_param_grads(effnet.module)
    # and the explainer still works afterwards
    assert np.isfinite(ex.heatmap("gradcam", "head").map).all()


def test_ablationcam_leaves_no_hook_when_it_fails(effnet, monkeypatch):
    from camcore import perturbation

    ex = Explainer(effnet, chelsea_crop(224), None, ("stage0",), batch_size=8)  # 16 channels: 2 batches
    layer = effnet.layer_module("stage0")
    before = hook_count(effnet.module)
    calls = []
    real_copies = perturbation.ablated_copies

    def explode_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom mid-ablation")
        return real_copies(*args, **kwargs)

    monkeypatch.setattr(perturbation, "ablated_copies", explode_on_second_batch)
    with pytest.raises(RuntimeError, match="mid-ablation"):
        ex.heatmap("ablationcam", "stage0")
    monkeypatch.undo()
    assert len(calls) == 2
    assert effnet.module.get_submodule("blocks.0") is layer
    assert hook_count(effnet.module) == before

    # The model still computes what it computed before, and the method works afterwards.
    again = Explainer(effnet, chelsea_crop(224), None, ("stage0",))
    assert again.prediction.top.index == ex.prediction.top.index
    assert np.isfinite(ex.heatmap("ablationcam", "stage0").map).all()


def test_heatmaps_reports_failing_pairs_and_keeps_the_others(effnet):
    ex = Explainer(effnet, chelsea_crop(224), None, ("head",))
    done, errors = ex.heatmaps(["gradcam", "eigencam"], ["head", "no-such-layer"])
    assert [(h.method, h.layer) for h in done] == [("gradcam", "head"), ("eigencam", "head")]
    assert len(errors) == 2 and all("no-such-layer" in e for e in errors)


def test_unknown_names_are_rejected_before_computing(effnet):
    with pytest.raises(CamError, match="no layer"):
        Explainer(effnet, chelsea_crop(224), None, ("layer4",))
    ex = Explainer(effnet, chelsea_crop(224), None, ("head",))
    with pytest.raises(MethodError, match="Unknown method"):
        ex.heatmap("gradcamm", "head")
    asked = []
    [step] = iter_heatmaps(ex, [("gradcamm", "head")], progress_for=lambda *a: asked.append(a))
    assert isinstance(step.exception, MethodError) and "Unknown method" in step.error
    assert step.heatmap is None and not asked, "nothing is started for an unknown method"


def test_iter_heatmaps_one_step_per_pair_in_order(effnet):
    ex = Explainer(effnet, chelsea_crop(224), None, ("head", "stage0"))
    pairs = grid_pairs(["gradcam", "fullgrad", "eigencam"], ["head", "stage0"])
    asked = []
    steps = list(iter_heatmaps(ex, pairs, progress_for=lambda i, m, layer: asked.append((i, m, layer))))
    assert [(s.index, s.method, s.layer) for s in steps] == [(i, m, layer) for i, (m, layer) in enumerate(pairs)]
    assert asked == [(i, m, layer) for i, (m, layer) in enumerate(pairs)]
    assert all(s.exception is None and s.heatmap is not None for s in steps)
    # FullGrad's one map serves every layer: yielded again, flagged as a repeat
    assert [s.repeat for s in steps] == [False, False, False, True, False, False]
    assert steps[3].heatmap is steps[2].heatmap and steps[2].heatmap.layer == ALL_LAYERS


def test_iter_heatmaps_stops_on_cancel(effnet):
    import threading

    from camcore.errors import Cancelled

    ex = Explainer(effnet, chelsea_crop(224), None, ("head",))
    cancel = threading.Event()
    steps = iter_heatmaps(ex, [("gradcam", "head"), ("eigencam", "head")], cancel=cancel)
    assert next(steps).heatmap is not None
    cancel.set()
    with pytest.raises(Cancelled):
        next(steps)
    assert not ex.is_cached("eigencam", "head")


def test_iter_heatmaps_refuses_an_unsupported_method_without_starting_it(effnet, monkeypatch):
    monkeypatch.setitem(METHODS, "xgradcam", dataclasses.replace(METHODS["xgradcam"], families=("vit",)))
    ex = Explainer(effnet, chelsea_crop(224), None, ("head",))
    asked = []
    refused, ok = iter_heatmaps(ex, [("xgradcam", "head"), ("gradcam", "head")],
                                progress_for=lambda *a: asked.append(a))
    reason = METHODS["xgradcam"].unsupported_reason("classification", "cnn")
    assert isinstance(refused.exception, MethodError) and refused.error == f"xgradcam on head: {reason}"
    assert ok.heatmap is not None and asked == [(1, "gradcam", "head")]


# ---------------------------------------------------------------- targets

VOC = MODELS["deeplabv3"].class_names()


def _seg_prediction(counts: dict[str, int]) -> Prediction:
    """A segmentation Prediction with these pixel counts (largest first), like targets.predict."""
    total = sum(counts.values())
    classes = tuple(
        ClassScore(VOC.index(n), n, c / total) for n, c in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    return Prediction("segmentation", classes, mask=np.zeros((4, 4), np.int32))


def _logits(layout: np.ndarray) -> torch.Tensor:
    """21 x H x W logits whose argmax is `layout`."""
    out = torch.zeros(len(VOC), *layout.shape)
    for idx in np.unique(layout):
        out[int(idx)][torch.from_numpy(layout == idx)] = 5.0
    return out


def test_segmentation_default_is_person_when_predicted_even_if_small():
    layout = np.full((10, 10), VOC.index("dog"))
    layout[:2, :2] = VOC.index("person")
    layout[7:, :] = 0  # background: 30 px, dog 66 px, person 4 px
    pred = targets.predict("segmentation", _logits(layout), VOC, (20, 20))
    assert [c.name for c in pred.classes] == ["dog", "__background__", "person"]
    assert pred.mask.shape == (20, 20)
    t = targets.choose_target(pred, VOC, None)
    assert (t.name, t.note) == ("person", "") and "person" in t.rule


def test_segmentation_default_without_person_is_the_largest_foreground_class():
    t = targets.choose_target(_seg_prediction({"__background__": 80, "cat": 5, "dog": 15}), VOC, None)
    assert t.name == "dog" and "largest" in t.rule
    t = targets.choose_target(_seg_prediction({"__background__": 100}), VOC, None)
    assert t.index == 0 and "only background" in t.rule


def test_segmentation_any_class_by_name_and_the_whole_image_fallback():
    pred = _seg_prediction({"__background__": 80, "dog": 20})
    t = targets.choose_target(pred, VOC, "Cat")
    assert (t.name, t.rule) == ("cat", "chosen") and "not predicted" in t.note
    output = _logits(np.zeros((6, 6), int))
    grad_target = targets.grad_cam_target("segmentation", t, output)
    assert grad_target.category == VOC.index("cat") and grad_target.mask.all(), (
        "empty mask must become everything"
    )
    t = targets.choose_target(pred, VOC, "dog")
    assert t.note == ""


def test_segmentation_target_through_the_engine():
    loaded = load_model("deeplabv3", "untrained", "cpu")
    ex = Explainer(loaded, chelsea_small(32, 48), "cat", ("layer4",), input_size=32)
    assert ex.target.name == "cat" and ex.target.rule == "chosen"
    assert ex.grad_target.category == VOC.index("cat")
    auto = Explainer(loaded, chelsea_small(32, 48), None, ("layer4",), input_size=32)
    assert (auto.target.index, auto.target.rule) == targets.default_target(auto.prediction, VOC)
    assert auto.prediction.mask.shape == (32, 48)


@pytest.mark.parametrize("request_, hint", [("persn", "person"), ("motorbik", "motorbike"), ("dogg", "dog")])
def test_unknown_segmentation_class_suggests_a_name(request_, hint):
    with pytest.raises(TargetError) as err:
        targets.class_index(VOC, request_)
    msg = str(err.value)
    assert request_ in msg and f"Did you mean: {hint}" in msg and "\n" not in msg


def test_unknown_class_through_the_engine_is_a_target_error(effnet):
    with pytest.raises(TargetError, match="Did you mean: tabby"):
        Explainer(effnet, chelsea_crop(224), "tabbby", ("head",))
    with pytest.raises(TargetError, match="out of range"):
        Explainer(effnet, chelsea_crop(224), 5000, ("head",))


def test_classification_top1_default_and_by_name(effnet):
    ex = Explainer(effnet, chelsea_crop(224), None, ("head",))
    assert ex.target.index == ex.prediction.classes[0].index and "top-1" in ex.target.rule
    assert len(ex.prediction.classes) == targets.TOP_K
    names = effnet.spec.class_names()
    for request_ in ("tabby", "TABBY", "281", "281:tabby", 281):
        t = Explainer(effnet, chelsea_crop(224), request_, ("head",)).target
        assert (t.index, t.name, t.rule) == (281, names[281], "chosen")
