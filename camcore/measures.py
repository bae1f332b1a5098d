"""Measures of one heatmap, stored beside it: what the app shows for one sample, for a whole view.

Per heatmap (one explainer, one map):
  - ``score``: the target's score on the unchanged input (a logit, or a segmentation mask's sum),
  - ``conf``: the model's probability of the explained class (classification), a detector's
    explained box's score (None elsewhere),
  - ``share``: the share of heatmap mass on the object (camcore.metrics.mass_inside), the object
    being a ground-truth Segmentation or Detections field's mask/boxes of the explained class, or
    the model's own: a segmenter's predicted mask, a detector's explained box(es)
    (camcore.judge.object_mask, as Compare's ranking),
  - ``keep`` / ``remove``: the faithfulness scores as a share of the original score (Compare's
    numbers: camcore.metrics.Faithfulness.keep_relative / remove_relative),
  - ``bg``: background-dominated, share < threshold,
  - ``about``: the settings the measures were made with (threshold, object field, faithfulness):
    measures of one heatmap field made with other settings are not mixed silently.

Never imports streamlit. The field names come from HeatmapIdentity.measure_field only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from camcore.defaults import DEFAULT_BACKGROUND_THRESHOLD
from camcore.results import Heatmap

if TYPE_CHECKING:  # the options are read without torch (a form); judge and metrics measure with it
    from camcore import judge, metrics
    from camcore.engine import Explainer


@dataclass(frozen=True)
class MeasureOptions:
    """How a batch measures: where the object is, the background threshold, faithfulness on/off."""

    object_field: str | None = None  # a Segmentation or Detections field; None: the model's own mask
    threshold: float = DEFAULT_BACKGROUND_THRESHOLD
    faithfulness: bool = False  # opt-in: two more forwards per heatmap (keep, remove), 2.8x a batch vs 1.1x
    object_label: str = ""  # "": the field's label that names the explained class; ANY_OBJECT: every object

    @property
    def about(self) -> str:
        """The settings as one short string, stored per sample (``about`` measure)."""
        obj = (self.object_field or "model") + (f"[{self.object_label}]" if self.object_label else "")
        return f"t={self.threshold:g};obj={obj};f={int(self.faithfulness)}"

    @classmethod
    def parse(cls, about: str) -> MeasureOptions:
        """The options an ``about`` string was made with (the inverse of :attr:`about`)."""
        parts = dict(p.split("=", 1) for p in str(about).split(";") if "=" in p)
        obj, _, label = parts.get("obj", "model").partition("[")
        return cls(object_field=None if obj == "model" else obj, threshold=float(parts.get("t", 0.5)),
                   faithfulness=parts.get("f", "1") == "1", object_label=label.rstrip("]"))


@dataclass(frozen=True)
class ObjectLabel:
    """The object field's label on one sample, as read from the database: boxes by label, or a mask
    with its class names (mask targets)."""

    kind: str  # "detections" | "segmentation"
    boxes: tuple[tuple[str, tuple[float, ...]], ...] = ()  # (label, relative x, y, w, h)
    mask: np.ndarray | None = None
    names: dict[int, str] | None = None  # mask value -> class name


def object_label(kind: str, doc: dict | None, names: dict[int, str]) -> ObjectLabel | None:
    """An ObjectLabel from a label stored as a dict (values(_raw=True) / a raw find); None when absent."""
    if not isinstance(doc, dict):
        return None
    if kind == "detections":
        boxes = tuple((str(d.get("label")), tuple(float(v) for v in d["bounding_box"]))
                      for d in doc.get("detections") or [] if d.get("bounding_box"))
        return ObjectLabel(kind, boxes=boxes)
    from camcore.store.datasets import stored_mask  # FiftyOne: imported where a label is read

    mask = stored_mask(doc)
    return None if mask is None else ObjectLabel(kind, mask=mask, names=names)


ANY_OBJECT = "*"


def sample_item(sample_id: str, path: str, obj: ObjectLabel | None, class_name: str,
                object_label: str = "") -> judge.SampleItem | str:
    """The object on one sample as judge.SampleItem: the field's label that names `class_name`
    (object_label ""), a named label, or every object (ANY_OBJECT: an untrained model's or another
    taxonomy's classes name none); a reason (str) when there is none."""
    from camcore import judge

    if obj is None:
        return "no object label on this sample"
    wanted = object_label or class_name
    if obj.kind == "detections":
        labels = sorted({label for label, _ in obj.boxes})
        if object_label == ANY_OBJECT:
            keep = set(labels)
        else:
            found = judge.match_object_label(labels, wanted)
            if found is None:
                return f"no box names {wanted!r}"
            keep = {labels[found]}
        boxes = tuple((b[0], b[1], b[2], b[3]) for label, b in obj.boxes if label in keep and len(b) == 4)
        return judge.SampleItem(sample_id, path, boxes)
    mask = np.asarray(obj.mask)
    if object_label == ANY_OBJECT:
        return judge.SampleItem(sample_id, path, mask=mask > 0)
    class_name = wanted
    names = obj.names or {int(v): str(v) for v in np.unique(mask)}
    values = sorted(names)
    found = judge.match_object_label([names[v] for v in values], class_name)
    if found is None:
        return f"no mask class names {class_name!r}"
    return judge.SampleItem(sample_id, path, mask=mask == values[found])


def measure(ex: Explainer, h: Heatmap, item: judge.SampleItem | str | None, options: MeasureOptions,
            faith: metrics.Faithfulness | None = None) -> dict:
    """The measures of one heatmap of this explainer: measure name -> value (None: not measurable
    here, e.g. no object). `item`: the object from a label field, a reason why there is none, or
    None for the model's own mask (segmentation). `faith`: its faithfulness when already computed
    (Explainer.faithfulness_of)."""
    from camcore import judge, metrics

    out: dict[str, Any] = {"about": options.about}
    if isinstance(item, str):
        mask = None
    else:
        mask, _source = judge.object_mask(ex, item or judge.SampleItem("", ex.image.path))
    share = metrics.mass_inside(h.map, mask) if mask is not None else None
    out["share"] = share
    out["bg"] = None if share is None else metrics.background_dominated(share, options.threshold)
    conf = None
    if ex.prediction.task == "classification":
        conf = next((c.score for c in ex.prediction.classes if c.index == ex.target.index), None)
    elif ex.prediction.task == "detection":
        conf = ex.target.score  # the explained box's score (a class rule's boxes: None)
    out["conf"] = None if conf is None else float(conf)
    # The target's score is the shared pass's output (no forward): stored with or without faithfulness.
    out["score"] = _finite(ex.original_score)
    if options.faithfulness:
        f = faith or ex.faithfulness(h.method, h.layer, h.eigen_smooth)
        out.update(keep=f.keep_relative, remove=f.remove_relative)
    else:
        out.update(keep=None, remove=None)
    return out


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
