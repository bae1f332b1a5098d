"""Detection models (issue 24): torchvision's builders load untrained offline and compute every
offered method on a box; box rules; bad input is one clear line."""
from __future__ import annotations

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
    """Untrained detectors often score every box under their own threshold: keep them all."""
    for obj in (loaded.module, getattr(loaded.module, "roi_heads", None)):
        if obj is not None and hasattr(obj, "score_thresh"):
            obj.score_thresh = 0.0
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
    heatmaps, errors = ex.heatmaps(offered, layers)
    assert not errors, errors
    assert len(heatmaps) == len(offered) * len(layers)
    for h in heatmaps:
        assert h.map.shape == (96, 128) and np.isfinite(h.map).all() and 0 <= h.map.min() <= h.map.max() <= 1
        assert "det0" in h.identity.target


def test_methods_that_do_not_fit_a_detector_say_why():
    loaded = _low_threshold(load_model(LIGHT[0], "untrained", "cpu"))
    ex = Explainer(loaded, _image(), "top@0", ("fpn",), input_size=96)
    for key in ("scorecam", "ablationcam", "fullgrad", "finercam"):
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
