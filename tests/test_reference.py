"""Our heatmaps equal pytorch-grad-cam 1.5.7's own output for the same call.

The engine computes every pure method from one shared pass (its own hooks, torch.autograd.grad)
and replaces the library's full SVD by a first-component projection with a sign rule; these
tests run the library's class the documented way (`with Cls(model, [layer], reshape_transform)`)
on the same input tensor and target and compare the final 0..1 maps. The images are exactly the
model's input size, so no resizing separates the two.

Eigen projections (Eigen-CAM, EigenGrad-CAM, eigen_smooth) are equal up to the sign that SVD
leaves arbitrary: ours must equal the library's map or the map of the negated projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from cam_support import chelsea_crop, chelsea_small, library_normalise, library_reference
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from camcore import preprocessing, projection
from camcore.engine import Explainer
from camcore.methods import METHODS
from camcore.models import load_model

TOL = 1e-4
PURE = [key for key, spec in METHODS.items() if spec.pure]
EIGEN = {key for key, spec in METHODS.items() if spec.projection == "pca"}  # sign is SVD's


@dataclass(frozen=True)
class Case:
    model: str
    weights: str
    layers: tuple[str, str]
    input_size: int | None
    image: str  # "crop224" or "small64x96"


CASES = {
    "deeplabv3": Case("deeplabv3", "untrained", ("layer1", "layer4"), 64, "small64x96"),
    "deit_tiny": Case("deit_tiny", "untrained", ("block5", "block11"), None, "crop224"),
    "efficientnet_lite0": Case("efficientnet_lite0", "auto", ("stage3", "head"), None, "crop224"),
}
# the perturbation methods on DeepLabV3: hundreds of masked passes, each the cost of the input. At
# 16x24 layer1 still has its 256 channels (the batching under test), the target's mask holds 58% of
# the pixels and the map is far from flat; 32x48 cost 2x the CPU (issue 26 item 7).
SMALL_SEGMENTATION = Case("deeplabv3", "untrained", ("layer1", "layer4"), 16, "small16x24")


class Setup:
    """One model, one image, one Explainer over both layers; the library gets the same x."""

    def __init__(self, case: Case, **explainer_kwargs):
        torch.manual_seed(0)
        self.case = case
        self.loaded = load_model(case.model, case.weights, "cpu")
        if case.image == "crop224":
            self.image = chelsea_crop(224)
        else:  # "small<h>x<w>"
            h, w = case.image.removeprefix("small").split("x")
            self.image = chelsea_small(int(h), int(w))
        self.explainer = Explainer(
            self.loaded, self.image, None, case.layers, input_size=case.input_size, **explainer_kwargs
        )
        self.x = preprocessing.preprocess(self.loaded.spec, self.image.rgb, case.input_size)
        assert tuple(self.x.shape[-2:]) == self.image.size, "the test image must be the model's input size"
        self.input_hw = self.image.size
        self.reshape = preprocessing.reshape_transform_for(self.loaded.spec, self.input_hw)
        self.target = self.explainer.grad_target

    def reference(self, method: str, layer: str, eigen_smooth=False, aug_smooth=False, seed=None, **kwargs):
        """The library's (map, raw map) for this call; the plain calls (no kwargs) once per case, since
        the host and device paths' tests of a method compare against the same library run."""
        key = (self.case, id(self.loaded.module), method, layer, eigen_smooth, aug_smooth, seed)
        if not kwargs and key in _references:
            return _references[key]
        out = library_reference(
            METHODS[method].cls,
            self.loaded.module,
            self.loaded.layer_module(layer),
            self.x,
            self.target,
            self.reshape,
            eigen_smooth,
            aug_smooth,
            seed,
            **kwargs,
        )
        if not kwargs:
            _references[key] = out
        return out


_references: dict[tuple, tuple[np.ndarray, np.ndarray | None]] = {}
_setups: dict[tuple[str, bool], Setup] = {}


def setup_for(model: str, device_math: bool = False) -> Setup:
    """One Setup per model and math path (its Explainer memoises maps: the paths must not share)."""
    if (model, device_math) not in _setups:
        _setups[model, device_math] = Setup(SMALL_SEGMENTATION if model == "deeplabv3_small" else CASES[model])
    return _setups[model, device_math]


def _params():
    """Every pure method on both layers of each model (eigen_smooth where cheap), on the host path
    (the library's numpy math) and, for methods that have one, the device path (device_math's
    torch ops, what a GPU runs; forced here on the CPU)."""
    out = []
    for model, case in CASES.items():
        for method in PURE:
            paths = (False, True) if METHODS[method].device_product is not None else (False,)
            for layer in case.layers:
                # eigen_smooth: Grad-CAM on both layers, the other methods on the cheaper first layer
                # (the library's full SVD of a 2048-channel layer costs seconds on 2 cores)
                smooth = METHODS[method].supports_eigen_smooth and (
                    method == "gradcam" or layer == case.layers[0]
                )
                for eigen in (False, True) if smooth else (False,):
                    for device in paths:
                        out.append(pytest.param(
                            model, method, layer, eigen, device,
                            id=f"{model}-{method}-{layer}{'-eigen' if eigen else ''}-{'device' if device else 'host'}",
                        ))
    return out


def _assert_close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs the library's {ref.shape}"
    diff = float(np.abs(ours - ref).max())
    assert diff <= TOL, f"{what}: max abs diff {diff:.2e} from the library's map"


@pytest.mark.parametrize("model, method, layer, eigen_smooth, math_path", _params())
def test_pure_method_equals_library(model, method, layer, eigen_smooth, math_path, monkeypatch):
    monkeypatch.setenv("CAM_EXPLORER_DEVICE_MATH", "1" if math_path else "0")
    s = setup_for(model, math_path)
    seed = 1234 if method == "randomcam" else None  # RandomCAM draws its weights from np.random
    if seed is not None:
        np.random.seed(seed)
    ours = s.explainer.heatmap(method, layer, eigen_smooth)
    assert ours.map.shape == s.image.size and ours.map.dtype == np.float32
    signed = method in EIGEN or eigen_smooth
    ref, raw = s.reference(method, layer, eigen_smooth=eigen_smooth, seed=seed)
    what = f"{method} on {model}.{layer}" + (" with eigen_smooth" if eigen_smooth else "")
    if signed:
        # Up to sign: the library's map, or the map it would give for the negated projection.
        _assert_close(
            library_normalise(raw, s.input_hw)[0], ref, "reference replay"
        )  # our replay is faithful
        flipped = library_normalise(-raw, s.input_hw)[0]
        d_same, d_flip = float(np.abs(ours.map - ref).max()), float(np.abs(ours.map - flipped).max())
        assert min(d_same, d_flip) <= TOL, (
            f"{what}: differs from the library's map ({d_same:.2e}) "
            f"and from its sign-flipped map ({d_flip:.2e})"
        )
    else:
        _assert_close(ours.map, ref, what)
    # The raw map we keep is the clipped map at the layer's resolution, before normalisation.
    acts = s.explainer.fp.activations[layer]
    assert ours.raw.shape == acts.shape[2:] and ours.raw.min() >= 0
    assert ours.raw_range == (pytest.approx(float(ours.raw.min())), pytest.approx(float(ours.raw.max())))
    if signed:  # and it is the library's raw map, clipped (up to the projection's sign)
        lib = np.maximum(raw[0], 0), np.maximum(-raw[0], 0)
        scale = max(float(np.abs(raw).max()), 1e-12)
        # Grad-CAM++'s denominator (2 g^2 + sum(a) g^3) nearly cancels on some channels: float32
        # weights then depend on the order of operations (numpy's and torch's are both ~1e-3 from
        # float64 on efficientnet stage3), and the projection weighs them all.
        rel = 5e-3 if (math_path and method == "gradcam++") else 1e-3
        assert min(np.abs(ours.raw - lib[0]).max(), np.abs(ours.raw - lib[1]).max()) <= rel * scale


def test_eigen_methods_follow_the_sign_rule():
    """Whatever SVD returns, our projection is oriented so that its larger extreme is positive."""
    s = setup_for("efficientnet_lite0")
    for method in ("eigencam", "eigengradcam"):
        h = s.explainer.heatmap(method, "head")
        # before clipping the projection had |max| >= |min|, so the clipped map keeps a real peak
        assert h.raw_range[1] > 0


# ---------------------------------------------------------------- perturbation methods


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_method_equals_library_on_small_cnn_layer(method):
    s = setup_for("efficientnet_lite0")
    ex = Explainer(s.loaded, s.image, None, ("stage1",), batch_size=16)  # 24 channels: 2 batches
    ours = ex.heatmap(method, "stage1")
    if method == "scorecam":
        cls = METHODS["scorecam"].cls
        cam = cls(s.loaded.module, [s.loaded.layer_module("stage1")])
        try:
            cam.batch_size = 16
            ref = cam(s.x, [s.target])[0]
        finally:
            cam.activations_and_grads.release()
    else:  # stage1 ends without a ReLU: the library agrees with us at its batch size 1 (perturbation.py)
        ref, _ = s.reference("ablationcam", "stage1", ablation_layer=AblationLayer(), batch_size=1)
    _assert_close(ours.map, ref, f"{method} on efficientnet_lite0.stage1")
    assert s.loaded.layer_module("stage1") is s.loaded.module.blocks[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_perturbation_method_equals_library_on_segmentation(method):
    """The segmentation target is scored for a whole batch at once (the mask moved once)."""
    s = setup_for("deeplabv3_small")
    ex = Explainer(s.loaded, s.image, None, ("layer1",), input_size=s.case.input_size, batch_size=128)
    ours = ex.heatmap(method, "layer1")  # 256 channels
    if method == "scorecam":
        cam = METHODS["scorecam"].cls(s.loaded.module, [s.loaded.layer_module("layer1")])
        try:
            cam.batch_size = 128
            ref = cam(s.x, [s.target])[0]
        finally:
            cam.activations_and_grads.release()
    else:
        ref, _ = s.reference("ablationcam", "layer1", ablation_layer=AblationLayer(), batch_size=128)
    _assert_close(ours.map, ref, f"{method} on deeplabv3.layer1")


@pytest.mark.slow
def test_ablationcam_on_a_vit_block_equals_library_at_any_batch_size():
    """Two of our batch sizes against one library run (192 forwards each: the costliest runs in
    this file, so the batch-size check and the library check share them)."""
    s = setup_for("deit_tiny")
    maps = [Explainer(s.loaded, s.image, None, ("block10",), batch_size=b).heatmap("ablationcam", "block10").map
            for b in (7, 64)]
    ref, _ = s.reference("ablationcam", "block10", ablation_layer=AblationLayerVit(), batch_size=1)
    for b, ours in zip((7, 64), maps):
        _assert_close(ours, ref, f"ablationcam on deit_tiny.block10 at batch size {b}")
    assert np.abs(maps[0] - maps[1]).max() <= 1e-4, "ablationcam depends on the batch size"
    assert s.loaded.layer_module("block10") is s.loaded.module.blocks[10].norm1


def test_ablation_weights_equal_the_library_at_batch_size_1_where_its_batches_disagree():
    """A layer without a ReLU, followed by a linear head: the ablation value reaches the score
    unsquashed, so the library's row-by-row lowering (perturbation.py) changes its weights with
    its batch size. Ours are its batch-size-1 weights, whatever our batch size."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from camcore import perturbation

    torch.manual_seed(0)
    toy = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(6 * 64, 4))
    toy.eval()
    x = torch.randn(1, 3, 8, 8)
    target = ClassifierOutputTarget(2)
    acts = toy[0](x).detach().numpy()
    assert acts.min() < 0

    ours = [perturbation.ablation_cam_weights(toy, toy[0], x, acts, target, batch_size=b) for b in (1, 4, 6)]
    lib1, lib6 = (_library_ablation_weights(toy, toy[0], x, acts, target, b) for b in (1, 6))
    for w in ours:
        np.testing.assert_allclose(w, lib1, rtol=1e-5)
    assert not np.allclose(lib1, lib6, rtol=1e-2), "the library quirk this difference is about is gone"


def _library_ablation_weights(model, layer, x, acts, target, batch_size: int) -> np.ndarray:
    from pytorch_grad_cam import AblationCAM

    cam = AblationCAM(model, [layer], ablation_layer=AblationLayer(), batch_size=batch_size)
    try:
        return cam.get_cam_weights(x, layer, [target], acts, None)
    finally:
        cam.activations_and_grads.release()


CHANNELS = 16  # the ablated layer's


class _Joined(torch.nn.Module):
    """stem -> layer -> head, the layer's output joined with the stem's (what the ablated copies
    meet again): a residual sum, a U-Net's concatenation, or a reshape to the input's batch size
    (no error: one row of scores where there were copies)."""

    def __init__(self, join: str):
        super().__init__()
        torch.manual_seed(0)
        self.join = join
        self.stem = torch.nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.layer = torch.nn.Sequential(torch.nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(2 * CHANNELS if join == "concat" else CHANNELS, 4)
        self.stem_batches: list[int] = []

    def forward(self, x):
        images = x.shape[0]
        stem = self.stem(x)
        self.stem_batches.append(stem.shape[0])
        out = self.layer(stem)
        if self.join == "sum":
            out = out + stem
        elif self.join == "concat":
            out = torch.cat([out, stem], dim=1)
        pooled = out.mean(dim=(2, 3))
        if self.join == "reshape":
            pooled = pooled.reshape(images, -1, pooled.shape[-1]).mean(dim=1)
        return self.head(pooled)


@pytest.mark.parametrize("join, shared", [("sum", True), ("concat", False), ("reshape", False)])
def test_ablation_runs_the_layers_before_once_where_the_model_allows_it(join, shared):
    """Ablation-CAM's copies go on from one input image where the model allows it (the layers
    before the ablated one run once per batch: ~5x less work on DeiT-tiny's block10); where it does
    not (a concatenation fails, a reshape to the input's batch mixes the copies), the whole
    forwards, as the library's. Equal to the library's weights at batch size 1 either way."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from camcore import perturbation

    model = _Joined(join).eval()
    x = torch.randn(1, 3, 8, 8)
    target = ClassifierOutputTarget(1)
    with torch.no_grad():
        acts = model.layer(model.stem(x)).numpy()
    model.stem_batches.clear()
    ours = perturbation.ablation_cam_weights(model, model.layer, x, acts, target, batch_size=8)
    # the images the stem ran: one per batch of copies, or one per copy (the whole forwards)
    stem_images = sum(model.stem_batches)
    assert (stem_images < CHANNELS) if shared else (stem_images > CHANNELS), model.stem_batches
    lib = _library_ablation_weights(model, model.layer, x, acts, target, 1)
    np.testing.assert_allclose(ours, lib, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- aug_smooth


@pytest.mark.parametrize("method, layer", [("gradcam", "head"), ("layercam", "stage3")])
def test_aug_smooth_equals_library(method, layer):
    s = setup_for("efficientnet_lite0")
    ex = Explainer(s.loaded, s.image, None, (layer,), aug_smooth=True)
    ours = ex.heatmap(method, layer)
    assert ours.aug_smooth
    ref, _ = s.reference(method, layer, aug_smooth=True)
    _assert_close(ours.map, ref, f"aug_smooth {method} on efficientnet_lite0.{layer}")
    plain = s.explainer.heatmap(method, layer).map
    assert np.abs(plain - ours.map).max() > 1e-3, "aug_smooth changed nothing: was it applied?"


# ---------------------------------------------------------------- the projection itself


def _planted(rng, c, h, w, rank_strength=4.0):
    """Activations with a dominant spatial pattern plus noise, like real feature maps."""
    n = h * w
    u = rng.standard_normal((n, 1))
    v = rng.standard_normal((1, c))
    x = rank_strength * (u @ v) / np.sqrt(c) + rng.standard_normal((n, c))
    return x.T.reshape(1, c, h, w).astype(np.float32)


SHAPES = [
    (16, 20, 20),  # N = 400 > C = 16: dense eigensolver on C x C
    (700, 6, 6),  # N = 36 < C = 700: dense eigensolver on N x N
    (300, 20, 20),  # N = 400, C = 300: dense on C x C
    (600, 30, 30),  # N = 900, C = 600: both > 512, Lanczos on C x C
    (700, 24, 24),  # N = 576 < C = 700: both > 512, Lanczos on N x N
]


@pytest.mark.parametrize("c, h, w", SHAPES, ids=[f"C{c}-{h}x{w}" for c, h, w in SHAPES])
@pytest.mark.parametrize("kind", ["planted", "gaussian"])
def test_first_component_projection_matches_library_up_to_sign(c, h, w, kind, monkeypatch):
    import scipy.sparse.linalg as spla

    calls = []
    real_eigsh = spla.eigsh
    monkeypatch.setattr(spla, "eigsh", lambda *a, **k: calls.append(1) or real_eigsh(*a, **k))
    rng = np.random.default_rng(c * 1000 + h)
    batch = (
        _planted(rng, c, h, w) if kind == "planted" else rng.standard_normal((2, c, h, w)).astype(np.float32)
    )
    ours = projection.first_component_projection(batch)
    ref = get_2d_projection(batch)
    assert ours.shape == ref.shape == (batch.shape[0], h, w) and ours.dtype == np.float32
    lanczos = min(c, h * w) > projection.GRAM_LIMIT
    assert bool(calls) == lanczos, "the large case must take the Lanczos path, the small one the dense solver"
    for i in range(batch.shape[0]):
        scale = float(np.abs(ref[i]).max())
        diff = min(np.abs(ours[i] - ref[i]).max(), np.abs(ours[i] + ref[i]).max())
        assert diff <= 1e-4 * scale, (
            f"projection {i} differs from the library's by {diff / scale:.2e} (relative)"
        )
        assert abs(ours[i].max()) >= abs(ours[i].min()), "sign rule: the larger extreme must be positive"


def test_first_component_projection_handles_nan_like_library():
    rng = np.random.default_rng(7)
    batch = _planted(rng, 32, 8, 8)
    batch[0, 3, 2, 2] = np.nan
    ours, ref = projection.first_component_projection(batch), get_2d_projection(batch)
    assert np.isfinite(ours).all()
    assert min(np.abs(ours - ref).max(), np.abs(ours + ref).max()) <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("m, kind", [(600, "planted"), (300, "planted"), (64, "planted"), (400, "flat")])
def test_device_top_eigenvector_iteration_equals_eigh(m, kind, monkeypatch):
    """The GPU's subspace iteration (run here on the CPU) gives eigh's top eigenvector up to sign
    when one eigenvalue dominates, and hands a flat spectrum back to the dense eigh."""
    from camcore import device_math

    rng = np.random.default_rng(m)
    x = rng.standard_normal((2 * m, m))
    if kind == "planted":
        x += 6 * np.outer(rng.standard_normal(2 * m), rng.standard_normal(m)) / np.sqrt(m)
    gram = torch.from_numpy(x.T @ x)
    ref = torch.linalg.eigh(gram)[1][:, -1]
    real_eigh, full = torch.linalg.eigh, []
    monkeypatch.setattr(torch.linalg, "eigh", lambda a, *r, **k: full.append(a.shape[0] == m) or real_eigh(a, *r, **k))
    ours = device_math.top_eigenvector(gram, iterative=True)
    assert any(full) == (kind == "flat"), "planted: the iteration's answer; flat: the dense eigh's"
    assert min((ours - ref).abs().max(), (ours + ref).abs().max()) < 1e-8
