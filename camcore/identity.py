"""One identity per heatmap field: what made a map, and so the field it lives in.

A :class:`HeatmapIdentity` is built once (by the engine for a computed map, by a batch for the
fields it fills) from the loaded model and the request, and carried by the result's heatmaps
into the push and the batch. It alone gives the field name, the description and the label's
provenance, so no two routes can disagree on them.

Field names are short, so that the FiftyOne App's sidebar shows them whole (at 1280 px its label
is 204 px wide and shows about 190 px of text whole, some 24 characters of its font: :func:`sidebar_px`):
``cam_<method>_<layer>_<model>[_<target>][_<variant>...]``. Method, layer and model are the
registries' short codes (``MethodSpec.short``, ``LayerSpec.short``, ``ModelSpec.short``: data in
the tables, a models file's own entries included), e.g. ``cam_grad_head_effl0`` for Grad-CAM on
EfficientNet-Lite0's head. The target is left out when it was left on auto (the rule
``predicted``: one computation, one field); a named class is its first name (``tabby, tabby cat``
-> ``tabby``; at most 20 characters, then cut to fit as below); a detector's box rule ``det:<i>`` is
``det<i>`` and a field's i-th box ``field:ground_truth:<i>[:<class>]`` is ``gt<i>[_<class>]``. The
variant tokens are ``aug``, ``eig`` (eigen smooth), ``untr`` (untrained weights) and the stem of a
weights file the user chose (at most 12): such a map
never replaces the plain map of the model's own weights. Each part is sanitised to ``[a-z0-9_]``;
a part cut to its length ends in 4 hex of a hash of the whole part. A coded name (the engine's, a
batch's) still wider than the sidebar keeps its codes, its variant tokens and as much of the class as
fits, with no hash (:func:`_shortened`: ``cam_gradpp_l4_dlv3_perso``); where fewer than 3
characters of the class would be left (or there is no class), its codes and as much of the
rest as fits, then ``_<3 hex of a hash of the whole identity>`` (:func:`_fit`): every name the
project writes shows whole (tests/test_names_fit.py); where two cut names meet in a dataset the store gives the
second its :attr:`~HeatmapIdentity.spare_field_name` (6 hex), and a map a dataset already keeps
under an older name stays there (``stored_as``, camcore.store.fields.stored_identity). An
uncoded name (a test's) over :data:`MAX_FIELD_LEN` is cut and ends in ``_<6 hex>``. The full
description (model, weights, method, layer, target, smoothing) is the field's description and its
info. An identity built without the registries' codes (a test's) names its parts by their
sanitised keys.

Never imports torch, FiftyOne or Streamlit.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

FIELD_PREFIX = "cam_"
MAX_FIELD_LEN = 64
_TARGET_CHARS = 20
_CODE_CHARS = 20  # a part named by its key (an identity built without the registries' codes)
_TAG_CHARS = 12
_FIT_HEX = 3  # the hash that ends a name cut to fit the sidebar
AUTO_TARGET = "predicted"  # camcore.targets.PREDICTED: a target left on auto; no part in the name
# The variant tokens of the name (the meaning's variant keeps the long words).
_VARIANT_TOKENS = (("aug", "aug_smooth"), ("eig", "eigen_smooth"), ("untr", "untrained"))

# The FiftyOne App's (1.22) sidebar at a 1280 px wide window: a field's label box is 204 px wide in
# the sample modal's sidebar (the narrower one: its count takes the rest; the grid's is 218), and
# the label's inline wrappers add 14 px after the text, so the modal draws an ellipsis once the
# text is wider than about 190 px (measured in Chromium: tests/test_app21_modal_names.py). Its font
# (bold 14 px Palanquin, from Google Fonts; offline the browser's sans-serif, Arial's widths) as
# Chromium draws it offline: px per character, measured in the App (tests/test_app21_app.py checks
# it there). Half a pixel kept for rounding.
SIDEBAR_PX = 189.5
_GLYPH_PX = {**dict.fromkeys("0123456789acesvxy_k", 7.79), **dict.fromkeys("bdghnopqu", 8.55),
             "f": 4.66, "t": 4.66, "i": 3.89, "j": 3.89, "l": 3.89, "m": 12.45, "r": 5.45, "w": 10.89,
             "z": 7.0}
_WIDEST_PX = max(_GLYPH_PX.values())
# A measure field is a top-level float/bool/string, which the App draws otherwise: in the grid's
# sidebar its label box is 218 px and the ellipsis comes once the text is wider than about 212.5 px
# (whole at 212.3, cut at 213.1: measured in Chromium, tests/test_app21_modal_names.py); the sample
# modal draws it under its value in a smaller font, wider. Its own limit, so a third of a pixel kept.
MEASURE_SIDEBAR_PX = 212.0
# The measures kept indexed (the Audit page sorts and narrows by them: camcore.store.measures). The
# App draws an index icon beside an indexed field's name: its label box 200 px against 218, so 18 px
# less room (measured in Chromium, tests/test_app21_modal_names.py).
INDEXED_MEASURES = ("share",)
INDEX_ICON_PX = 18.0
# The measures stored beside a heatmap (camcore.measures): name -> value type. Their fields are
# ``camm_<measure>_<the heatmap field's name without cam_>``, that name cut to fit the sidebar
# (HeatmapIdentity.measure_field): a heatmap field always starts with ``cam_``, so a measure field
# never collides with one (and no "__": mongoengine reads it as an operator). Which heatmap a
# measure field describes is in its field info (camcore.store.measures), not in its name.
MEASURES: dict[str, type] = {"score": float, "conf": float, "share": float, "keep": float, "remove": float,
                             "bg": bool, "about": str}
MEASURE_PREFIX = "camm_"


def measure_sidebar_px(measure: str) -> float:
    """The room a measure field's name has in the App's grid sidebar (less beside an index icon)."""
    return MEASURE_SIDEBAR_PX - (INDEX_ICON_PX if measure in INDEXED_MEASURES else 0.0)


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


def sidebar_px(name: str) -> float:
    """How wide the App's sidebar draws a field name (see SIDEBAR_PX); a character outside
    ``[a-z0-9_]`` counts as the widest."""
    return sum(_GLYPH_PX.get(c, _WIDEST_PX) for c in name)


def _fitting(text: str, room: float) -> str:
    """The longest start of text that the sidebar draws within room px."""
    k = 0
    for c in text:  # sidebar_px of each character, inlined: names are cut millions of times in tests
        px = _GLYPH_PX.get(c, _WIDEST_PX)
        if px > room:
            break
        room -= px
        k += 1
    return text[:k]


def _first_name(target: str) -> str:
    # ImageNet names list synonyms ("tabby, tabby cat"): the first one says it.
    return str(target).split(",")[0].strip() or str(target)


# A detector's box rules (camcore.detection.RULE_KINDS; not imported: it needs torch)
_BOX_RULE = re.compile(r"^\s*(top|all|det|class|field|box)\s*(:|@|$)", re.I)
_DET_RULE = re.compile(r"^\s*det\s*:\s*(\d+)\s*$", re.I)
_FIELD_RULE = re.compile(r"^\s*field\s*:\s*([^:@]+?)\s*:\s*(\d+)\s*(?::([^@]*))?(?:@.*)?$", re.I)


def _field_code(field_name: str) -> str:
    """A Detections field in a few letters: its words' initials (ground_truth: gt), or a one-word
    name's first two letters (predictions: pr)."""
    words = [w for w in re.split(r"[^a-z0-9]+", field_name.lower()) if w]
    if not words:
        return "f"
    return "".join(w[0] for w in words)[:4] if len(words) > 1 else words[0][:2]


def _target_part(target: str) -> str:
    """The target's part of a name: ``det<i>`` for the box rule ``det:<i>`` (short, so a batch's
    ``top:k`` fields keep their index in the name), ``<field code><i>[_<class>]`` for a field's
    i-th box (``field:ground_truth:2:kite``: ``gt2_kite``), else its first name sanitised."""
    det = _DET_RULE.match(target)
    if det:
        return f"det{int(det.group(1))}"
    box = _FIELD_RULE.match(target)
    if box:
        label = (box.group(3) or "").strip()
        code = f"{_field_code(box.group(1))}{int(box.group(2))}"
        return f"{code}_{sanitise(label, _TARGET_CHARS)}" if label else code
    return sanitise(_first_name(target), _TARGET_CHARS)


def _squeeze(name: str) -> str:
    return re.sub(r"_+", "_", name)


_MIN_KEPT = 3  # a cut tail shorter than this says nothing: the name ends in a hash instead


def _shortened(head: str, cls: str, rest: str) -> str | None:
    """``<head>_<cls>_<rest>`` too wide for the App's sidebar: as much of the class as fits before
    the variant tokens (kept whole: a cut token would read as another variant), with no hash,
    when that keeps at least _MIN_KEPT characters of the class; else None. Two maps whose names are
    cut alike meet in a dataset only: the store gives the second its spare name
    (camcore.store.fields.stored_identity), also when two processes push them at once."""
    end = f"_{rest}" if rest else ""
    cut = _fitting(cls, SIDEBAR_PX - sidebar_px(head) - sidebar_px("_") - sidebar_px(end)).rstrip("_")
    return f"{head}_{cut}{end}" if len(cut) >= _MIN_KEPT else None


def _fit(head: str, tail: str, digest: str) -> str:
    """``<head>_<tail>`` too wide for the App's sidebar: as much of the tail (the class, the
    variant tokens, the weights file's stem) as fits, then ``_<digest>`` (a hash of the whole
    identity); a head too wide on its own is cut too."""
    end = sidebar_px(f"_{digest}")
    # the whole tail did not fit: its last character never will
    cut = _fitting(tail[:-1], SIDEBAR_PX - sidebar_px(head) - sidebar_px("_") - end).rstrip("_")
    if cut:
        return f"{head}_{cut}_{digest}"
    short = _fitting(head, SIDEBAR_PX - end).rstrip("_")
    if short:
        return f"{short}_{digest}"
    return f"{FIELD_PREFIX}{digest}"


class Codes(TypedDict):
    """The registries' short codes that name a field (HeatmapIdentity's *_code fields)."""

    model_code: str
    method_code: str
    layer_code: str


def codes(model_spec: Any, method: str | _Coded, layer: str) -> Codes:
    """The short codes (model_code, method_code, layer_code) of an identity from the registries'
    entries: a ModelSpec (its ``short`` and its layers' ``short``), a MethodSpec (or a bare key:
    no code). Every route that names a field (the engine, a batch before or after its model
    loads) builds its identity with these, so one computation has one field name."""
    layer_spec = next((s for s in getattr(model_spec, "layers", ()) if layer in (s.name, s.path)), None)
    return {"model_code": str(getattr(model_spec, "short", "") or ""),
            "method_code": "" if isinstance(method, str) else str(method.short or ""),
            "layer_code": str(getattr(layer_spec, "short", "") or "")}


def measure_of(field: str) -> tuple[str, str] | None:
    """(measure, heatmap field) read from a measure field's name; None for any other name. The
    measure is always right (every measure name starts ``camm_<measure>_``); the heatmap only for a
    name written whole (before names were cut to fit the sidebar): the field's info is the link
    (camcore.store.measures.measure_links), this parse only the fallback for a field without it."""
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


class _Coded(Protocol):
    """A registry entry with a short code for field names (MethodSpec, ModelSpec, LayerSpec)."""

    @property
    def short(self) -> str: ...


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
    # The registries' short codes the name uses (see the module's docstring): derived from the
    # entries above, so not compared; "" names the part by its sanitised key.
    model_code: str = field(default="", compare=False)
    method_code: str = field(default="", compare=False)
    layer_code: str = field(default="", compare=False)
    # The field a dataset already keeps this map in under another name (a name from before names
    # were cut to fit the App's sidebar): set by the store (camcore.store.fields.stored_identity) only.
    stored_as: str = field(default="", compare=False, repr=False)

    @classmethod
    def of(cls, model: _Loaded, method: str | _Coded, layer: str, target: str, *, input_size: int = 0,
           aug_smooth: bool = False, eigen_smooth: bool = False) -> HeatmapIdentity:
        """The identity of a map of this loaded model: weights, tag and provenance come from the
        model alone, never from the caller. `method`: its registry entry (a MethodSpec: its code
        names the field) or its key."""
        given = model.provenance or {}
        return cls(model=model.spec.key, method=str(getattr(method, "key", method)), layer=layer, target=str(target),
                   weights=model.weights_label, pretrained=bool(model.pretrained),
                   weights_tag=model.weights_tag, weights_sha256=str(given.get("weights_sha256") or ""),
                   arch=str(given.get("arch") or ""), classes_file=str(given.get("classes_file") or ""),
                   input_size=int(input_size or 0), aug_smooth=bool(aug_smooth),
                   eigen_smooth=bool(eigen_smooth), **codes(model.spec, method, layer))

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
        return self.stored_as or self._name(_FIT_HEX)

    @property
    def spare_field_name(self) -> str:
        """The name a dataset gives this map when field_name is taken by another map there (two
        names cut alike whose short hashes meet): cut the same way, ending in 6 hex."""
        return self._name(6)

    def _name(self, hexes: int) -> str:
        head = [self.method_code or sanitise(self.method, _CODE_CHARS),
                self.layer_code or sanitise(self.layer, _CODE_CHARS),
                self.model_code or sanitise(self.model, _CODE_CHARS)]
        tail = []
        if self.target != AUTO_TARGET:
            tail.append(_target_part(self.target))
        on = {"aug_smooth": self.aug_smooth, "eigen_smooth": self.eigen_smooth, "untrained": not self.pretrained}
        tail += [token for token, what in _VARIANT_TOKENS if on[what]]
        if self.weights_tag:
            tail.append(sanitise(self.weights_tag, _TAG_CHARS))
        name = _squeeze(FIELD_PREFIX + "_".join(head + tail))
        whole = "|".join((self.model, self.method, self.layer, self.target, self.variant))
        if self.model_code and self.method_code:  # a name the engine or a batch made: shown whole
            if sidebar_px(name) <= SIDEBAR_PX and hexes == _FIT_HEX:
                return name
            if hexes == _FIT_HEX:  # the hash only where no word is left to read (and in spare names)
                # the class is the tail's first part; a detector's box rule is a code, never cut short
                named = self.target != AUTO_TARGET and not _BOX_RULE.match(self.target)
                short = named and _shortened(_squeeze(FIELD_PREFIX + "_".join(head)), tail[0],
                                             _squeeze("_".join(tail[1:])))
                if _FIELD_RULE.match(self.target) and "_" in tail[0]:  # a field's box of a class:
                    box, _, cls = tail[0].partition("_")  # its field code and index whole, the class cut
                    short = _shortened(_squeeze(FIELD_PREFIX + "_".join([*head, box])), cls,
                                       _squeeze("_".join(tail[1:])))
                if short:
                    return short
            return _fit(_squeeze(FIELD_PREFIX + "_".join(head)), _squeeze("_".join(tail)), _digest(whole, hexes))
        if len(name) > MAX_FIELD_LEN or hexes != _FIT_HEX:
            name = name[: MAX_FIELD_LEN - 7].rstrip("_") + "_" + _digest(whole, 6)
        return name

    def measure_field(self, measure: str, spare: bool = False) -> str:
        """The field of one measure (see MEASURES) of this heatmap: ``camm_<measure>_`` and the
        heatmap field's name without ``cam_``, cut to fit the App's sidebar (measure_sidebar_px;
        a last part cut under 3 characters left out). Cut names of two maps can meet (every class
        of one method, layer and model): the store gives the second map's measures their spare
        names, cut shorter and ending in 6 hex of the heatmap field's name, and links each measure
        field to its map in its info (camcore.store.measures), so the two never disagree."""
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
        head, rest = f"{MEASURE_PREFIX}{measure}_", self.field_name[len(FIELD_PREFIX):]
        room = measure_sidebar_px(measure)
        if not spare and sidebar_px(head + rest) <= room:
            return head + rest
        end = f"_{_digest(self.field_name, 6)}" if spare else ""
        cut = _fitting(rest, room - sidebar_px(head) - sidebar_px(end))
        k = len(cut)
        if k < len(rest) and rest[k] != "_" and "_" in cut and len(cut.rsplit("_", 1)[1]) < _MIN_KEPT:
            cut = cut.rsplit("_", 1)[0]  # "grad_h" says less than "grad"
        return (head + cut.rstrip("_")).rstrip("_") + end

    def measure_fields(self, spare: bool = False) -> dict[str, str]:
        """measure -> its field (or its spare name), for every measure."""
        return {m: self.measure_field(m, spare) for m in MEASURES}

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
                f"for {self.target!r}{extra}; 16-bit PNG, 0..65535 = 0..1 of the min-max scaled CAM; "
                # the App draws no colour bar beside a map: this is its legend (store.appstyle's scale)
                "drawn in jet: dark blue = the map's low (label raw_min), red = its high (raw_max)")

    @property
    def provenance(self) -> dict[str, Any]:
        """The label attributes that say what made the map (the store adds the target actually
        explained, the raw range and the time); a batch resumes only where they match."""
        return {"model": self.model, "weights": self.weights, "pretrained": self.pretrained,
                "method": self.method, "layer": self.layer, "aug_smooth": self.aug_smooth,
                "eigen_smooth": self.eigen_smooth, "arch": self.arch, "weights_sha256": self.weights_sha256,
                "classes_file": self.classes_file, "input_size": self.input_size}
