"""Issue 24 item 4: switching boxes reuses the forward where the math allows. Another box of the
same image changes only the score the gradients are of: a gradient method needs one backward
through the kept graph, an activation-only method (Eigen-CAM) nothing; the maps equal a fresh
pass's. Uses the toy trained detector (cached under /tmp)."""
from __future__ import annotations

import numpy as np
import pytest
from detector_support import PassCounter

from camcore.engine import Explainer, KeptForward


def _boxes(box, label) -> tuple[str, ...]:
    """The toy detector's two best boxes at any score and the shape's own (ground-truth) box,
    matched by IoU and label: three different score targets."""
    from detector_support import CLASSES, SIZE

    x0, y0, x1, y1 = (v / SIZE for v in box)
    return "det:0@0", "det:1@0", f"box:{CLASSES[label]}:{x0},{y0},{x1 - x0},{y1 - y0}:ground_truth/g"

LAYERS = ("body", "conv2")
METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "eigengradcam")


@pytest.fixture(scope="module")
def toy_detector():
    from detector_support import loaded_detector

    return loaded_detector()


def _maps(ex: Explainer, methods=METHODS) -> dict:
    return {(m, layer): ex.heatmap(m, layer) for m in methods for layer in LAYERS}


def _same(a: dict, b: dict) -> None:
    for key in a:
        np.testing.assert_allclose(a[key].raw, b[key].raw, atol=1e-5, rtol=1e-5, err_msg=str(key))
        np.testing.assert_allclose(a[key].map, b[key].map, atol=1e-5, err_msg=str(key))


def test_switching_boxes_runs_one_forward_and_equals_a_fresh_pass_per_box(toy_detector, monkeypatch):
    from detector_support import image

    img, box, label = image(0)
    boxes = _boxes(box, label)
    kept = KeptForward()
    counter = PassCounter(toy_detector.module, monkeypatch)
    try:
        switched = []
        for rule in boxes:
            ex = Explainer(toy_detector, img, rule, LAYERS, kept=kept)
            switched.append((ex.target, _maps(ex)))
        assert (counter.forwards, counter.backwards) == (1, len(boxes)), \
            "three boxes of one image: one forward, one backward per box"
        assert (kept.forwards, kept.backwards) == (1, len(boxes))
        assert ex.forward_reused
        counter.forwards = counter.backwards = 0
        for rule, (target, maps) in zip(boxes, switched, strict=True):
            fresh = Explainer(toy_detector, img, rule, LAYERS)  # no kept forward: its own pass
            assert fresh.target == target and not fresh.forward_reused
            _same(maps, _maps(fresh))
        assert counter.forwards == len(boxes)
    finally:
        counter.handle.remove()
    explained = [(t.box_ref, t.boxes[0]) for t, _m in switched]
    assert len(set(explained)) == len(boxes), "three different boxes were explained"


def test_an_activation_only_map_of_another_box_runs_no_pass(toy_detector, monkeypatch):
    from detector_support import image

    img, _box, _label = image(1)
    kept = KeptForward()
    first = Explainer(toy_detector, img, "det:0@0", LAYERS, kept=kept)
    first.heatmap("gradcam", "conv2")
    counter = PassCounter(toy_detector.module, monkeypatch)
    try:
        other = Explainer(toy_detector, img, "det:1@0", LAYERS, kept=kept)
        eigen = other.heatmap("eigencam", "conv2")
        assert (counter.forwards, counter.backwards) == (0, 0), "Eigen-CAM of another box: no forward, no backward"
        assert not other.fp.has_gradients
        timings = other.result([eigen]).timings
        assert timings["forward_reused"] == 1.0 and "backward" not in timings  # what Explore's caption says
        other.heatmap("gradcam", "conv2")
        assert (counter.forwards, counter.backwards) == (0, 1), "Grad-CAM of it: one backward, no forward"
        assert other.result([]).timings["backward"] > 0
    finally:
        counter.handle.remove()
    np.testing.assert_allclose(eigen.map, Explainer(toy_detector, img, "det:1@0", LAYERS).heatmap(
        "eigencam", "conv2").map, atol=1e-5)


def test_another_image_drops_the_kept_graph_and_an_older_explainer_still_gets_its_gradients(toy_detector):
    """One image's graph at a time: a pass for another image replaces it; an explainer of the
    first image that asks for gradients afterwards gets them from a new forward, equal to a fresh pass."""
    from detector_support import image

    (img_a, _b, _l), (img_b, _b2, _l2) = image(2), image(3)
    kept = KeptForward()
    a = Explainer(toy_detector, img_a, "top@0", LAYERS, kept=kept)
    a.heatmap("eigencam", "body")  # no gradients asked for yet
    b = Explainer(toy_detector, img_b, "top@0", LAYERS, kept=kept)
    assert kept.forwards == 2 and not b.forward_reused
    got = a.heatmap("gradcam", "body")  # image A's graph is gone: a new forward, then its backward
    assert kept.forwards == 3
    np.testing.assert_allclose(got.raw, Explainer(toy_detector, img_a, "top@0", LAYERS).heatmap("gradcam", "body").raw,
                               atol=1e-5, rtol=1e-5)
    kept.drop()
    assert not kept.holds


def test_only_a_detectors_session_keeps_a_forward_with_its_graph(toy_detector):
    """The kept graph costs memory as long as a session lives (~320 MB for DeepLabV3 at 520 px):
    the explorer keeps one for a detector's box walk only; a classifier's pass frees its graph."""
    from cam_support import chelsea_small
    from detector_support import image

    from camcore.models import load_model
    from ui import compute, session_memory

    memory = session_memory.current()
    session_memory.release(memory)  # a fresh session's memory
    classifier = load_model("efficientnet_lite0", "untrained", "cpu")
    ex = compute.explainer(classifier, ("cat",), chelsea_small(64, 64), None, False, None)
    ex.heatmap("gradcam", "head")
    assert ex.kept is None and memory.kept_forward is None
    img, _box, _label = image(0)
    ex = compute.explainer(toy_detector, ("shape", 0), img, "det:0@0", False, None)
    ex.heatmap("gradcam", LAYERS[0])
    assert ex.kept is memory.kept_forward and ex.kept.holds
    session_memory.release(memory)  # what the tab's end does: the graph goes
    assert memory.kept_forward is None and not memory.explainers
