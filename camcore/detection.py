"""Detection models: torchvision's builders, their outputs as boxes, and what to explain: a box.

A detection model's output for one image is torchvision's dict (boxes, labels, scores). What a
heatmap explains is a box rule, written as text so it travels through the URL, the CLI and a batch:

  top            the model's top-scoring detection (the default)
  det:<i>        the model's i-th detection above the threshold, best first
  class:<name>   every model detection of that class (their scores summed)
  all            every model detection above the threshold (the whole image's detections)
  box:<label>:<x>,<y>,<w>,<h>[:<ref>]
                 a box of the sample's own Detections field (FiftyOne's relative [x, y, w, h]),
                 matched to the model's output by IoU and label, as pytorch-grad-cam's
                 FasterRCNNBoxScoreTarget does; <ref> ("<field>/<detection id>") names it

Any rule may end in "@<score threshold>" (default DEFAULT_THRESHOLD), e.g. "top@0.3".
The gradient target is the sum, over the explained boxes, of (IoU + score) of the output box that
matches each (same label, IoU above IOU_THRESHOLD), as in pytorch-grad-cam's tutorial.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from camcore.class_names import builtin_categories, class_index
from camcore.errors import TargetError

if TYPE_CHECKING:  # torch is imported where tensors are used: box rules are read without it (forms, CLI)
    import torch

DEFAULT_THRESHOLD = 0.5
IOU_THRESHOLD = 0.5
TOP = "top"
RULE_KINDS = (TOP, "det", "class", "all", "box")
MIN_FUSED_SIDE = 7  # SSDlite's last maps are 1 x 1: fused maps need some room


def coco_class_names() -> tuple[str, ...]:
    """COCO's 91 category names (index = torchvision's label), as torchvision's weights metadata
    (FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1) lists them."""
    return builtin_categories("coco")


def builder(name: str, num_classes: int = 91) -> Callable[[], torch.nn.Module]:
    """A torchvision detection builder with random weights and no download (no backbone weights)."""

    def build() -> torch.nn.Module:
        import torchvision.models.detection as det

        return getattr(det, name)(weights=None, weights_backbone=None, num_classes=num_classes)

    return build


@dataclass(frozen=True)
class Detection:
    """One box of the model's output, in the image's pixels (x1, y1, x2, y2)."""

    index: int  # position in the model's detections above the threshold, best first
    label: int
    name: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "name": self.name, "score": self.score,
                "box": list(self.box)}


@dataclass(frozen=True)
class BoxRule:
    kind: str  # "top" | "det" | "class" | "all" | "box"
    threshold: float = DEFAULT_THRESHOLD
    index: int = 0
    label: str = ""
    rel_box: tuple[float, float, float, float] | None = None  # FiftyOne [x, y, w, h], relative
    ref: str = ""  # "<field>/<detection id>" of a field's box

    @property
    def text(self) -> str:
        body = {"top": TOP, "all": "all", "det": f"det:{self.index}", "class": f"class:{self.label}"}.get(self.kind)
        if body is None:
            body = field_box_text(self.label, self.rel_box or (), self.ref)
        return body if self.threshold == DEFAULT_THRESHOLD else f"{body}@{self.threshold:g}"


def field_box_text(label: str, rel_box: Sequence[float], ref: str = "") -> str:
    """The 'box:<label>:<x>,<y>,<w>,<h>[:<ref>]' rule of a field's box. The label is
    percent-quoted: a FiftyOne label may hold ':' or '@', which separate the rule's parts."""
    box = ",".join(f"{v:.6g}" for v in rel_box)
    return f"box:{quote(label, safe=' ')}:{box}" + (f":{ref}" if ref else "")


def parse_rule(text: str | int | None) -> BoxRule:
    """A box rule from its text (see the module's docstring); TargetError for anything else."""
    raw = str(text if text is not None else "").strip() or TOP
    body, _, thr = raw.rpartition("@") if "@" in raw else (raw, "", "")
    threshold = DEFAULT_THRESHOLD
    if thr:
        try:
            threshold = float(thr)
        except ValueError:
            raise TargetError(f"Box rule '{raw}': the score threshold after '@' must be a number.") from None
        if not 0.0 <= threshold <= 1.0:
            raise TargetError(f"Box rule '{raw}': the score threshold must be between 0 and 1.")
    kind, _, rest = body.partition(":")
    kind = kind.strip().lower()
    if kind in (TOP, "all") and not rest:
        return BoxRule(kind, threshold)
    if kind == "det" and rest.strip().isdigit():
        return BoxRule("det", threshold, index=int(rest))
    if kind == "class" and rest.strip():
        return BoxRule("class", threshold, label=rest.strip())
    if kind == "box":
        label, _, tail = rest.partition(":")
        coords, _, ref = tail.partition(":")
        try:
            values = tuple(float(v) for v in coords.split(","))
        except ValueError:
            values = ()
        if label.strip() and len(values) == 4:
            x, y, w, h = values
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > 1.0001 or y + h > 1.0001:
                raise TargetError(f"Box [{coords}] is outside the image (relative x, y, w, h must lie in 0..1).")
            return BoxRule("box", threshold, label=unquote(label.strip()), rel_box=(x, y, w, h), ref=ref.strip())
    raise TargetError(f"Unknown box rule '{raw}': use top, det:<i>, class:<name>, all or "
                      "box:<label>:<x>,<y>,<w>,<h> (relative), optionally ending in @<score threshold>.")


def looks_like_box_rule(text: object) -> bool:
    """Whether a request is meant as a box rule (its kind is one), valid or not: a class name is
    not; 'box:...' outside the image is, and gets its own error from parse_rule."""
    body = str(text or "").strip().rpartition("@")[0] if "@" in str(text or "") else str(text or "").strip()
    return body.partition(":")[0].strip().lower() in RULE_KINDS


def is_box_rule(text: object) -> bool:
    try:
        parse_rule(str(text))
    except TargetError:
        return False
    return True


def detections(output: dict, names: Sequence[str], scale: tuple[float, float],
               threshold: float = 0.0) -> tuple[Detection, ...]:
    """The model's boxes above `threshold`, best first, scaled (sx, sy) from the input tensor to the image."""
    scores = output["scores"].detach().float().cpu()
    order = scores.argsort(descending=True, stable=True)
    boxes = output["boxes"].detach().float().cpu()
    labels = output["labels"].detach().cpu()
    out: list[Detection] = []
    for i in order.tolist():
        if float(scores[i]) < threshold:
            break
        x1, y1, x2, y2 = boxes[i].tolist()
        lab = int(labels[i])
        name = names[lab] if 0 <= lab < len(names) else str(lab)
        out.append(Detection(len(out), lab, name, float(scores[i]),
                             (x1 * scale[0], y1 * scale[1], x2 * scale[0], y2 * scale[1])))
    return tuple(out)


class BoxScoreTarget:
    """pytorch-grad-cam's FasterRCNNBoxScoreTarget, matching each box among same-label outputs:
    the sum of (IoU + score) of the best-matching output box per explained box (0 when none)."""

    def __init__(self, labels: Sequence[int], boxes: Sequence[Sequence[float]], iou_threshold: float = IOU_THRESHOLD):
        self.labels, self.boxes, self.iou_threshold = list(labels), [list(b) for b in boxes], iou_threshold

    def __call__(self, output: dict) -> torch.Tensor:
        import torch
        import torchvision

        boxes = output["boxes"]
        total = torch.zeros((), device=boxes.device, dtype=boxes.dtype)
        for label, box in zip(self.labels, self.boxes, strict=True):
            same = (output["labels"] == label).nonzero().flatten()
            if len(same) == 0:
                continue
            ious = torchvision.ops.box_iou(torch.tensor([box], device=boxes.device, dtype=boxes.dtype), boxes[same])[0]
            best = int(ious.argmax())
            if float(ious[best].detach()) > self.iou_threshold:
                total = total + ious[best] + output["scores"][same[best]]
        return total


@dataclass(frozen=True)
class Chosen:
    """The boxes a rule explains: their labels and boxes (image pixels), and what to say about them."""

    label: int
    name: str
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    ref: str  # "det0", "class:dog", "ground_truth/<id>" ...
    rule: str  # how it was chosen, for the user
    score: float | None = None
    iou: float | None = None


def class_label(names: Sequence[str], text: str) -> int:
    """A class's index among a detector's names; TargetError (one line) for a label it does not know."""
    try:
        return class_index(tuple(names), text)
    except TargetError:
        raise TargetError(f"The model does not know the label '{text}' ({len(names)} classes).") from None


def choose(rule: BoxRule, found: tuple[Detection, ...], names: Sequence[str],
           image_hw: tuple[int, int]) -> Chosen:
    """The boxes a rule explains, given the model's detections (all of them, best first)."""
    above = [d for d in found if d.score >= rule.threshold]
    if rule.kind == "box":
        return _match_field_box(rule, found, names, image_hw)
    if not above:
        raise TargetError(f"No detection at score >= {rule.threshold:g} on this sample "
                          f"({len(found)} below it); lower the threshold.")
    if rule.kind == TOP:
        d = above[0]
        return Chosen(d.label, d.name, (d.box,), (d.label,), "det0", "default: top-scoring box", d.score, 1.0)
    if rule.kind == "det":
        if rule.index >= len(above):
            raise TargetError(f"Detection {rule.index} does not exist: {len(above)} detection(s) at score >= "
                              f"{rule.threshold:g}.")
        d = above[rule.index]
        return Chosen(d.label, d.name, (d.box,), (d.label,), f"det{d.index}", "chosen box", d.score, 1.0)
    if rule.kind == "class":
        label = class_label(names, rule.label)
        picked = [d for d in above if d.label == label]
        if not picked:
            raise TargetError(f"No '{names[label]}' detection at score >= {rule.threshold:g} on this sample.")
        return Chosen(label, names[label], tuple(d.box for d in picked), tuple(d.label for d in picked),
                      f"class:{names[label]}", f"every '{names[label]}' box ({len(picked)})")
    top = above[0]
    return Chosen(top.label, "all detections", tuple(d.box for d in above), tuple(d.label for d in above),
                  "all", f"every detection ({len(above)})")


def _match_field_box(rule: BoxRule, found: tuple[Detection, ...], names: Sequence[str],
                     image_hw: tuple[int, int]) -> Chosen:
    label = class_label(names, rule.label)
    x, y, w, h = rule.rel_box or (0.0, 0.0, 0.0, 0.0)
    height, width = image_hw
    box = (x * width, y * height, (x + w) * width, (y + h) * height)
    if not found:
        raise TargetError(f"The model detects nothing on this sample: no box to match '{rule.label}'.")
    import torch
    import torchvision

    ious = torchvision.ops.box_iou(torch.tensor([box]), torch.tensor([d.box for d in found]))[0]
    same = [i for i, d in enumerate(found) if d.label == label]
    best = max(same, key=lambda i: float(ious[i]), default=None)
    if best is None or float(ious[best]) <= IOU_THRESHOLD:
        overall = int(ious.argmax())
        raise TargetError(f"No detection matches the '{names[label]}' box (IoU > {IOU_THRESHOLD:g} and same "
                          f"label): best IoU {float(ious[overall]):.2f} with '{found[overall].name}'.")
    d = found[best]
    return Chosen(label, names[label], (box,), (label,), rule.ref or "box",
                  f"matched box (IoU {float(ious[best]):.2f} with detection {d.index})", d.score, float(ious[best]))


def fuse_levels(levels: dict) -> torch.Tensor:
    """An FPN's (or SSD backbone's) ordered feature maps as one tensor: every level resized to the
    smallest one of at least MIN_FUSED_SIDE on a side and stacked along channels, as
    pytorch-grad-cam's fasterrcnn_reshape_transform (without its abs: gradients keep their sign)."""
    import torch

    values = list(levels.values())
    # the smallest level at least MIN_FUSED_SIDE on a side (Faster R-CNN: 'pool', the tutorial's)
    wide = [v for v in values if min(v.shape[-2:]) >= MIN_FUSED_SIDE] or values[:1]
    size = min((v.shape[-2:] for v in wide), key=lambda s: s[0] * s[1])
    return torch.cat([torch.nn.functional.interpolate(v, size, mode="bilinear", align_corners=False)
                      for v in values], dim=1)


def valid_fraction(module: torch.nn.Module, input_hw: tuple[int, int]) -> tuple[float, float]:
    """The share (height, width) of the model's internal batch tensor that the image fills:
    torchvision's detection transform resizes and pads to a multiple of 32; feature maps of the
    padding are cropped away before a heatmap is drawn."""
    import torch

    transform = getattr(module, "transform", None)
    if transform is None:
        return 1.0, 1.0
    with torch.no_grad():
        images, _ = transform([torch.zeros(3, *input_hw)])
    (h, w), (ph, pw) = images.image_sizes[0], images.tensors.shape[-2:]
    return h / ph, w / pw


def reshape_for(module: torch.nn.Module, input_hw: tuple[int, int]) -> Callable[[object], torch.Tensor]:
    fh, fw = valid_fraction(module, input_hw)

    def reshape(value: object) -> torch.Tensor:
        import torch

        tensor = fuse_levels(value) if isinstance(value, dict) else value
        assert isinstance(tensor, torch.Tensor)
        h, w = tensor.shape[-2:]
        return tensor[..., : max(1, round(h * fh)), : max(1, round(w * fw))]

    return reshape


def renormalise_in_boxes(heatmap, boxes: Sequence[Sequence[float]]):
    """The map min-max scaled inside each box and zero outside (pytorch-grad-cam's
    renormalize_cam_in_bounding_boxes): each explained box shows its own peak. Boxes in the map's
    pixels (x1, y1, x2, y2), clipped to the map; a map without boxes inside it is returned as it is."""
    import numpy as np

    m = np.asarray(heatmap, dtype=np.float32)
    out = np.zeros_like(m)
    height, width = m.shape[:2]
    inside = False
    for box in boxes:
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
        if x2 <= x1 or y2 <= y1:
            continue
        inside = True
        part = m[y1:y2, x1:x2]
        lo, hi = float(part.min()), float(part.max())
        scaled = (part - lo) / (hi - lo) if hi > lo else np.zeros_like(part)
        out[y1:y2, x1:x2] = np.maximum(out[y1:y2, x1:x2], scaled)
    return out if inside else m


# ---------------------------------------------------------------- box rules of a batch
# A batch writes one field per (method, layer, box rule); a user's rule may stand for several:
#   top:<k>[@t]           the model's k best detections above t: det:0@t ... det:<k-1>@t
#   field:<f>[:<class>]   every box of the sample's Detections field f (optionally one class):
#                         field:<f>:0[:<class>] ... up to the most boxes a sample of the view has
# A sample without the box a field is for (fewer detections, fewer boxes) is skipped, not failed.


def field_rule_parts(body: str) -> tuple[str, int | None, str]:
    """(field, index or None, class) of 'field:<f>[:<i>][:<class>]' (no '@<threshold>')."""
    parts = [p.strip() for p in body.split(":")[1:]]
    if not parts or not parts[0]:
        raise TargetError(f"Box rule '{body}': write field:<Detections field>[:<class>].")
    field, rest = parts[0], parts[1:]
    index = int(rest.pop(0)) if rest and rest[0].isdigit() else None
    label = ":".join(rest)
    return field, index, label


def batch_rule(text: object) -> str:
    """The one box rule a batch field is made for, normalised (TargetError for anything else):
    top, det:<i>, class:<name>, all (with @<threshold>) or field:<f>:<i>[:<class>]."""
    raw = str(text or "").strip()
    if raw.lower() in ("", "predicted"):
        return TOP
    if raw.startswith("field:"):
        field, index, label = field_rule_parts(raw.partition("@")[0])
        if index is None:
            raise TargetError(f"Box rule '{raw}' stands for several boxes: expand it first (expand_batch_rule).")
        return f"field:{field}:{index}" + (f":{label}" if label else "")
    if raw.startswith("top:"):
        raise TargetError(f"Box rule '{raw}' stands for several boxes: expand it first (expand_batch_rule).")
    rule = parse_rule(raw)
    if rule.kind == "box":
        raise TargetError("A batch explains the model's boxes (top, top:<k>, det:<i>, class:<name>, all) or a "
                          "field's (field:<name>[:<class>]), not one fixed box.")
    return rule.text


def expand_batch_rule(text: object, most_boxes: Callable[[str, str], int]) -> list[str]:
    """A user's batch box rule as the rules of its fields. most_boxes(field, class): the most boxes
    (of that class, "" for any) one sample of the view holds in that field."""
    raw = str(text or "").strip()
    body, _, thr = raw.partition("@")
    if body.startswith("top:"):
        k = body[4:].strip()
        if not k.isdigit() or not 1 <= int(k) <= 100:
            raise TargetError(f"Box rule '{raw}': top:<k> takes k from 1 to 100.")
        return [batch_rule(f"det:{i}" + (f"@{thr}" if thr else "")) for i in range(int(k))]
    if body.startswith("field:"):
        field, index, label = field_rule_parts(body)
        if index is not None:
            return [batch_rule(body)]
        count = most_boxes(field, label)
        if count == 0:
            what = f"'{label}' boxes" if label else "boxes"
            raise TargetError(f"No sample of the view has {what} in the field '{field}': nothing to explain.")
        return [f"field:{field}:{i}" + (f":{label}" if label else "") for i in range(count)]
    return [batch_rule(raw)]


def field_box_rule(rule: str, boxes: Sequence[tuple[str, str, str, Sequence[float]]]) -> str | None:
    """A 'field:<f>:<i>[:<class>]' rule for one sample, given its boxes (field, detection id,
    label, relative [x, y, w, h]): the engine's box rule, or None when it has no such box."""
    field, index, label = field_rule_parts(rule)
    mine = [b for b in boxes if b[0] == field and (not label or b[2] == label)]
    if index is None or index >= len(mine):
        return None
    _f, det_id, name, rel_box = mine[index]
    return field_box_text(name, rel_box, f"{field}/{det_id}")


def is_missing_box(exc: BaseException) -> bool:
    """Whether a batch's error means 'this sample has no such box' (skipped, not failed)."""
    text = str(exc)
    return isinstance(exc, TargetError) and (text.startswith("No detection at score")
                                             or text.startswith("Detection ") and "does not exist" in text
                                             or "detection at score" in text and text.startswith("No '"))
