"""The CAM method registry (plain data). pytorch-grad-cam is the engine and the reference.

kind (the engine computes each kind with its own strategy, camcore/engine/kinds.py):
  gradient    - from one shared forward + backward (activations and gradients of the layer)
  activation  - from the same shared forward alone (no gradients needed)
  perturbation- needs its own forward passes, one per channel (ScoreCAM, AblationCAM)
  other       - needs its own pass of another shape (FullGrad, ShapleyCAM, FinerCAM):
                pytorch-grad-cam runs it, called through `own_pass_call`

"gradient" and "activation" methods are `pure`: a function of the layer's activations and
gradients, so one pass with hooks on every chosen layer feeds all of them on all layers.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_grad_cam as pgc
import torch

from camcore import device_math as dm
from camcore import perturbation
from camcore.errors import MethodError
from camcore.identity import sanitise
from camcore.results import Target

# (cam_object, activations, grads) -> the B x C x H x W array that is summed over channels
# (or projected on its first principal direction with eigen smoothing).
Product = Callable[[object, np.ndarray, np.ndarray], np.ndarray]


# (cam object with its hooks, input, the library target, our Target, aug_smooth, eigen_smooth)
# -> the library's 1 x H x W map: how a method with a pass of its own is called.
OwnPassCall = Callable[[object, torch.Tensor, object, Target, bool, bool], np.ndarray]


def _channel_weighted(cam: Any, activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    # The library's own per-channel weights (GradCAM, GradCAM++, XGradCAM, RandomCAM).
    weights = cam.get_cam_weights(None, None, None, activations, grads)
    return weights[:, :, None, None] * activations


def _library_call(cam, x: torch.Tensor, grad_target: object, target: Target, aug_smooth: bool,
                  eigen_smooth: bool) -> np.ndarray:
    return cam(x, [grad_target], aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


def _finer_cam_call(cam, x: torch.Tensor, grad_target: object, target: Target, aug_smooth: bool,
                    eigen_smooth: bool) -> np.ndarray:
    # FinerCAM builds its own contrast targets around a class index and has no aug_smooth.
    return cam(x, targets=None, eigen_smooth=eigen_smooth, target_idx=target.index)


@dataclass(frozen=True)
class MethodSpec:
    key: str
    label: str
    cls: type
    kind: str
    in_article: bool = False
    product: Product | None = None  # pure methods: how activations and grads combine
    projection: str | None = None  # "pca" always projects (Eigen*); "pca_signed" with sign fix
    library_image: bool = False  # pure, but use the library's own get_cam_image (FEM, KPCA)
    supports_eigen_smooth: bool = True
    layer_independent: bool = False  # FullGrad uses every bias layer, not the chosen ones
    tasks: tuple[str, ...] = ("classification", "segmentation")  # DETECTION_OK adds "detection"
    families: tuple[str, ...] = ("cnn", "vit")
    slow: bool = False
    note: str = ""
    # pure methods: the same product as torch ops, run on the device (device_math.py)
    torch_product: dm.TorchProduct | None = None
    # perturbation methods we batch ourselves: (model, layer module, x, activations, target,
    # batch_size, progress, cancel, vit=) -> 1 x C channel weights, replacing the library's
    # get_cam_weights
    channel_weights: Callable | None = None
    # methods with a pass of their own ("other"): how the library's object is called
    own_pass_call: OwnPassCall = _library_call

    @property
    def pure(self) -> bool:
        return self.kind in ("gradient", "activation")

    @property
    def needs_gradients(self) -> bool:
        return self.kind == "gradient"

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
            "class": self.cls.__name__,
            "kind": self.kind,
            "in_article": self.in_article,
            "supports_eigen_smooth": self.supports_eigen_smooth,
            "layer_independent": self.layer_independent,
            "tasks": list(self.tasks),
            "families": list(self.families),
            "slow": self.slow,
            "note": self.note,
        }


METHODS: dict[str, MethodSpec] = {
    spec.key: spec
    for spec in (
        MethodSpec("gradcam", "Grad-CAM", pgc.GradCAM, "gradient", True, _channel_weighted, torch_product=dm.gradcam),
        MethodSpec("scorecam", "Score-CAM", pgc.ScoreCAM, "perturbation", True, slow=True,
                   note="One forward pass per channel of the layer.",
                   channel_weights=perturbation.score_cam_weights),
        MethodSpec("gradcam++", "Grad-CAM++", pgc.GradCAMPlusPlus, "gradient", True, _channel_weighted,
                   torch_product=dm.gradcam_plusplus),
        MethodSpec("ablationcam", "Ablation-CAM", pgc.AblationCAM, "perturbation", True, slow=True,
                   note="One forward pass per channel; ViTs use AblationLayerVit.",
                   channel_weights=perturbation.ablation_cam_weights),
        MethodSpec("xgradcam", "XGrad-CAM", pgc.XGradCAM, "gradient", True, _channel_weighted,
                   torch_product=dm.xgradcam),
        MethodSpec("eigencam", "Eigen-CAM", pgc.EigenCAM, "activation", True,
                   lambda cam, a, g: a, projection="pca", supports_eigen_smooth=False,
                   note="First principal component of the activations: class-agnostic.",
                   torch_product=dm.activations_only),
        MethodSpec("eigengradcam", "EigenGrad-CAM", pgc.EigenGradCAM, "gradient", True,
                   lambda cam, a, g: g * a, projection="pca", supports_eigen_smooth=False,
                   torch_product=dm.hirescam),
        MethodSpec("layercam", "Layer-CAM", pgc.LayerCAM, "gradient", True,
                   lambda cam, a, g: np.maximum(g, 0) * a, torch_product=dm.layercam),
        MethodSpec("hirescam", "HiRes-CAM", pgc.HiResCAM, "gradient", False, lambda cam, a, g: g * a,
                   torch_product=dm.hirescam),
        MethodSpec("gradcamelementwise", "Grad-CAM element-wise", pgc.GradCAMElementWise, "gradient",
                   False, lambda cam, a, g: np.maximum(g * a, 0), torch_product=dm.gradcam_elementwise),
        MethodSpec("segeigencam", "Seg-Eigen-CAM", pgc.SegEigenCAM, "gradient", False,
                   lambda cam, a, g: np.abs(g) * a, projection="pca_signed", supports_eigen_smooth=False,
                   note="Eigen-CAM of |gradients| x activations with a sign correction.",
                   torch_product=dm.abs_gradients_times_activations),
        MethodSpec("kpcacam", "KPCA-CAM", pgc.KPCA_CAM, "activation", False, library_image=True,
                   supports_eigen_smooth=False, slow=True,
                   note="Kernel PCA over all positions: slow on large feature maps."),
        MethodSpec("fem", "FEM", pgc.FEM, "activation", False, library_image=True,
                   supports_eigen_smooth=False),
        MethodSpec("fullgrad", "FullGrad", pgc.FullGrad, "other", False, layer_independent=True,
                   families=("cnn",), slow=True,
                   note="Uses every bias layer of the network, not the chosen layer."),
        MethodSpec("shapleycam", "Shapley-CAM", pgc.ShapleyCAM, "other", False, slow=True, families=("cnn",),
                   note="Needs a Hessian-vector product: a second backward pass. pytorch-grad-cam 1.5.7's "
                   "ShapleyCAM does not reshape ViT tokens into a grid (and fused attention has no double "
                   "backward), so CNNs only."),
        MethodSpec("finercam", "Finer-CAM", pgc.FinerCAM, "other", False, tasks=("classification",), slow=True,
                   note="Contrasts the target with its most similar classes.", own_pass_call=_finer_cam_call),
        MethodSpec("randomcam", "Random-CAM (baseline)", pgc.RandomCAM, "gradient", False,
                   _channel_weighted, note="Random channel weights: a sanity baseline."),
    )
}

# Methods whose math fits a detector's box target: the one pass (gradients and activations of the
# hooked layers, FPN levels fused), and the per-channel forwards of the two below.
DETECTION_OK = ("gradcam", "gradcam++", "xgradcam", "eigencam", "eigengradcam", "layercam", "hirescam",
                "gradcamelementwise", "randomcam", "scorecam", "ablationcam")
# Score-CAM masks the image by each channel (of the FPN's levels fused: 5 x 256 on Faster R-CNN);
# Ablation-CAM ablates each channel of a level as pytorch-grad-cam's AblationLayerFasterRCNN.
_NOT_FOR_DETECTION: dict[str, str] = {}
for _key in DETECTION_OK:
    _spec = METHODS[_key]
    METHODS[_key] = dataclasses.replace(_spec, tasks=(*_spec.tasks, "detection"))
for _key, _why in _NOT_FOR_DETECTION.items():
    METHODS[_key] = dataclasses.replace(METHODS[_key], note=f"{METHODS[_key].note} {_why}".strip())

ARTICLE_METHODS = tuple(k for k, m in METHODS.items() if m.in_article)
DEFAULT_METHOD = "gradcam"


def _spelling(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", str(name).lower())


def get_method(key: str) -> MethodSpec:
    """By registry key, or as people write it: "Grad-CAM", "GradCAM++", "score_cam", or as a field
    name writes it ("gradcampp": identity.sanitise of the key), so a name read off a field works."""
    if key in METHODS:
        return METHODS[key]
    wanted = _spelling(key)
    for spec in METHODS.values():
        if wanted and wanted in (_spelling(spec.key), _spelling(spec.label)):
            return spec
    token = str(key).strip().lower()
    for spec in METHODS.values():
        if token and token == sanitise(spec.key):
            return spec
    raise MethodError(f"Unknown method '{key}'. Available: {', '.join(METHODS)}.")


def methods_for(task: str, family: str) -> list[MethodSpec]:
    """The methods that work on a model of this task and family, in registry order."""
    return [m for m in METHODS.values() if m.unsupported_reason(task, family) is None]
