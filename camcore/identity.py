"""One identity per heatmap field: what made a map, and so the field it lives in.

A :class:`HeatmapIdentity` is built once (by the engine for a computed map, by a batch for the
fields it fills) from the loaded model and the request, and carried by the result's heatmaps
into the push and the batch. It alone gives the field name, the description and the label's
provenance, so no two routes can disagree on them.

Field names are short, so that the FiftyOne App's sidebar shows them whole:
``cam_<method>_<layer>_<target>_<model>[_<variant>]`` (the parts that differ most inside one
study first, because the sidebar cuts the end), each part sanitised to ``[a-z0-9_]``, ``+`` as
``p`` (gradcam++ -> gradcampp); the target is its first name (``tabby, tabby cat`` -> ``tabby``)
and at most 20 characters, the model its registry key (at most 20), a weights file's stem at most
12, a part cut to its length ending in 4 hex of a hash of the whole part; a name still over
:data:`MAX_FIELD_LEN` is cut and ends in ``_<6 hex of a hash of the whole identity>``. The
variant is ``aug``, ``eigen``, ``untrained`` and/or the stem of a weights file the user chose: such
a map never replaces the plain map of the model's own weights. The full description (model,
weights, method, layer, target, smoothing) is the field's description and its info.

Never imports torch, FiftyOne or Streamlit.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

FIELD_PREFIX = "cam_"
MAX_FIELD_LEN = 64
_TARGET_CHARS = 20
_MODEL_CHARS = 20
_TAG_CHARS = 12
# The measures stored beside a heatmap (camcore.measures): name -> value type. Their fields are
# ``camm_<measure>_<the heatmap field's name without cam_>``: a heatmap field always starts with
# ``cam_``, so a measure field never collides with one (and no "__": mongoengine reads it as an operator).
MEASURES: dict[str, type] = {"score": float, "conf": float, "share": float, "keep": float, "remove": float,
                             "bg": bool, "about": str}
MEASURE_PREFIX = "camm_"


def _digest(text: str, n: int) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def sanitise(part: str, limit: int | None = None) -> str:
    """``part`` as a field-name part: lowercase ``[a-z0-9_]``, ``+`` as ``p``; names without any
    ASCII letter or digit (non-Latin class names) get a stable hash part instead. A part cut to
    ``limit`` ends in 4 hex of the whole, so two long names sharing a start stay apart."""
    text = re.sub(r"[^a-z0-9]+", "_", str(part).lower().replace("+", "p")).strip("_")
    if not text:
        return "x" + _digest(str(part), 6)
    if limit is not None and len(text) > limit:
        text = text[: limit - 5].rstrip("_") + "_" + _digest(str(part), 4)
    return text


def _first_name(target: str) -> str:
    # ImageNet names list synonyms ("tabby, tabby cat"): the first one says it.
    return str(target).split(",")[0].strip() or str(target)


def measure_of(field: str) -> tuple[str, str] | None:
    """(measure, heatmap field) of a measure field's name; None for any other name."""
    if not field.startswith(MEASURE_PREFIX):
        return None
    measure, _, rest = field[len(MEASURE_PREFIX):].partition("_")
    return (measure, FIELD_PREFIX + rest) if measure in MEASURES and rest else None


class _Loaded(Protocol):
    """What an identity reads from a camcore.models.LoadedModel (kept structural: no torch here)."""

    @property
    def pretrained(self) -> bool: ...

    @property
    def weights_label(self) -> str: ...

    @property
    def weights_tag(self) -> str: ...

    @property
    def provenance(self) -> dict[str, str]: ...

    @property
    def spec(self) -> Any: ...


@dataclass(frozen=True)
class HeatmapIdentity:
    """What made a heatmap: model, weights, method, layer, target and smoothing."""

    model: str  # registry key
    method: str  # method registry key
    layer: str  # layer registry name
    target: str  # the class explained, or a batch's target rule ("predicted")
    weights: str = ""  # the weights' human label, e.g. "untrained (random)"
    pretrained: bool = True
    weights_tag: str = ""  # the stem of a weights file the user chose; "" for the model's own
    weights_sha256: str = ""  # the weights file's content hash
    arch: str = ""  # "timm:<name>" | "torchvision:<builder>"
    classes_file: str = ""
    input_size: int = 0  # the size the model ran at (the tensor's short side)
    aug_smooth: bool = False
    eigen_smooth: bool = False

    @classmethod
    def of(cls, model: _Loaded, method: str, layer: str, target: str, *, input_size: int = 0,
           aug_smooth: bool = False, eigen_smooth: bool = False) -> HeatmapIdentity:
        """The identity of a map of this loaded model: weights, tag and provenance come from the
        model alone, never from the caller."""
        given = model.provenance or {}
        return cls(model=model.spec.key, method=method, layer=layer, target=str(target),
                   weights=model.weights_label, pretrained=bool(model.pretrained),
                   weights_tag=model.weights_tag, weights_sha256=str(given.get("weights_sha256") or ""),
                   arch=str(given.get("arch") or ""), classes_file=str(given.get("classes_file") or ""),
                   input_size=int(input_size or 0), aug_smooth=bool(aug_smooth),
                   eigen_smooth=bool(eigen_smooth))

    @property
    def variant(self) -> str:
        """``aug``, ``eigen``, ``untrained`` and/or the weights file's stem, joined by ``_``;
        "" for a plain map of the model's own weights."""
        parts = (("aug", self.aug_smooth), ("eigen", self.eigen_smooth),
                 ("untrained", not self.pretrained), (self.weights_tag, bool(self.weights_tag)))
        return "_".join(part for part, on in parts if on)

    @functools.cached_property
    def field_name(self) -> str:
        """The sample field this map lives in (see the module's docstring). Cached: a batch asks
        for it once per heatmap written."""
        parts = [sanitise(self.method), sanitise(self.layer), sanitise(_first_name(self.target), _TARGET_CHARS),
                 sanitise(self.model, _MODEL_CHARS)]
        parts += ["aug"] * self.aug_smooth + ["eigen"] * self.eigen_smooth + ["untrained"] * (not self.pretrained)
        if self.weights_tag:
            parts.append(sanitise(self.weights_tag, _TAG_CHARS))
        name = re.sub(r"_+", "_", FIELD_PREFIX + "_".join(parts))
        if len(name) > MAX_FIELD_LEN:
            whole = "|".join((self.model, self.method, self.layer, self.target, self.variant))
            name = name[: MAX_FIELD_LEN - 7].rstrip("_") + "_" + _digest(whole, 6)
        return name

    def measure_field(self, measure: str) -> str:
        """The field of one measure (see MEASURES) of this heatmap: built from the same name, so a
        map and its measures never disagree about which map they describe."""
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
        return f"{MEASURE_PREFIX}{measure}_{self.field_name[len(FIELD_PREFIX):]}"

    def measure_fields(self) -> dict[str, str]:
        """measure -> its field, for every measure."""
        return {m: self.measure_field(m) for m in MEASURES}

    @property
    def meaning(self) -> dict[str, str]:
        """What the field means, stored in its info: a push refuses a field that means another map."""
        meaning = {"kind": "heatmap", "model": self.model, "method": self.method, "layer": self.layer,
                   "target": self.target}
        return {**meaning, "variant": self.variant} if self.variant else meaning

    @property
    def description(self) -> str:
        """The field's full description, shown in the App's field info."""
        how = [w for w, on in (("aug smooth", self.aug_smooth), ("eigen smooth", self.eigen_smooth)) if on]
        weights = self.weights or ("pretrained" if self.pretrained else "untrained (random)")
        tag = f", weights file {self.weights_tag}" if self.weights_tag else ""
        extra = f" ({', '.join(how)})" if how else ""
        return (f"CAM Explorer: {self.method} on {self.layer} of {self.model} ({weights}{tag}) "
                f"for {self.target!r}{extra}; 16-bit PNG, 0..65535 = 0..1 of the min-max scaled CAM")

    @property
    def provenance(self) -> dict[str, Any]:
        """The label attributes that say what made the map (the store adds the target actually
        explained, the raw range and the time); a batch resumes only where they match."""
        return {"model": self.model, "weights": self.weights, "pretrained": self.pretrained,
                "method": self.method, "layer": self.layer, "aug_smooth": self.aug_smooth,
                "eigen_smooth": self.eigen_smooth, "arch": self.arch, "weights_sha256": self.weights_sha256,
                "classes_file": self.classes_file, "input_size": self.input_size}
