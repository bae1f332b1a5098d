"""What a model is, as data: its layers, its spec, and the entries of a models file that were
skipped. camcore.models (the registry and the cache) and camcore.model_file (the user's models
file) both build on these and import them from here, so neither imports the other back."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from camcore import weights as weights_mod
from camcore.errors import ModelError
from camcore.preprocessing import Preprocess

if TYPE_CHECKING:  # a spec names its builder; torch is imported when it builds (camcore.model_outputs)
    import torch


@dataclass(frozen=True)
class LayerSpec:
    name: str  # what the user sees, e.g. "layer4"
    path: str  # dotted module path inside the model, e.g. "backbone.layer4"
    key: str = ""  # a module whose output is a dict (a detector's FPN): the entry this layer is
    short: str = ""  # its code in field names (camcore.identity), e.g. "l4" for "layer4"; "" -> its name


@dataclass(frozen=True)
class ModelSpec:
    key: str
    label: str
    task: str  # "classification" | "segmentation" | "detection"
    family: str  # "cnn" | "vit": decides reshape transform and ablation layer
    build: Callable[[], torch.nn.Module]  # the architecture with random weights, no download
    weights: weights_mod.WeightsSource
    preprocess: Preprocess
    class_names: Callable[[], tuple[str, ...]]
    layers: tuple[LayerSpec, ...]
    default_layer: str
    description: str = ""
    patch_size: int = 16  # ViT only: tokens form a (H/patch) x (W/patch) grid
    arch: str = ""  # "timm:<name>" | "torchvision:<builder>": named in every heatmap's provenance
    source: str = "built-in"  # or the models file the entry comes from
    classes_file: str = ""  # where the class names come from (a models file's classes file)
    # Changes whenever a models-file entry changes (its settings, checkpoint or classes): the model
    # cache builds the model again instead of serving the old one under the same key.
    fingerprint: str = ""
    # Its code in field names (camcore.identity): short, so the FiftyOne App's sidebar shows a
    # field's name whole; unique among the models (a models file's entries are checked).
    short: str = ""

    def input_size(self, requested: int | None = None) -> int:
        """The size the model runs at: a request only changes short-side (segmentation) models;
        square models (classifiers, ViTs) always see their own size."""
        p = self.preprocess
        return int(requested) if (requested and p.mode == "short_side") else int(p.size)

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name or spec.path == name:
                return spec
        for spec in self.layers:  # "Layer4", "HEAD": layer names never differ only in case
            if str(name).strip().lower() in (spec.name.lower(), spec.path.lower()):
                return spec
        names = ", ".join(s.name for s in self.layers)
        raise ModelError(f"Model '{self.key}' has no layer '{name}'. Its layers: {names}.")

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "task": self.task,
            "family": self.family,
            "layers": [s.name for s in self.layers],
            "layer_paths": {s.name: s.path for s in self.layers},
            "default_layer": self.default_layer,
            "input": {"mode": self.preprocess.mode, "size": self.preprocess.size},
            "weights": self.weights.describe(),
            "num_classes": len(self.class_names()),
            "description": self.description,
            "arch": self.arch,
            "source": self.source,
            "classes_file": self.classes_file,
            "short": self.short,
            "layer_shorts": {s.name: s.short for s in self.layers},
        }


def _fpn_layers(stages: tuple[tuple[str, str, str], ...], levels: tuple[str, ...]) -> tuple[LayerSpec, ...]:
    """A detector's layers: backbone stages (name, path, code), the FPN's levels fused ("fpn",
    pytorch-grad-cam's tutorial's choice) and each level alone ("fpn_<key>", code "fpn<key>" or
    _LEVEL_CODES')."""
    return (tuple(LayerSpec(name, path, short=short) for name, path, short in stages)
            + (LayerSpec("fpn", "backbone", short="fpn"),)
            + tuple(LayerSpec(f"fpn_{k}", "backbone", key=k, short=_LEVEL_CODES.get(k, f"fpn{k}")) for k in levels))


_LEVEL_CODES = {"pool": "fpool", "p6": "fp6", "p7": "fp7"}  # codes of the FPN levels that are not numbered


_RESNET_STAGES = tuple((f"layer{i}", f"backbone.body.layer{i}", f"l{i}") for i in range(1, 5))
_MOBILENET_STAGES = tuple((f"stage{i}", f"backbone.body.{i}", f"s{i}") for i in (3, 6, 12, 16))
_RCNN_LEVELS, _RETINA_LEVELS = ("0", "1", "2", "3", "pool"), ("0", "1", "2", "p6", "p7")
# torchvision detection builder -> (backbone stages (name, module path, code in field names), the
# FPN's level keys).
# The built-in models and the models file's detection entries both read it.
DETECTOR_LAYOUTS: dict[str, tuple[tuple[tuple[str, str, str], ...], tuple[str, ...]]] = {
    "fasterrcnn_resnet50_fpn": (_RESNET_STAGES, _RCNN_LEVELS),
    "fasterrcnn_resnet50_fpn_v2": (_RESNET_STAGES, _RCNN_LEVELS),
    "fasterrcnn_mobilenet_v3_large_fpn": (_MOBILENET_STAGES, ("0", "1", "pool")),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (_MOBILENET_STAGES, ("0", "1", "pool")),
    "retinanet_resnet50_fpn": (_RESNET_STAGES[1:], _RETINA_LEVELS),
    "retinanet_resnet50_fpn_v2": (_RESNET_STAGES[1:], _RETINA_LEVELS),
    "fcos_resnet50_fpn": (_RESNET_STAGES[1:], _RETINA_LEVELS),
    "ssdlite320_mobilenet_v3_large": ((("features0", "backbone.features.0", "f0"),
                                       ("features1", "backbone.features.1", "f1")),
                                      ("0", "1", "2", "3", "4", "5")),
}


def detector_layers(builder: str) -> tuple[LayerSpec, ...]:
    """The layers of a torchvision detection builder (DETECTOR_LAYOUTS); KeyError for others."""
    return _fpn_layers(*DETECTOR_LAYOUTS[builder])


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of the models file that was not added, and why."""

    key: str  # the entry's key, or "(file)" when the file itself cannot be read
    reason: str  # one line
    source: str  # the models file

    def __str__(self) -> str:
        what = "the models file" if self.key == "(file)" else f"model '{self.key}'"
        return f"{what} ({self.source}) skipped: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "reason": self.reason, "source": self.source, "message": str(self)}
