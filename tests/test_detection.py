"""Detection models (issue 24): torchvision's builders load untrained offline and compute every
offered method on a box; box rules; bad input is one clear line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cam_support import chelsea_small

from camcore import detection
from camcore.engine import Explainer
from camcore.errors import MethodError, TargetError
from camcore.images import from_array
from camcore.methods import METHODS, methods_for
from camcore.models import DETECTION_MODELS, load_model

# The two light builders run every offered method; the ResNet-50 ones are checked for their layers.
LIGHT = ("fasterrcnn_mobilenet_v3_large_fpn", "ssdlite320_mobilenet_v3_large")


def _low_threshold(loaded):
    """Untrained detectors often score every box under their own threshold: keep them all; and
    run Faster R-CNN at the test's small size (its transform resizes to 800 otherwise), SSDlite at
    160 px, not its fixed 320 (Score-CAM's and Ablation-CAM's 128 forwards each cost 4x at 320)."""
    for obj in (loaded.module, getattr(loaded.module, "roi_heads", None)):
        if obj is not None and hasattr(obj, "score_thresh"):
            obj.score_thresh = 0.0
    transform = loaded.module.transform
    if getattr(transform, "fixed_size", None):
        transform.fixed_size = (160, 160)
    else:
        transform.min_size, transform.max_size = (96,), 128
    return loaded


def _image():
    rng = np.random.default_rng(0)
    rgb = (rng.random((96, 128, 3)) * 60).astype(np.uint8)
    rgb[20:60, 30:90] = (220, 40, 40)
    return from_array(rgb)


def test_detection_models_are_built_in_with_coco_names():
    keys = {s.key for s in DETECTION_MODELS}
    assert {"fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn_v2",
            "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"} <= keys
    for spec in DETECTION_MODELS:
        assert spec.task == "detection" and spec.default_layer == "fpn"
        names = spec.class_names()
        assert len(names) == 91 and names[1] == "person"
        assert spec.to_dict()["task"] == "detection"


@pytest.mark.parametrize("key", LIGHT)
def test_builder_loads_untrained_and_computes_every_offered_method_on_a_box(key):
    loaded = _low_threshold(load_model(key, "untrained", "cpu"))
    assert not loaded.pretrained
    layers = ("fpn", loaded.spec.layers[0].name, loaded.spec.layers[-1].name)
    ex = Explainer(loaded, _image(), "top@0", layers, input_size=96)
    assert ex.prediction.task == "detection" and ex.prediction.boxes
    assert ex.target.box_ref == "det0" and ex.target.boxes[0] == ex.prediction.boxes[0].box
    offered = [m.key for m in methods_for("detection", "cnn")]
    assert {"gradcam", "eigencam", "eigengradcam"} <= set(offered)
    slow = [m for m in offered if METHODS[m].slow]  # one forward per channel: on one layer only
    assert {"scorecam", "ablationcam"} <= set(slow)
    heatmaps, errors = ex.heatmaps([m for m in offered if m not in slow], layers)
    # SSDlite's last FPN level (one level's channels); Faster R-CNN resizes every input to 800 px, so
    # its 256 FPN channels would take minutes: its first stage (24 channels) instead
    slow_layer = layers[-1] if key.startswith("ssdlite") else layers[1]
    more, errors2 = ex.heatmaps(slow, (slow_layer,))
    assert not errors and not errors2, (errors, errors2)
    heatmaps += more
    assert len(heatmaps) == (len(offered) - len(slow)) * len(layers) + len(slow)
    for h in heatmaps:
        assert h.map.shape == (96, 128) and np.isfinite(h.map).all() and 0 <= h.map.min() <= h.map.max() <= 1
        assert "det0" in h.identity.target


def test_methods_that_do_not_fit_a_detector_say_why():
    loaded = _low_threshold(load_model(LIGHT[0], "untrained", "cpu"))
    ex = Explainer(loaded, _image(), "top@0", ("fpn",), input_size=96)
    for key in ("fullgrad", "finercam"):
        with pytest.raises(MethodError) as err:
            ex.heatmap(key, "fpn")
        assert "\n" not in str(err.value)
    assert "detection" in METHODS["gradcam"].tasks


def test_box_rules_parse_and_refuse():
    assert detection.parse_rule(None).kind == "top"
    assert detection.parse_rule("det:3@0.2") == detection.BoxRule("det", 0.2, index=3)
    rule = detection.parse_rule("box:person:0.1,0.2,0.3,0.4:ground_truth/abc")
    assert rule.rel_box == (0.1, 0.2, 0.3, 0.4) and rule.ref == "ground_truth/abc"
    assert detection.parse_rule(rule.text) == rule
    with pytest.raises(TargetError, match="outside the image"):
        detection.parse_rule("box:person:0.8,0.2,0.5,0.4")
    with pytest.raises(TargetError, match="Unknown box rule"):
        detection.parse_rule("biggest")


def _found():
    return (detection.Detection(0, 1, "person", 0.9, (10.0, 10.0, 50.0, 90.0)),
            detection.Detection(1, 18, "dog", 0.6, (60.0, 40.0, 120.0, 90.0)),
            detection.Detection(2, 1, "person", 0.2, (0.0, 0.0, 20.0, 20.0)))


def test_choose_boxes():
    names = detection.coco_class_names()
    top = detection.choose(detection.parse_rule("top"), _found(), names, (100, 128))
    assert top.name == "person" and top.ref == "det0" and top.score == 0.9
    dogs = detection.choose(detection.parse_rule("class:dog"), _found(), names, (100, 128))
    assert dogs.boxes == (_found()[1].box,)
    every = detection.choose(detection.parse_rule("all@0.1"), _found(), names, (100, 128))
    assert len(every.boxes) == 3
    # a field's box [x, y, w, h] relative, matched by IoU and label
    gt = detection.choose(detection.parse_rule("box:dog:0.47,0.4,0.47,0.5:ground_truth/d1"), _found(), names,
                          (100, 128))
    assert gt.ref == "ground_truth/d1" and gt.iou > 0.9 and gt.score == 0.6


@pytest.mark.parametrize("rule, message", [
    ("top@0.95", "No detection at score >= 0.95"),
    ("det:5", "Detection 5 does not exist"),
    ("class:zebra", "No 'zebra' detection"),
    ("box:cat:0.47,0.4,0.47,0.5", "best IoU 0.9"),
    ("box:unicorn:0.1,0.1,0.2,0.2", "does not know the label 'unicorn'"),
])
def test_bad_box_requests_are_one_line(rule, message):
    with pytest.raises(TargetError) as err:
        detection.choose(detection.parse_rule(rule), _found(), detection.coco_class_names(), (100, 128))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_detector_asked_for_a_class_and_a_classifier_asked_for_a_box_refuse():
    loaded = _low_threshold(load_model(LIGHT[0], "untrained", "cpu"))
    with pytest.raises(TargetError, match="class target"):
        Explainer(loaded, _image(), "person", ("fpn",), input_size=96)
    classifier = load_model("efficientnet_lite0", "auto", "cpu")
    with pytest.raises(TargetError, match="no boxes"):
        Explainer(classifier, chelsea_small(64, 64), "top", ("head",))


def test_no_detection_at_the_threshold_is_one_line():
    loaded = load_model(LIGHT[0], "untrained", "cpu")
    with pytest.raises(TargetError, match="No detection at score >= 1"):
        Explainer(loaded, _image(), "top@1", ("fpn",), input_size=96)


# ---------------------------------------------------------------- a trained detector points at the box

POINTING_SEEDS = range(12)


@pytest.fixture(scope="module")
def toy_detector():
    from detector_support import loaded_detector

    return loaded_detector()  # trained once (about 40 CPU s, one thread), then cached under /tmp


def test_the_toy_detector_is_the_same_whatever_the_random_state_before_it():
    """Every fresh cache holds the same detector: its first weights do not depend on what ran before."""
    import torch
    from detector_support import build

    torch.manual_seed(1)
    first = build().state_dict()
    torch.rand(100)
    again = build().state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_the_toy_detector_is_a_real_detector(toy_detector):
    """The pointing games below are about a detector that works: on held-out shapes (the training
    uses seeds 10000+) its top box is the shape's, with the right label."""
    import torch
    import torchvision
    from detector_support import synthetic

    right, ious = 0, []
    for seed in range(100):
        rgb, box, label = synthetic(seed)
        with torch.no_grad():
            out = toy_detector.module([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]
        assert len(out["boxes"]), f"no box on held-out image {seed}"
        ious.append(float(torchvision.ops.box_iou(torch.tensor([box], dtype=torch.float32), out["boxes"][:1])[0, 0]))
        right += int(out["labels"][0]) == label
    assert right >= 90 and np.mean(ious) >= 0.85, (right, np.mean(ious))


def _mass_inside(m: np.ndarray, box) -> float:
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = np.zeros(m.shape, bool)
    inside[max(0, y0):y1, max(0, x0):x1] = True
    return float(m[inside].sum() / max(m.sum(), 1e-9)), float(inside.mean())


def _pointing(toy_detector, rule_for, method: str) -> tuple[int, int]:
    from detector_support import CLASSES, image

    hits = tried = 0
    for seed in POINTING_SEEDS:
        img, box, label = image(seed)
        try:
            ex = Explainer(toy_detector, img, rule_for(box, label, CLASSES), ("conv2",))
        except TargetError:
            continue  # the model did not find (or mislabelled) this shape: nothing to explain
        h = ex.heatmap(method, "conv2")  # stride 4: the shapes span 4-6 cells
        mass, area = _mass_inside(h.map, ex.target.boxes[0])
        peak = np.unravel_index(np.argmax(h.map), h.map.shape)
        x0, y0, x1, y1 = ex.target.boxes[0]
        tried += 1
        hits += int(mass > max(0.5, 3 * area) and x0 - 2 <= peak[1] <= x1 + 2 and y0 - 2 <= peak[0] <= y1 + 2)
    return hits, tried


def _ground_truth_rule(box, label, classes):
    x0, y0, x1, y1 = box
    return f"box:{classes[label]}:{x0 / 64},{y0 / 64},{(x1 - x0) / 64},{(y1 - y0) / 64}:ground_truth/g{label}"


# Why Grad-CAM misses (bench/RESULTS.md, "why Grad-CAM misses the box", parts 1-3). Not our target (ours
# equals pytorch-grad-cam's GradCAM with FasterRCNNBoxScoreTarget: test below; at the model's own box the
# IoU term has no gradient: test below), not the layer (the same seeds miss on every backbone layer),
# not Grad-CAM's spatial averaging (HiResCAM / LayerCAM, which keep the gradient in place, do no
# better), not the softmax (the logit does worse), and not an undertrained detector (2026-12-04,
# bench/detection_toy_quality.py): v1's detector named 60 of 100 held-out shapes right; this fixture
# (a colour per class, 300 steps, seed 0) names 96 of 100 (top box IoU 0.93) and Grad-CAM's own-box game
# is 5 of 12 at conv2; the same recipe at 200 steps, seeds 0-3 (77, 96, 100, 100 of 100 right), gives
# 5 of 11, 7, 8 and 1 of 12, while Eigen-CAM gives 10-12 of 12 on every one. A box's class-score
# gradient says what makes the box this class rather than another, and which training run you get
# decides where that is. Nor the toy's single feature map, nor its noisy background (2026-12-04,
# bench/detection_fpn_levels.py): with a real 3-level FPN the box score's gradient lies on the one
# level its RoI is pooled from (other levels' Grad-CAM is blank, the fused map is that level's), and
# the own box gives 7/12 there (0-1/12 when boxes pool from coarse levels); trained and tested at
# noise 30 instead of 90, the toy's own box gives 5/12, and at any amplitude 0-150, 4-7/12.
GRADCAM_FINDING = pytest.mark.xfail(strict=False, reason=(
    "Grad-CAM of a detector's own box (pytorch-grad-cam's FasterRCNNBoxScoreTarget, which ours equals) "
    "is its class score's gradient (the IoU term has none there): what tells the class apart, not where "
    "the object is. Measured 2026-12-04, seeds 0-11, conv2, on this fixture (96 of 100 held-out labels "
    "right, IoU 0.93): 5 of 12 own boxes, 4 of 12 ground-truth boxes; the same recipe at 200 steps, seeds "
    "0-3: 1 to 8 of 12 (bench/detection_toy_quality.py --train --steps 200 --seed k); HiResCAM / LayerCAM no "
    "better. Eigen-CAM: 12 of 12. Not the toy's one level either: a 3-level FPN toy gives 7/12 own (its "
    "gradient is on the pooled level only; 0-1/12 where boxes pool from coarse levels), and not the "
    "background's noise: 4-7/12 own at every amplitude 0-150 (bench/detection_fpn_levels.py)"))


@pytest.mark.parametrize("method", [pytest.param("gradcam", marks=GRADCAM_FINDING), "eigencam"])
@pytest.mark.parametrize("rule_for", [_ground_truth_rule, lambda box, label, classes: "top"],
                         ids=["matched-ground-truth", "own-detection"])
def test_pointing_game_on_a_trained_detector(toy_detector, method, rule_for):
    hits, tried = _pointing(toy_detector, rule_for, method)
    assert tried >= 6, f"the toy detector matched only {tried} of {len(POINTING_SEEDS)} shapes"
    assert hits >= 0.8 * tried, f"{method}: mass inside the box on {hits} of {tried} images"


@pytest.mark.parametrize("layer", ["conv2", "body"])
def test_our_box_grad_cam_equals_pytorch_grad_cams_on_the_trained_detector(toy_detector, layer):
    """The pointing game's Grad-CAM is the library's: GradCAM hooked on the same module with
    FasterRCNNBoxScoreTarget for the same box gives the same map (the misses above are not ours)."""
    from detector_support import image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    for seed in (1, 2, 3):  # 1 and 3 are misses, 2 a hit
        img, _box, _label = image(seed)
        ex = Explainer(toy_detector, img, "top", (layer,))
        boxes = [np.asarray(b, dtype=np.float32) for b in ex.grad_target.boxes]
        with GradCAM(toy_detector.module, [toy_detector.layer_module(layer)]) as cam:
            library = cam(ex.x, [FasterRCNNBoxScoreTarget(ex.grad_target.labels, boxes)])[0]
        np.testing.assert_allclose(ex.heatmap("gradcam", layer).map, library, atol=1e-5, err_msg=f"seed {seed}")


def test_the_iou_term_has_no_gradient_at_the_models_own_box():
    """Why an own box's Grad-CAM is its softmax score's alone: IoU + score at the output's own box
    (IoU 1, its maximum) has gradient 0 with respect to the box and 1 to the score; a shifted box
    (a ground-truth box, IoU < 1) gets the box regression's gradient too."""
    import torch

    for shift, moves in ((0.0, False), (3.0, True)):
        boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0]], requires_grad=True)
        scores = torch.tensor([0.9], requires_grad=True)
        target = detection.BoxScoreTarget([1], [[10.0 + shift, 10.0, 40.0 + shift, 40.0]])
        target({"boxes": boxes, "scores": scores, "labels": torch.tensor([1])}).backward()
        assert float(scores.grad[0]) == pytest.approx(1.0)
        assert bool(boxes.grad.abs().sum() > 1e-4) is moves, (shift, boxes.grad)


def test_a_ground_truth_box_the_model_does_not_find_is_one_line_with_the_best_iou(toy_detector):
    from detector_support import image

    img, box, label = image(2)
    with pytest.raises(TargetError) as err:
        Explainer(toy_detector, img, "box:square:0,0,0.2,0.2:ground_truth/x", ("body",))
    assert "best IoU" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- CLI and push: the box is named

SSD = "ssdlite320_mobilenet_v3_large"


def _write_image(path):
    from PIL import Image

    Image.fromarray(_image().rgb).save(path)
    return str(path)


def test_cli_cam_prints_the_box_it_explained_and_refuses_mismatched_targets(tmp_path, capsys):
    from camcore import cli

    img = _write_image(tmp_path / "shape.png")
    code = cli.main(["cam", "--image", img, "--model", SSD, "--weights", "untrained", "--box", "top@0",
                     "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "box explained: det0" in out and "score" in out
    assert list((tmp_path / "out").glob("*det0*.png"))
    for argv, fragment in ((["--model", SSD, "--weights", "untrained", "--target", "person"], "not --target"),
                           (["--box", "top"], "--box is for detection models")):
        code = cli.main(["cam", "--image", img, *argv, "--out", str(tmp_path / "o2")])
        _, err = capsys.readouterr()
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_cli_push_prints_the_box_it_explained(tmp_path, capsys):
    """Issue 24 item 6: push, like cam, says which box its heatmaps explain (text and --json)."""
    import fiftyone as fo
    from fo_helpers import unique_name

    from camcore import cli

    ds = fo.Dataset(unique_name("det-push"))
    ds.add_sample(fo.Sample(filepath=_write_image(tmp_path / "shape.png")))
    base = ["push", "--dataset", ds.name, "--sample", ds.first().id, "--model", SSD, "--weights", "untrained",
            "--method", "eigencam", "--box", "det:1@0", "--heatmap-dir", str(tmp_path / "hm")]
    try:
        assert cli.main(base) == 0
        out = capsys.readouterr()[0]
        assert "box explained: det1" in out and "score" in out, out
        assert cli.main([*base, "--json"]) == 0
        report = _json(capsys.readouterr()[0])
        assert report["target"]["box_ref"] == "det1" and len(report["target"]["boxes"]) == 1, report
    finally:
        ds.delete()


def test_push_names_the_field_box_in_its_provenance(tmp_path):
    """A box of the sample's ground_truth, matched to the toy detector's output, pushed: the label
    names the detection id, field, label, score and IoU; a --box id:<id> reads the same box."""
    import fiftyone as fo
    from detector_support import CLASSES, image
    from fo_helpers import unique_name

    from camcore import store

    img, box, label = image(3)
    from PIL import Image

    path = str(tmp_path / "s.png")
    Image.fromarray(img.rgb).save(path)
    ds = fo.Dataset(unique_name("det"))
    x0, y0, x1, y1 = box
    det = fo.Detection(label=CLASSES[label], bounding_box=[x0 / 64, y0 / 64, (x1 - x0) / 64, (y1 - y0) / 64])
    sample = fo.Sample(filepath=path, ground_truth=fo.Detections(detections=[det]))
    ds.add_sample(sample)
    try:
        sample = ds.first()
        det_id = sample.ground_truth.detections[0].id
        rule = store.box_rule(sample, "field:ground_truth")
        assert rule == store.box_rule(sample, f"id:{det_id}") and rule.endswith(f"ground_truth/{det_id}")
        with pytest.raises(Exception, match="no detection with id"):
            store.box_rule(sample, "id:nope")
        from detector_support import loaded_detector

        ex = Explainer(loaded_detector(), img, rule, ("conv2",))
        h = ex.heatmap("eigencam", "conv2")
        fields = store.push_heatmaps(ds, sample.id, ex.result([h]), heatmap_dir=str(tmp_path / "hm"))
        stored = ds.first()[fields[0]]
        assert stored.box_detection_id == det_id and stored.box_field == "ground_truth"
        assert stored.box_label == CLASSES[label] and stored.box_iou > 0.5 and stored.box_score > 0
        assert stored.box == pytest.approx(det.bounding_box, abs=0.05)
        # ... and the way back (issue 24 item 7): the detection lists the heatmap's field, in the App too
        explained = ds.first().ground_truth.detections[0]
        assert explained.cam_heatmaps == [fields[0]] and explained.label == CLASSES[label]  # the rest untouched
        assert ds.get_field("ground_truth.detections.cam_heatmaps") is not None  # declared: the App lists it
        store.push_heatmaps(ds, sample.id, ex.result([h]), heatmap_dir=str(tmp_path / "hm"))  # again: listed once
        assert ds.first().ground_truth.detections[0].cam_heatmaps == [fields[0]]
    finally:
        ds.delete()


# ---------------------------------------------------------------- the models file's detection entries

MODELS_TOML = """
[models.shapes5]
arch = "torchvision:ssdlite320_mobilenet_v3_large"
weights = "ssd5.pth"
classes = ["a", "b", "c", "d", "e"]
task = "detection"
input_size = 128

[models.shapes3]
arch = "torchvision:ssdlite320_mobilenet_v3_large"
weights = "ssd5.pth"
classes = ["a", "b", "c"]

[models.normalised]
arch = "torchvision:ssdlite320_mobilenet_v3_large"
weights = "ssd5.pth"
classes = ["a", "b", "c", "d", "e"]
mean = [0.5, 0.5, 0.5]

[models.masks]
arch = "torchvision:maskrcnn_resnet50_fpn"
weights = "ssd5.pth"
classes = ["a"]

[models.wrongtask]
arch = "torchvision:ssdlite320_mobilenet_v3_large"
weights = "ssd5.pth"
classes = ["a", "b", "c", "d", "e"]
task = "classification"
"""


def test_models_file_takes_a_five_class_detector_and_checks_its_head(tmp_path, capsys, monkeypatch):
    """A task = "detection" entry: a torchvision builder with the user's checkpoint and 5 classes
    (background added as class 0), its layers the FPN's; a head for other classes, mean/std, a
    mask model or a wrong task are each one line and hide no good entry."""
    import torch
    import torchvision.models.detection as tvdet

    from camcore import cli, model_file

    torch.manual_seed(0)
    module = tvdet.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=6)
    torch.save(module.state_dict(), tmp_path / "ssd5.pth")
    (tmp_path / "models.toml").write_text(MODELS_TOML)
    specs, skipped = model_file.load(tmp_path / "models.toml")
    assert set(specs) == {"shapes5"}
    spec = specs["shapes5"]
    assert spec.task == "detection" and spec.class_names() == ("__background__", "a", "b", "c", "d", "e")
    assert spec.default_layer == "fpn" and spec.preprocess.size == 128
    reasons = {s.key: s.reason for s in skipped}
    assert reasons["shapes3"] == "checkpoint's head has 5 classes + background, the entry names 3 (+ background)"
    assert "normalises inside" in reasons["normalised"]
    assert "mask or keypoint" in reasons["masks"]
    assert "disagrees" in reasons["wrongtask"]
    assert all("\n" not in r for r in reasons.values())

    from camcore import models

    monkeypatch.setenv(model_file.ENV, str(tmp_path / "models.toml"))
    models.reload_model_file()
    try:
        assert cli.main(["models", "--json"]) == 0
        listed = {m["key"]: m for m in json.loads(capsys.readouterr()[0])["models"]}
        assert listed["shapes5"]["task"] == listed[SSD]["task"] == "detection"
        loaded = _low_threshold(models.load_model("shapes5", "auto", "cpu"))
        assert loaded.pretrained  # the checkpoint's weights, not untrained ones
        ex = Explainer(loaded, _image(), "top@0", ("fpn",))
        assert ex.target.name in ("a", "b", "c", "d", "e")
        assert ex.heatmap("eigencam", "fpn").map.shape == (96, 128)
    finally:
        monkeypatch.delenv(model_file.ENV)
        models.reload_model_file()


def test_renormalise_inside_boxes_and_the_link_carries_the_box():
    from camcore import links, overlay

    m = np.zeros((40, 60), np.float32)
    m[5:15, 5:15] = 0.2  # a weak peak inside the box, a strong one outside it
    m[10, 10] = 0.3
    m[30, 50] = 1.0
    r = detection.renormalise_in_boxes(m, [(5, 5, 15, 15)])
    assert r[10, 10] == 1.0 and r[30, 50] == 0.0 and r.max() == 1.0
    assert detection.renormalise_in_boxes(m, [(100, 100, 120, 120)]) is not None  # outside: unchanged
    state = links.LinkState(dataset="d", sample="s", model="m", box="id:abc@0.3")
    assert links.parse_url(links.explorer_url(state))[1].box == "id:abc@0.3"
    drawn = overlay.draw_boxes(np.zeros((40, 60, 3), np.uint8), [((5, 5, 15, 15), "#0 cat 0.9", True)])
    assert (drawn == np.array(overlay.EXPLAINED_COLOR, np.uint8)).all(axis=-1).sum() > 20


# ---------------------------------------------------------------- batch: box rules, resume

def test_batch_rules_expand_and_resolve_per_sample():
    most = {("ground_truth", ""): 3, ("ground_truth", "kite"): 1}
    expand = lambda rule: detection.expand_batch_rule(rule, lambda f, label: most.get((f, label), 0))  # noqa: E731
    assert expand("top:3@0.2") == ["det:0@0.2", "det:1@0.2", "det:2@0.2"]
    assert expand("field:ground_truth") == ["field:ground_truth:0", "field:ground_truth:1", "field:ground_truth:2"]
    assert expand("field:ground_truth:kite") == ["field:ground_truth:0:kite"]
    assert expand("predicted") == ["top"] and expand("class:dog@0.3") == ["class:dog@0.3"]
    for bad, fragment in (("field:ground_truth:zebra", "No sample of the view has 'zebra'"),
                          ("top:0", "k from 1 to 100"), ("box:cat:0.1,0.1,0.2,0.2", "not one fixed box")):
        with pytest.raises(TargetError, match=fragment):
            expand(bad)
    boxes = [("ground_truth", "a1", "kite", [0.1, 0.2, 0.3, 0.4]), ("ground_truth", "b2", "dog", [0.5, 0.5, 0.2, 0.2])]
    assert detection.field_box_rule("field:ground_truth:1", boxes) == "box:dog:0.5,0.5,0.2,0.2:ground_truth/b2"
    assert detection.field_box_rule("field:ground_truth:0:dog", boxes).endswith("ground_truth/b2")
    assert detection.field_box_rule("field:ground_truth:1:dog", boxes) is None  # no second dog: skipped


def _json(out: str) -> dict:
    return json.loads(out[out.index("{\n"):])  # FiftyOne's own progress bars may come first


def test_cli_batch_takes_a_box_rule_a_field_per_box_resumes_and_skips_samples_without_the_box(tmp_path, capsys):
    import fiftyone as fo
    from fo_helpers import unique_name
    from PIL import Image

    from camcore import cli, store

    paths = []
    for i in range(2):
        rgb = _image().rgb.copy()
        rgb[:, : 10 * (i + 1)] = 0
        paths.append(str(tmp_path / f"s{i}.png"))
        Image.fromarray(rgb).save(paths[-1])
    ds = fo.Dataset(unique_name("det-batch"))
    box = fo.Detection(label="kite", bounding_box=[0.2, 0.2, 0.4, 0.4])
    ds.add_samples([fo.Sample(filepath=paths[0], ground_truth=fo.Detections(detections=[box, box.copy()])),
                    fo.Sample(filepath=paths[1], ground_truth=fo.Detections(detections=[]))])
    base = ["batch", "--dataset", ds.name, "--model", SSD, "--weights", "untrained", "--method", "eigencam",
            "--heatmap-dir", str(tmp_path / "hm"), "--json", "-q"]
    try:
        assert store.most_boxes(ds, "ground_truth") == 2 and store.most_boxes(ds, "ground_truth", "dog") == 0
        assert cli.main([*base, "--box", "top:2@0"]) == 0
        report = _json(capsys.readouterr()[0])
        assert report["done"] == 4 and report["skipped"] == 0 and not report["failed"], report
        fields = report["fields"]
        # a field per rank (their names may be cut to fit the App's sidebar: the labels say the rule)
        by_rule = {ds.first()[f].target_request: f for f in fields}
        assert len(fields) == 2 and set(by_rule) == {"det:0@0", "det:1@0"}, fields
        assert ds.first()[by_rule["det:1@0"]].box_ref == "det1"
        # again: everything resumes as done; a box the samples do not have is skipped, not failed
        assert cli.main([*base, "--box", "top:2@0"]) == 0
        again = _json(capsys.readouterr()[0])
        assert again["done"] == 0 and again["skipped"] == 4, again
        assert cli.main([*base, "--box", "det:400@0"]) == 0
        missing = _json(capsys.readouterr()[0])
        assert missing["done"] == 0 and missing["no_box"] == 2 and not missing["failed"], missing
        # a field rule: one field per box index; the sample without boxes is skipped
        assert cli.main([*base, "--box", "field:ground_truth"]) == 0
        by_field = _json(capsys.readouterr()[0])
        assert len(by_field["fields"]) == 2 and by_field["no_box"] == 2, by_field  # sample 2, for each index
        code = cli.main([*base[:-2], "--model", "efficientnet_lite0", "--weights", "auto", "--box", "top"])
        _, err = capsys.readouterr()
        assert code != 0 and "box rule is for detection models" in err and len(err.strip().splitlines()) == 1
    finally:
        ds.delete()


def test_plugin_compute_cams_takes_a_box_rule_and_resumes(tmp_path, monkeypatch):
    import fiftyone as fo
    import fiftyone.operators as foo
    from fo_helpers import unique_name
    from PIL import Image

    from camcore import store

    plugins = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "plugins")
    monkeypatch.setattr(fo.config, "plugins_dir", plugins)
    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", plugins)
    Image.fromarray(_image().rgb).save(tmp_path / "a.png")
    ds = fo.Dataset(unique_name("det-plugin"))
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "a.png")))
    params = {"model": SSD, "weights": "untrained", "methods": ["eigencam"], "layers": ["fpn"], "box": "top:2@0"}
    try:
        foo.execute_operator("@cam-explorer/cam/compute_cams", ctx={"dataset": ds, "params": params})
        ours = sorted(f for f in ds.get_field_schema() if f.startswith(store.FIELD_PREFIX))
        # a field per rank (names may be cut to fit the App's sidebar: the labels say which box)
        assert len(ours) == 2 and sorted(ds.first()[f].box_ref for f in ours) == ["det0", "det1"], ours
        before = [ds.first()[f].map_path for f in ours]
        foo.execute_operator("@cam-explorer/cam/compute_cams", ctx={"dataset": ds, "params": params})
        ds.reload()
        assert [ds.first()[f].map_path for f in ours] == before  # resumed: nothing computed again
    finally:
        ds.delete()


def test_ablation_of_an_fpn_level_follows_ablationlayerfasterrcnn():
    """Each copy ablates one channel: of the named level, or of the levels fused (c // C, c % C)."""
    import collections

    import torch

    from camcore import perturbation

    raw = collections.OrderedDict((k, torch.rand(1, 4, 3, 3) + 1) for k in ("0", "1"))
    fused = perturbation.ablated_level_copies(raw, torch.arange(8), None)
    assert fused["0"].shape[0] == 8 and (fused["0"][5] == raw["0"][0]).all()  # copy 5 ablates level 1
    assert (fused["1"][5, 1] < -1e6).all() and (fused["1"][5, 0] == raw["1"][0, 0]).all()
    one = perturbation.ablated_level_copies(raw, torch.arange(2, 4), "1")
    assert (one["1"][0, 2] < -1e6).all() and (one["0"] == raw["0"]).all()


def test_compare_draws_the_boxes_over_its_maps_and_renormalises_inside_them():
    """Issue 24 item 5: Compare's maps show the detections (the explained box highlighted, its label
    and score) like Explore's, and 'renormalise inside the box' changes the map outside the box."""
    from types import SimpleNamespace

    from camcore import overlay
    from camcore.results import Prediction, Target
    from ui import boxes, compare_grid

    found = _found()
    pred = Prediction("detection", (), boxes=found)
    target = Target(index=18, name="dog", rule="chosen box", boxes=(found[1].box,), box_ref="det1", score=0.6)
    drawn = boxes.to_draw(target, pred, 0.5)
    assert [(caption, explained) for _b, caption, explained in drawn] == [("#0 person 0.90", False),
                                                                        ("#1 dog 0.60", True)]
    m = np.zeros((100, 128), np.float32)
    m[5:30, 5:30] = 1.0  # the peak outside the explained box
    m[50:80, 70:110] = 0.3
    h = SimpleNamespace(map=m, target=target)  # what overlaid() reads of a Heatmap
    img, loaded = SimpleNamespace(rgb=np.zeros((100, 128, 3), np.uint8)), SimpleNamespace(pretrained=True)
    plain = compare_grid.overlaid(img, h, loaded, 0.5, "jet")
    out = compare_grid.overlaid(img, h, loaded, 0.5, "jet", drawn)
    yellow = (np.abs(out.astype(int) - overlay.EXPLAINED_COLOR).sum(axis=-1) < 30).sum()
    assert yellow > 100 and not (plain == out).all()
    renorm = compare_grid.overlaid(img, h, loaded, 0.5, "jet", (), True)
    assert (renorm[15, 15] != plain[15, 15]).any()  # the peak outside the box is gone


def test_a_field_box_outside_the_image_or_with_an_odd_label_is_its_own_one_line_error():
    """Issue 24 item 8: a stored box outside the image said "'box:...' is a class target", and a
    label holding ':' or '@' broke the rule; each now says what is wrong, in one line."""
    from camcore import targets
    from camcore.results import Prediction

    pred, names = Prediction("detection", (), boxes=_found()), detection.coco_class_names()

    def error(request) -> str:
        with pytest.raises(TargetError) as err:
            targets.choose_target(pred, names, request, (100, 128))
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "outside the image" in error("box:person:0.8,0.2,0.5,0.4:gt/abc")
    assert "is a class target" in error("person")
    odd = detection.field_box_text("a:b@c", (0.1, 0.1, 0.2, 0.2), "gt/abc")
    assert detection.parse_rule(odd).label == "a:b@c" and detection.parse_rule(odd).ref == "gt/abc"
    assert "does not know the label 'a:b@c'" in error(odd)
    assert detection.field_box_rule("field:gt:0", [("gt", "abc", "a:b@c", [0.1, 0.1, 0.2, 0.2])]) == odd


def test_the_pickers_top_box_reuses_the_pages_first_pass():
    """Issue 24 item 4: the page's first pass asks for 'top@0' (every box listed); the picker's
    default 'top' (threshold 0.5) is the same box, asked for as 'top@0' so that pass serves it
    (the UI caches passes by request) instead of a second forward + backward."""
    from camcore.results import Prediction
    from ui import boxes

    pred = Prediction("detection", (), boxes=_found())
    assert boxes.engine_rule("top", 0.5, pred) == "top@0"
    assert boxes.engine_rule("det:1", 0.5, pred) == "det:1@0"
    assert boxes.engine_rule("det:2", 0.5, pred) is None  # below the threshold: its own one-line error
    assert boxes.engine_rule("top", 0.95, pred) is None
    assert boxes.engine_rule("class:dog", 0.5, pred) is None and boxes.engine_rule("id:abc", 0.5, pred) is None
    names = detection.coco_class_names()
    for rule in ("top", "det:1"):  # the same box at either threshold
        assert detection.choose(detection.parse_rule(rule), _found(), names, (100, 128)) == \
            detection.choose(detection.parse_rule(boxes.engine_rule(rule, 0.5, pred)), _found(), names, (100, 128))
