"""The CAM method registry (plain data). pytorch-grad-cam is the engine and the reference.

A method is one `MethodSpec` entry in METHODS (keyword fields only) and, where it has math of its
own, one `Product` beside the table. Its `kind` picks the engine's strategy (camcore/engine/kinds.py):
  Kind.GRADIENT     - from one shared forward + backward (activations and gradients of the layer)
  Kind.ACTIVATION   - from the same shared forward alone (no gradients needed)
  Kind.PERTURBATION - needs its own forward passes, one per channel (ScoreCAM, AblationCAM):
                      `channel_weights` computes them, batched
  Kind.OWN_PASS     - needs its own pass of another shape (FullGrad, ShapleyCAM, FinerCAM):
                      pytorch-grad-cam runs it, called through `own_pass_call`

Gradient and activation methods are `pure`: a function of the layer's activations and gradients,
so one pass with hooks on every chosen layer feeds all of them on all layers. Their `product`
holds that function twice, numpy (the library's math, on the host) and torch (on the tensors'
device, what a GPU runs: device_math.py), side by side so the two cannot drift apart.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from camcore.defaults import DEFAULT_METHOD as DEFAULT_METHOD  # re-exported; the CLI's parser reads defaults
from camcore.errors import MethodError
from camcore.identity import sanitise
from camcore.results import Target

# The table is read without torch or pytorch-grad-cam (a form, a picker, the CLI's checks): each
# is imported where a map is computed (the library's class by its name, the torch math when run).
if TYPE_CHECKING:
    import torch


class Kind(StrEnum):
    """How a method's map is computed; the engine has one strategy per kind. The values are
    what `to_dict` and the CLI show."""
    GRADIENT = "gradient"
    ACTIVATION = "activation"
    PERTURBATION = "perturbation"
    OWN_PASS = "other"

    @property
    def pure(self) -> bool:
        """A function of the shared pass's activations (and gradients)."""
        return self in (Kind.GRADIENT, Kind.ACTIVATION)


# (cam_object, activations, grads) -> the B x C x H x W array that is summed over channels
# (or projected on its first principal direction with eigen smoothing), numpy on the host.
HostProduct = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]
# (activations, gradients) -> the same B x C x h x w product as torch ops on their device.
DeviceProduct = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True, kw_only=True)
class Product:
    """A pure method's math: how activations a and gradients g combine, per channel and position,
    before the sum over channels (or the Eigen projection). `host` is numpy (pytorch-grad-cam's
    formula, or its own method object's); `device` the same formula in torch, run where the
    tensors are (None: this method always computes on the host)."""
    host: HostProduct
    device: DeviceProduct | None = None


def _library_weights(cam: Any, activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    # The library's own per-channel weights (GradCAM, GradCAM++, XGradCAM, RandomCAM).
    weights = cam.get_cam_weights(None, None, None, activations, grads)
    return weights[:, :, None, None] * activations


# GradCAM.get_cam_weights: the mean gradient of each channel
def _gradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return g.mean(dim=(2, 3), keepdim=True) * a


# GradCAMPlusPlus.get_cam_weights (eq. 19 of arXiv:1710.11063, eps 1e-6, aij = 0 where grads = 0)
def _gradcam_plusplus(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    import torch

    from camcore.device_math import sum_hw

    g2 = g * g
    g3 = g2 * g
    aij = g2 / (2 * g2 + sum_hw(a) * g3 + 1e-6)
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    return sum_hw(g.clamp(min=0) * aij) * a


# XGradCAM.get_cam_weights (eps 1e-7)
def _xgradcam(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    from camcore.device_math import sum_hw

    return sum_hw(g * a / (sum_hw(a) + 1e-7)) * a


GRADCAM = Product(host=_library_weights, device=_gradcam)
GRADCAM_PLUSPLUS = Product(host=_library_weights, device=_gradcam_plusplus)
XGRADCAM = Product(host=_library_weights, device=_xgradcam)
RANDOM_WEIGHTS = Product(host=_library_weights)  # random draws: no device form to compare
# The get_cam_image products of EigenCAM, HiResCAM / EigenGradCAM, LayerCAM, GradCAMElementWise and
# SegEigenCAM, each as numpy and as torch:
ACTIVATIONS = Product(host=lambda cam, a, g: a, device=lambda a, g: a)
GRADIENTS_TIMES_ACTIVATIONS = Product(host=lambda cam, a, g: g * a, device=lambda a, g: g * a)
POSITIVE_GRADIENTS_TIMES_ACTIVATIONS = Product(host=lambda cam, a, g: np.maximum(g, 0) * a,
                                               device=lambda a, g: g.clamp(min=0) * a)
POSITIVE_ELEMENTWISE = Product(host=lambda cam, a, g: np.maximum(g * a, 0),
                               device=lambda a, g: (g * a).clamp(min=0))
ABS_GRADIENTS_TIMES_ACTIVATIONS = Product(host=lambda cam, a, g: np.abs(g) * a,
                                          device=lambda a, g: g.abs() * a)


# (cam object with its hooks, input, the library target, our Target, aug_smooth, eigen_smooth)
# -> the library's 1 x H x W map: how a method with a pass of its own is called.
OwnPassCall = Callable[[Any, "torch.Tensor", object, Target, bool, bool], np.ndarray]


def _library_call(cam: Any, x: torch.Tensor, grad_target: object, target: Target, aug_smooth: bool,
                  eigen_smooth: bool) -> np.ndarray:
    return cam(x, [grad_target], aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


def _finer_cam_call(cam: Any, x: torch.Tensor, grad_target: object, target: Target, aug_smooth: bool,
                    eigen_smooth: bool) -> np.ndarray:
    # FinerCAM builds its own contrast targets around a class index and has no aug_smooth.
    return cam(x, targets=None, eigen_smooth=eigen_smooth, target_idx=target.index)


@dataclass(frozen=True)
class _Perturbation:
    """camcore.perturbation's function `name`, imported at the first call (that module imports
    torch); a plain object, so that an entry still pickles and compares."""

    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        from camcore import perturbation

        return getattr(perturbation, self.name)(*args, **kwargs)


NOT_DETECTION = ("classification", "segmentation")
ALL_TASKS = (*NOT_DETECTION, "detection")


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    key: str  # URLs, stored field names and the CLI use it: never change one
    label: str
    short: str = ""  # its code in field names (camcore.identity): 1-8 of [a-z0-9], unique; never change one
    library_class: str  # pytorch-grad-cam's class (`cls`): the reference, and the runner of OWN_PASS methods
    kind: Kind
    in_article: bool = False
    product: Product | None = None  # pure methods: how activations and grads combine
    projection: Literal["pca", "pca_signed"] | None = None  # "pca": Eigen*; "pca_signed" with sign fix
    library_image: bool = False  # pure, but use the library's own get_cam_image (FEM, KPCA)
    supports_eigen_smooth: bool = True
    layer_independent: bool = False  # FullGrad uses every bias layer, not the chosen ones
    tasks: tuple[str, ...] = NOT_DETECTION  # ALL_TASKS: its math fits a detector's box target
    families: tuple[str, ...] = ("cnn", "vit")
    slow: bool = False  # shown as "(slow)" beside the label (method_label) and held back for a go
    note: str = ""
    # PERTURBATION: (model, layer module, x, activations, target, batch_size, progress, cancel,
    # vit=, guard=) -> 1 x C channel weights, replacing the library's get_cam_weights
    channel_weights: Callable[..., np.ndarray] | None = None
    per_fpn_level: bool = False  # channel_weights takes level=: a detector's one FPN level
    # OWN_PASS: how the library's object is called
    own_pass_call: OwnPassCall = _library_call

    def __post_init__(self) -> None:
        # A wrong entry fails at import, not on the first heatmap of its kind.
        if not isinstance(self.kind, Kind):
            raise TypeError(f"Method {self.key!r}: kind must be a Kind, not {self.kind!r}.")
        math = {"product": self.product is not None, "library_image": self.library_image,
                "channel_weights": self.channel_weights is not None}
        needed = {Kind.GRADIENT: ("product", "library_image"), Kind.ACTIVATION: ("product", "library_image"),
                  Kind.PERTURBATION: ("channel_weights",), Kind.OWN_PASS: ()}[self.kind]
        given = [name for name, present in math.items() if present]
        if len(given) != min(1, len(needed)) or not set(given) <= set(needed):
            wanted = " or ".join(needed) or "none of product, library_image, channel_weights"
            raise TypeError(f"Method {self.key!r} of kind {self.kind}: give {wanted} (given: {given or 'none'}).")
        if not re.fullmatch(r"[a-z0-9]{1,8}", self.short):
            raise TypeError(f"Method {self.key!r}: short must be 1-8 of [a-z0-9], not {self.short!r}.")

    @property
    def cls(self) -> type:
        """pytorch-grad-cam's class of this method (the library is imported at the first ask)."""
        return getattr(importlib.import_module("pytorch_grad_cam"), self.library_class)

    @property
    def pure(self) -> bool:
        return self.kind.pure

    @property
    def needs_gradients(self) -> bool:
        return self.kind is Kind.GRADIENT

    @property
    def device_product(self) -> DeviceProduct | None:
        """The torch form of a pure method's product (None: it computes on the host only)."""
        return self.product.device if self.product is not None else None

    def unsupported_reason(self, task: str, family: str) -> str | None:
        if task not in self.tasks:
            return f"{self.label} works on {' / '.join(self.tasks)} models only. {self.note}".strip()
        if family not in self.families:
            return f"{self.label} does not work on {'ViTs' if family == 'vit' else 'CNNs'}. {self.note}".strip()
        return None

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "short": self.short,
            "class": self.library_class,
            "kind": self.kind.value,
            "in_article": self.in_article,
            "supports_eigen_smooth": self.supports_eigen_smooth,
            "layer_independent": self.layer_independent,
            "tasks": list(self.tasks),
            "families": list(self.families),
            "slow": self.slow,
            "note": self.note,
        }


# Detection (ALL_TASKS): the one pass (gradients and activations of the hooked layers, FPN levels
# fused) and the per-channel forwards of Score-CAM (masks by each channel of the FPN's levels fused:
# 5 x 256 on Faster R-CNN) and Ablation-CAM (ablates each channel of a level, as pytorch-grad-cam's
# AblationLayerFasterRCNN).
METHODS: dict[str, MethodSpec] = {
    spec.key: spec
    for spec in (
        MethodSpec(key="gradcam", short="grad",
                   label="Grad-CAM", library_class="GradCAM", kind=Kind.GRADIENT, in_article=True,
                   product=GRADCAM, tasks=ALL_TASKS),
        MethodSpec(key="scorecam", short="score",
                   label="Score-CAM", library_class="ScoreCAM", kind=Kind.PERTURBATION, in_article=True,
                   slow=True, tasks=ALL_TASKS, note="One forward pass per channel of the layer.",
                   channel_weights=_Perturbation("score_cam_weights")),
        MethodSpec(key="gradcam++", short="gradpp",
                   label="Grad-CAM++", library_class="GradCAMPlusPlus", kind=Kind.GRADIENT,
                   in_article=True, product=GRADCAM_PLUSPLUS, tasks=ALL_TASKS),
        MethodSpec(key="ablationcam", short="ablat",
                   label="Ablation-CAM", library_class="AblationCAM", kind=Kind.PERTURBATION,
                   in_article=True, slow=True, tasks=ALL_TASKS,
                   note="One forward pass per channel; ViTs use AblationLayerVit.",
                   channel_weights=_Perturbation("ablation_cam_weights"), per_fpn_level=True),
        MethodSpec(key="xgradcam", short="xgrad",
                   label="XGrad-CAM", library_class="XGradCAM", kind=Kind.GRADIENT, in_article=True,
                   product=XGRADCAM, tasks=ALL_TASKS),
        MethodSpec(key="eigencam", short="eigen",
                   label="Eigen-CAM", library_class="EigenCAM", kind=Kind.ACTIVATION, in_article=True,
                   product=ACTIVATIONS, projection="pca", supports_eigen_smooth=False, tasks=ALL_TASKS,
                   note="First principal component of the activations: class-agnostic."),
        MethodSpec(key="eigengradcam", short="egrad",
                   label="EigenGrad-CAM", library_class="EigenGradCAM", kind=Kind.GRADIENT,
                   in_article=True, product=GRADIENTS_TIMES_ACTIVATIONS, projection="pca",
                   supports_eigen_smooth=False, tasks=ALL_TASKS),
        MethodSpec(key="layercam", short="lcam",
                   label="Layer-CAM", library_class="LayerCAM", kind=Kind.GRADIENT, in_article=True,
                   product=POSITIVE_GRADIENTS_TIMES_ACTIVATIONS, tasks=ALL_TASKS),
        MethodSpec(key="hirescam", short="hires",
                   label="HiRes-CAM", library_class="HiResCAM", kind=Kind.GRADIENT,
                   product=GRADIENTS_TIMES_ACTIVATIONS, tasks=ALL_TASKS),
        MethodSpec(key="gradcamelementwise", short="gradew",
                   label="Grad-CAM element-wise", library_class="GradCAMElementWise",
                   kind=Kind.GRADIENT, product=POSITIVE_ELEMENTWISE, tasks=ALL_TASKS),
        MethodSpec(key="segeigencam", short="segeig",
                   label="Seg-Eigen-CAM", library_class="SegEigenCAM", kind=Kind.GRADIENT,
                   product=ABS_GRADIENTS_TIMES_ACTIVATIONS, projection="pca_signed", supports_eigen_smooth=False,
                   note="Eigen-CAM of |gradients| x activations with a sign correction."),
        MethodSpec(key="kpcacam", short="kpca",
                   label="KPCA-CAM", library_class="KPCA_CAM", kind=Kind.ACTIVATION, library_image=True,
                   supports_eigen_smooth=False, slow=True,
                   note="Kernel PCA over all positions: slow on large feature maps."),
        MethodSpec(key="fem", short="fem",
                   label="FEM", library_class="FEM", kind=Kind.ACTIVATION, library_image=True,
                   supports_eigen_smooth=False),
        MethodSpec(key="fullgrad", short="fullgrad",
                   label="FullGrad", library_class="FullGrad", kind=Kind.OWN_PASS, layer_independent=True,
                   families=("cnn",), slow=True,
                   note="Uses every bias layer of the network, not the chosen layer."),
        MethodSpec(key="shapleycam", short="shapley",
                   label="Shapley-CAM", library_class="ShapleyCAM", kind=Kind.OWN_PASS, slow=True,
                   families=("cnn",),
                   note="Needs a Hessian-vector product: a second backward pass. pytorch-grad-cam 1.5.7's "
                   "ShapleyCAM does not reshape ViT tokens into a grid (and fused attention has no double "
                   "backward), so CNNs only."),
        MethodSpec(key="finercam", short="finer",
                   label="Finer-CAM", library_class="FinerCAM", kind=Kind.OWN_PASS,
                   tasks=("classification",), slow=True,
                   note="Contrasts the target with its most similar classes.", own_pass_call=_finer_cam_call),
        MethodSpec(key="randomcam", short="rand",
                   label="Random-CAM (baseline)", library_class="RandomCAM", kind=Kind.GRADIENT,
                   product=RANDOM_WEIGHTS, tasks=ALL_TASKS, note="Random channel weights: a sanity baseline."),
    )
}

ARTICLE_METHODS = tuple(k for k, m in METHODS.items() if m.in_article)
SLOW_MARK = "(slow)"


def method_label(key: str) -> str:
    """A method as every picker shows it: its label, and "(slow)" after a slow one's."""
    spec = get_method(key)
    return f"{spec.label}  {SLOW_MARK}" if spec.slow else spec.label


def _spelling(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", str(name).lower())


def get_method(key: str) -> MethodSpec:
    """By registry key, or as people write it: "Grad-CAM", "GradCAM++", "score_cam", or as a field
    name writes it (its code, "gradpp"; or "gradcampp", identity.sanitise of the key, as older
    names did), so a name read off a field works."""
    if key in METHODS:
        return METHODS[key]
    wanted = _spelling(key)
    for spec in METHODS.values():
        if wanted and wanted in (_spelling(spec.key), _spelling(spec.label)):
            return spec
    token = str(key).strip().lower()
    for spec in METHODS.values():
        if token and token in (sanitise(spec.key), spec.short):
            return spec
    raise MethodError(f"Unknown method '{key}'. Available: {', '.join(METHODS)}.")


def methods_for(task: str, family: str) -> list[MethodSpec]:
    """The methods that work on a model of this task and family, in registry order."""
    return [m for m in METHODS.values() if m.unsupported_reason(task, family) is None]


def not_offered(task: str, family: str) -> str:
    """The methods left out for a model of this task and family, each with why (one line for a
    picker's help; empty when every method fits)."""
    groups: dict[str, list[str]] = {}  # why (its first sentence, without the label) -> labels
    for m in METHODS.values():
        reason = m.unsupported_reason(task, family)
        if reason:
            groups.setdefault(reason.split(". ")[0].removeprefix(m.label).strip(" ."), []).append(m.label)
    parts = [f"{', '.join(labels)} ({why})" for why, labels in groups.items()]
    return f"Not offered for this {task} model: {'; '.join(parts)}." if parts else ""
