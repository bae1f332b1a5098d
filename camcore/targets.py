"""What to explain: the prediction, the target class, and pytorch-grad-cam's target object.

The target rules are read without torch (a form checks them); torch and pytorch-grad-cam are
imported where a model's output is read."""
from __future__ import annotations

import cv2
import numpy as np

from camcore.class_names import class_index
from camcore.errors import TargetError
from camcore.results import ClassScore, Prediction, Target

TOP_K = 5
PREFERRED_SEGMENTATION_CLASS = "person"  # the article's default when it is in the image

# A batch's target rule: what every sample is explained for. PREDICTED: each sample's own
# prediction (one field; each label stores its class); else one class, by its exact name. It is
# the target part of the batch's field names and each label's `target_request` attribute.
TargetRule = str
PREDICTED: TargetRule = "predicted"


def target_rule(names: tuple[str, ...], requested: str | int | None) -> TargetRule:
    """The target rule for what a user gave: PREDICTED (also for None or "", in any case), else the
    class's exact name (see class_index; an unknown class raises TargetError)."""
    text = str(requested or PREDICTED).strip()
    if text.lower() == PREDICTED:
        return PREDICTED
    return names[class_index(names, text)]


def class_request(rule: TargetRule) -> str | None:
    """What the explainer is asked for under a rule: None (each image's prediction) or the class."""
    return None if rule == PREDICTED else rule


def predict(task: str, output, names: tuple[str, ...], image_size: tuple[int, int],
            input_hw: tuple[int, int] | None = None) -> Prediction:
    """Prediction from the model's output for one image (output has no batch dimension; a
    detector's: torchvision's dict, its boxes in the input tensor's pixels, input_hw)."""
    if task == "detection":
        from camcore import detection

        hw = input_hw or image_size
        found = detection.detections(output, names, (image_size[1] / hw[1], image_size[0] / hw[0]))
        return Prediction(task, tuple(ClassScore(d.label, d.name, d.score) for d in found), boxes=found)
    out = output.detach()
    if task == "classification":
        probs = out.float().softmax(dim=-1).cpu()
        scores, idx = probs.topk(min(TOP_K, probs.numel()))
        top = zip(scores, idx, strict=True)
        return Prediction(task, tuple(ClassScore(int(i), names[int(i)], float(s)) for s, i in top))
    # argmax where the output is (a GPU): only the label map comes to the host
    labels = out.argmax(dim=0).cpu().numpy().astype(np.int32)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    classes = tuple(ClassScore(i, names[i], float(counts[i] / labels.size)) for i in order)
    mask = cv2.resize(labels, (image_size[1], image_size[0]), interpolation=cv2.INTER_NEAREST)
    return Prediction(task, classes, mask=mask)


def default_target(prediction: Prediction, names: tuple[str, ...]) -> tuple[int, str]:
    """(class index, rule): person where predicted, else the largest non-background class; top-1."""
    if prediction.task == "classification":
        return prediction.classes[0].index, "default: predicted top-1"
    found = {c.name: c.index for c in prediction.classes}
    if PREFERRED_SEGMENTATION_CLASS in found:
        return found[PREFERRED_SEGMENTATION_CLASS], "default: person is predicted"
    foreground = [c for c in prediction.classes if c.index != 0]
    if foreground:
        return foreground[0].index, "default: largest predicted class"
    return 0, "default: only background predicted"


def choose_target(
    prediction: Prediction, names: tuple[str, ...], requested: str | int | None,
    image_size: tuple[int, int] | None = None,
) -> Target:
    if prediction.task == "detection":
        return _box_target(prediction, names, requested, image_size)
    if requested is not None and not isinstance(requested, int):
        rule = str(requested).strip()
        if rule.lower() in ("top", "all") or rule.lower().startswith(("box:", "det:")):
            raise TargetError(f"This is a {prediction.task} model: it has no boxes to explain; ask for a class.")
    if requested is None or (isinstance(requested, str) and not requested.strip()):
        index, rule = default_target(prediction, names)
    else:
        index, rule = class_index(names, requested), "chosen"
    note = ""
    if prediction.task == "segmentation" and index not in {c.index for c in prediction.classes}:
        note = "class not predicted anywhere: explained over the whole image"
    return Target(index=index, name=names[index], rule=rule, note=note)


def _box_target(prediction: Prediction, names: tuple[str, ...], requested: str | int | None,
                image_size: tuple[int, int] | None) -> Target:
    from camcore import detection

    if isinstance(requested, (int, np.integer)) or (
            requested is not None and str(requested).strip() and not detection.looks_like_box_rule(requested)):
        raise TargetError(f"'{requested}' is a class target; a detection model explains a box: top, det:<i>, "
                          "class:<name>, all or box:<label>:<x>,<y>,<w>,<h>.")
    rule = detection.parse_rule(requested)  # a box rule's own error (a box outside the image) as it is
    chosen = detection.choose(rule, prediction.boxes, names, image_size or (1, 1))
    return Target(index=chosen.label, name=chosen.name, rule=chosen.rule, boxes=chosen.boxes,
                  box_ref=chosen.ref, score=chosen.score, iou=chosen.iou)


def grad_cam_target(task: str, target: Target, output, scale: tuple[float, float] = (1.0, 1.0)):
    """pytorch-grad-cam's target object for one image's output (no batch dimension). A detector's
    boxes are given in the image's pixels: scale (sx, sy) takes them to the input tensor's."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

    if task == "detection":
        from camcore.detection import BoxScoreTarget

        boxes = [(b[0] / scale[0], b[1] / scale[1], b[2] / scale[0], b[3] / scale[1]) for b in target.boxes]
        return BoxScoreTarget(_box_labels(target, output, boxes), boxes)
    if task == "classification":
        return ClassifierOutputTarget(target.index)
    mask = (output.detach().argmax(dim=0) == target.index).float().cpu().numpy()
    if not mask.any():  # an empty mask would give zero gradients and a blank heatmap
        mask = np.ones_like(mask)
    return SemanticSegmentationTarget(target.index, mask)


def _box_labels(target: Target, output, boxes) -> list[int]:
    """Each explained box's label: the target's class, except under 'all' (each box's own)."""
    if target.box_ref != "all":
        return [target.index] * len(boxes)
    import torch
    import torchvision

    ious = torchvision.ops.box_iou(torch.tensor(boxes, dtype=output["boxes"].dtype), output["boxes"].detach().cpu())
    return [int(output["labels"][int(i)]) for i in ious.argmax(dim=1)]
