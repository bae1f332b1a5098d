"""engine.explain_many: images stacked into one batched forward + backward give, image by image,
exactly the heatmaps of a pass on each image alone (each with its own target), and a bad image
in a batch costs only itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cam_support import chelsea_crop, chelsea_rgb, chelsea_small, hook_count, skimage_data

from camcore.engine import Explainer, explain_many
from camcore.engine import explainer as explainer_mod
from camcore.errors import CamError
from camcore.images import from_array
from camcore.models import load_model
from camcore.preprocessing import preprocess

PURE = ("gradcam", "gradcam++", "xgradcam", "eigencam", "layercam", "hirescam")


def _variety(n: int, h: int, w: int) -> list:
    """n different h x w photos: chelsea, coffee, the astronaut, the rocket, then flipped crops."""
    import cv2
    from PIL import Image

    photos = [chelsea_rgb()]
    for name in ("coffee.png", "astronaut.png", "rocket.jpg"):
        with Image.open(skimage_data(name)) as im:
            photos.append(np.asarray(im.convert("RGB")))
    out = []
    for i in range(n):
        img = photos[i % len(photos)][(i // 4) * 17:, ::-1 if i // 4 % 2 else 1]
        out.append(from_array(cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_AREA), f"v{i}"))
    return out


def _assert_same(batched: Explainer, alone: Explainer, layers) -> None:
    assert batched.target == alone.target
    got, want = batched.prediction.classes[:3], alone.prediction.classes[:3]
    assert [c.index for c in got] == [c.index for c in want]
    assert np.allclose([c.score for c in got], [c.score for c in want], atol=1e-5)
    for layer in layers:
        for method in PURE:
            a = batched.heatmap(method, layer).map
            b = alone.heatmap(method, layer).map
            # Batched convolutions sum in another order (float32 noise ~1e-6); Grad-CAM++ cubes
            # gradients, which lifts that to ~1e-4 on the 0..1 map.
            assert np.abs(a - b).max() <= 1e-3, f"{method} on {layer}"


@pytest.mark.parametrize("model, size, layers", [
    ("efficientnet_lite0", None, ("stage3", "head")),
    ("deit_tiny", None, ("block5", "block11")),
    ("deeplabv3", 64, ("layer2", "layer4")),
])
def test_batched_pass_equals_one_image_at_a_time(model, size, layers):
    loaded = load_model(model, "auto" if model == "efficientnet_lite0" else "untrained", "cpu")
    images = _variety(3, 96, 128)
    if model == "deeplabv3":  # another aspect ratio: its own batch
        images.append(chelsea_small(80, 64))
    before = hook_count(loaded.module)
    batched = explain_many(loaded, images, None, layers, size, max_batch=2)
    assert hook_count(loaded.module) == before
    assert all(isinstance(e, Explainer) for e in batched)
    for img, e in zip(images, batched):
        alone = Explainer(loaded, img, None, layers, input_size=size)
        _assert_same(e, alone, layers)
    if model == "efficientnet_lite0":  # each image is explained for its own predicted class
        assert len({e.target.index for e in batched}) > 1


def test_a_named_class_is_explained_in_every_image():
    loaded = load_model("efficientnet_lite0", "auto", "cpu")
    batched = explain_many(loaded, _variety(3, 96, 128), "tabby", ("head",))
    assert {e.target.name for e in batched} == {"tabby"}


def test_a_failing_batch_is_retried_one_by_one(monkeypatch):
    loaded = load_model("efficientnet_lite0", "auto", "cpu")
    images = _variety(4, 64, 64)
    poisoned = images[2].path
    real = explainer_mod.run_pass_batch
    sizes = []

    def flaky(model, x, *a, **k):
        sizes.append(len(x))
        # the poisoned image breaks any pass it is in (as a NaN or an OOM would)
        if any(torch.equal(x[i], preprocess(loaded.spec, images[2].rgb)[0]) for i in range(len(x))):
            raise RuntimeError(f"boom in {poisoned}\nsecond line")
        return real(model, x, *a, **k)

    monkeypatch.setattr(explainer_mod, "run_pass_batch", flaky)
    out = explain_many(loaded, images, None, ("head",), max_batch=4)
    assert sizes[0] == 4 and sizes[1:] == [1, 1, 1, 1]
    assert isinstance(out[2], CamError) and str(out[2]) == f"boom in {poisoned}"
    assert all(isinstance(e, Explainer) for i, e in enumerate(out) if i != 2)
    assert out[0].heatmap("gradcam", "head").map.shape == (64, 64)


def test_single_image_pass_is_unchanged():
    loaded = load_model("efficientnet_lite0", "auto", "cpu")
    img = chelsea_crop(224)
    e = Explainer(loaded, img, None, ("head",))
    [b] = explain_many(loaded, [img], None, ("head",))
    assert np.array_equal(e.heatmap("gradcam", "head").map, b.heatmap("gradcam", "head").map)
