"""What a batch computes, checked before anything is loaded or written: :class:`BatchOptions`
(model, weights, methods, layers, target rule, smoothing, input size, chunk, device, heatmap
folder, measures) and a detector's box rules as one run each (:func:`box_batches`).

Importable without torch or FiftyOne (the registries it reads are plain data; the store is
imported where a view is read): the FiftyOne App's compute form, the Batch page and the CLI check a
request with it, and only camcore.batch, which runs one, loads models. camcore.batch re-exports
every name here.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from camcore import detection
from camcore import targets as targets_mod
from camcore import weights as weights_mod
from camcore.errors import MethodError, TargetError
from camcore.identity import HeatmapIdentity, codes
from camcore.measures import MeasureOptions
from camcore.methods import get_method
from camcore.models import ModelSpec, get_spec
from camcore.targets import PREDICTED, TargetRule

if TYPE_CHECKING:
    from camcore.models import LoadedModel
    from camcore.store.scan import Collection

__all__ = ["PREDICTED", "BatchOptions", "BoxFacts", "TargetRule", "box_batches", "forget_shared_facts",
           "shared_facts"]


@dataclass(frozen=True)
class BatchOptions:
    """What a batch computes, and how. :meth:`checked` resolves and checks the names."""

    model: str  # registry key
    weights: str = weights_mod.AUTO  # auto | untrained | a weights file
    methods: tuple[str, ...] = ("gradcam",)
    layers: tuple[str, ...] = ()  # none: the model's default layer
    target_rule: TargetRule = PREDICTED
    eigen_smooth: bool = False
    input_size: int | None = None  # short side of the model input (segmentation); None: the model's
    chunk: int = 8  # samples per batched pass and bulk write
    device: str | None = None  # None: CAM_EXPLORER_DEVICE or the GPU
    heatmap_dir: str | None = None  # None: the camcore home's folder
    measures: MeasureOptions | None = None  # also store each heatmap's measures (camcore.measures)

    def __post_init__(self) -> None:
        # Lists and paths are accepted; kept as tuples and strings, so options hash and pickle (Ray).
        object.__setattr__(self, "methods", tuple(self.methods or ()))
        object.__setattr__(self, "layers", tuple(self.layers or ()))
        object.__setattr__(self, "weights", str(self.weights or weights_mod.AUTO))
        object.__setattr__(self, "eigen_smooth", bool(self.eigen_smooth))
        if self.heatmap_dir is not None:
            object.__setattr__(self, "heatmap_dir", str(self.heatmap_dir))

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.model)

    def checked(self) -> BatchOptions:
        """These options with every name resolved (model key, method keys, layer names, the target
        rule as PREDICTED or a class's exact name) and chunk at least 1. Raises a CamError for an
        unknown name or a method the batch cannot run, before anything is loaded or written."""
        spec = self.spec
        layers = tuple(dict.fromkeys(spec.layer(n).name for n in (self.layers or [spec.default_layer])))
        methods = tuple(dict.fromkeys(get_method(m).key for m in self.methods))
        if not methods:
            raise MethodError("choose at least one method")
        for m in methods:
            reason = get_method(m).unsupported_reason(spec.task, spec.family)
            if reason:
                raise MethodError(f"{reason} (model '{spec.key}')")
            if get_method(m).layer_independent:
                raise MethodError(f"{m} is not offered in batches yet (it ignores layers)")
        if spec.task == "detection":  # a box rule (camcore.detection.batch_rule)
            rule = detection.batch_rule(self.target_rule)
        else:
            rule = targets_mod.target_rule(spec.class_names(), self.target_rule)
        return dataclasses.replace(self, model=spec.key, methods=methods, layers=layers, target_rule=rule,
                                   chunk=max(1, int(self.chunk)))

    @property
    def class_request(self) -> str | None:
        """What the explainer is asked for: None (each image's prediction) or the rule's class."""
        return targets_mod.class_request(self.target_rule)

    def eigen_for(self, method: str) -> bool:
        """eigen_smooth as the engine applies it, and as the label stores it (Eigen-CAM has none)."""
        return bool(self.eigen_smooth and get_method(method).supports_eigen_smooth)

    @property
    def label_extra(self) -> dict:
        """The batch's own attributes on every label, beside the identity's provenance."""
        return {"target_request": self.target_rule, "input_size_request": int(self.input_size or 0)}

    def identity(self, method: str, layer: str, model: LoadedModel | None = None) -> HeatmapIdentity:
        """The identity of the field (method, layer) goes to. From the loaded model (weights label,
        content hash, architecture); before any model is loaded (the Ray driver, the page), from the
        weights choice alone: the same field name and meaning."""
        eigen = self.eigen_for(method)
        spec = get_method(method)  # its code names the field, as the engine's identity does
        if model is not None:
            return HeatmapIdentity.of(model, spec, layer, self.target_rule,
                                      input_size=model.spec.input_size(self.input_size), eigen_smooth=eigen)
        return HeatmapIdentity(model=self.model, method=spec.key, layer=layer, target=self.target_rule,
                               pretrained=weights_mod.choice_pretrained(self.weights),
                               weights_tag=weights_mod.choice_tag(self.weights),
                               input_size=self.spec.input_size(self.input_size), eigen_smooth=eigen,
                               **codes(self.spec, spec, layer))

    def identities(self, model: LoadedModel | None = None) -> list[HeatmapIdentity]:
        """Every field's identity (methods outer, layers inner), of checked options."""
        return [self.identity(m, layer, model) for m in self.methods for layer in self.layers]

    def field_names(self, dataset: Collection | None = None) -> list[str]:
        """The fields a run of these (checked) options writes, before any model is loaded; with
        the dataset, as it keeps them (a field of an older name that holds the same map)."""
        identities = self.identities()
        if dataset is not None:
            from camcore import store

            identities = [store.stored_identity(dataset, i) for i in identities]
        return [identity.field_name for identity in identities]


class BoxFacts:
    """What a detector's `field:` box rule reads from a view, each an aggregation over the whole
    view: the field's labels and the most boxes (of a class) one sample holds. Each is asked once
    and kept in `memo` (field, class) -> value: the Batch page keeps one memo per dataset and view
    across its reruns and starts a new one at the click that runs the batch."""

    def __init__(self, view: Collection, memo: dict | None = None) -> None:
        self.view = view
        self.memo = {} if memo is None else memo

    def _kept(self, key: tuple, read: Callable[[], object]):
        if key not in self.memo:  # an error is not kept: it is raised again next time
            self.memo[key] = read()
        return self.memo[key]

    def labels(self, field_name: str) -> list[str]:
        from camcore import store

        return self._kept(("labels", field_name), lambda: store.label_values(self.view, field_name))

    def most_boxes(self, field_name: str, label: str) -> int:
        from camcore import store

        return self._kept(("most", field_name, label), lambda: store.most_boxes(self.view, field_name, label))


_shared_facts: dict[str, tuple[float, dict]] = {}
_shared_facts_lock = threading.Lock()


def shared_facts(key: str, seconds: float) -> dict:
    """A BoxFacts memo (any other fact of the view may share it) for a caller that cannot keep one
    itself: the plugin's form, whose module FiftyOne's App server imports anew at each request
    (its plugins cache is off by default). One per key (a view: store.views.view_key), dropped
    `seconds` after it was made."""
    now = time.monotonic()
    with _shared_facts_lock:
        for old in [k for k, (made, _memo) in _shared_facts.items() if now - made > seconds]:
            del _shared_facts[old]
        return _shared_facts.setdefault(key, (now, {}))[1]


def forget_shared_facts(key: str) -> None:
    with _shared_facts_lock:
        _shared_facts.pop(key, None)


def box_batches(view: Collection, options: BatchOptions, box: str | None,
                facts: BoxFacts | None = None) -> list[BatchOptions]:
    """A detector's batch as one run per box rule (camcore.detection.expand_batch_rule: top:<k>
    is k fields, field:<f>[:<class>] one field per box index); any other model's: [options].
    TargetError (one line) for a box rule on a classifier or a segmenter. `facts`: what the view
    was found to hold before (a new BoxFacts of the view when None: read now)."""
    spec = options.spec
    if spec.task != "detection":
        if box:
            raise TargetError(f"A box rule is for detection models; {spec.key} is a {spec.task} model: "
                              "give a target class.")
        return [options]
    target = str(options.target_rule or PREDICTED)
    if box and target != PREDICTED:
        raise TargetError(f"{spec.key} is a detection model: give its box rule alone, not a target class.")
    if target != PREDICTED and not detection.looks_like_box_rule(target) and not target.startswith("field:"):
        raise TargetError(f"{spec.key} is a detection model: it explains boxes (top, top:<k>, det:<i>, "
                          f"class:<name>, all, field:<name>[:<class>]), not the target class '{target}'.")
    rule = box or (target if target != PREDICTED else detection.TOP)
    facts = facts or BoxFacts(view)
    _check_box_labels(view, spec, rule, facts)
    rules = detection.expand_batch_rule(rule, facts.most_boxes)
    return [dataclasses.replace(options, target_rule=r) for r in rules]


def _check_box_labels(view: Collection, spec: ModelSpec, rule: str, facts: BoxFacts) -> None:
    """A box rule's class (class:<name>, field:<f>:<class>) must be one the detector knows, and a
    field's boxes must hold at least one such label: else one line before any field is declared
    (each sample would fail alike)."""
    body = str(rule).partition("@")[0].strip()
    names = spec.class_names()
    if body.startswith("class:"):
        detection.class_label(names, body[len("class:"):].strip())
    if not body.startswith("field:"):
        return
    from camcore import store  # a field's boxes: the view is read

    field, _index, label = detection.field_rule_parts(body)
    if label:
        detection.class_label(names, label)
    elif field in store.detection_fields(view):
        labels = facts.labels(field)
        if labels and not any(_knows(names, x) for x in labels):
            shown = ", ".join(repr(x) for x in labels[:5]) + (" …" if len(labels) > 5 else "")
            raise TargetError(f"The model knows none of the labels in the field '{field}' ({shown}): "
                              f"no box of it can be matched to {spec.key}'s detections.")


def _knows(names: Sequence[str], label: str) -> bool:
    try:
        detection.class_label(names, label)
    except TargetError:
        return False
    return True
