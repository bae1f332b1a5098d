"""The GPU checks in one run, for a session lent a GPU machine (see bench/gpu_check.sh).

Needs only torch, torchvision, timm, numpy, scipy, opencv and scikit-image (the GPU image has
them) plus grad-cam and ttach (carried as wheels); no FiftyOne, no MongoDB. Prints one line per
check and ends with `gpu_check=<ok|FAILED> ...`:

1. device_math on the GPU equals the host (numpy, the library's own math) path, every pure method
   on DeepLabV3 (520 px) and DeiT-tiny layers (<= 1e-4 on the 0..1 map; Eigen maps up to sign);
2. the grid of bench/grid.py (6 methods x layer1..4 at 520) against the floor, on the GPU;
3. Score-CAM and Ablation-CAM on DeepLabV3 layer4 (2048 channels) against their batched forwards;
4. GPU memory over 200 reruns (new Explainer + Grad-CAM each), after 20 warm-up runs;
5. a real CUDA out-of-memory: Score-CAM on DeepLabV3 layer4 asked for batches of 4096 masked
   inputs at 520 px with the process capped at 8 GiB more than it holds (an H200 would hold the
   batch): it must halve the batch, say so, and give the weights of a run that fits.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # grid.py beside this file

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402

from camcore import engine, images, methods, models  # noqa: E402
from camcore import perturbation as perturbation_mod  # noqa: E402

GRID = ("gradcam", "gradcam++", "xgradcam", "eigencam", "eigengradcam", "layercam")


DEVICE = "cuda"
SIZE = 520  # DeepLabV3's input short side; --cpu: 160


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def explainer(loaded, img, layers, size, device_math: bool = True) -> engine.Explainer:
    use_device_math(device_math)
    return engine.Explainer(loaded, img, None, tuple(layers), input_size=size)


def use_device_math(on: bool) -> None:
    # read by the engine when a map is computed, not when the Explainer is made
    os.environ["CAM_EXPLORER_DEVICE_MATH"] = "1" if on else "0"


def full_fp32() -> None:
    """cuDNN convolutions run in TF32 on Ampere and later by default, and the two Explainers below
    make two passes: two TF32 convolution algorithms differ by ~1e-3, which is not device math's
    error. The equality is checked on IEEE float32 passes, deterministic algorithms."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def equality(img) -> float:
    default_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    full_fp32()
    try:
        return _equality(img)
    finally:  # the timings after this run as the app runs: the library's defaults
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = default_tf32
        torch.backends.cudnn.deterministic = False


def _equality(img) -> float:
    from camcore.preprocessing import preprocess
    worst = 0.0
    for key in ("deeplabv3", "deit_tiny"):  # the input made on the device is the host's, bit for bit
        spec = models.get_spec(key)
        d = float((preprocess(spec, img.rgb, SIZE, DEVICE).cpu() - preprocess(spec, img.rgb, SIZE)).abs().max())
        print(f"   preprocess on {DEVICE} vs host, {key}: max diff {d:.1e}")
        if d > 0:  # any difference at all fails the check
            print("  MISMATCH: the device's input differs from the host's")
            worst = max(worst, 1.0)
    for key, layers, size in (("deeplabv3", ["layer1", "layer4"], SIZE), ("deit_tiny", ["block5", "block11"], None)):
        loaded = models.load_model(key, "untrained", DEVICE)
        host, dev = explainer(loaded, img, layers, size, False), explainer(loaded, img, layers, size, True)
        for m, spec in methods.METHODS.items():
            if spec.device_product is None:
                continue
            for layer in layers:
                for eigen in (False, True) if spec.supports_eigen_smooth else (False,):
                    use_device_math(False)
                    a = host.heatmap(m, layer, eigen).map
                    use_device_math(True)
                    b = dev.heatmap(m, layer, eigen).map
                    d = float(np.abs(a - b).max())  # both paths orient Eigen maps by the same rule
                    worst = max(worst, d)
                    if d > 1e-4:
                        print(f"  MISMATCH {key}.{layer} {m} eigen={eigen}: {d:.2e}")
    print(f"1. device_math vs host on {DEVICE}: max diff {worst:.2e}")
    return worst


def grid(img) -> float:
    loaded = models.load_model("deeplabv3", "untrained", DEVICE)
    layers = ["layer1", "layer2", "layer3", "layer4"]
    ex = explainer(loaded, img, layers, SIZE, True)
    ex.heatmaps(GRID, layers)  # warm-up
    best_ours, best_floor = float("inf"), float("inf")
    for _ in range(5):
        sync()
        start = time.perf_counter()
        ex = explainer(loaded, img, layers, SIZE, True)
        ex.heatmaps(GRID, layers)
        sync()
        best_ours = min(best_ours, time.perf_counter() - start)
        start = time.perf_counter()
        with torch.enable_grad():
            x = ex.x.to(DEVICE).requires_grad_(True)
            ex.grad_target(loaded.module(x)[0]).backward()
        sync()
        best_floor = min(best_floor, time.perf_counter() - start)
        loaded.module.zero_grad(set_to_none=True)
    switch_start = time.perf_counter()
    ex.heatmap("gradcam++", "layer1", True)  # not memoised yet: eigen_smooth
    switch = time.perf_counter() - switch_start
    grid_phases(loaded, img, layers)
    print(f"2. grid 6 methods x layer1..4 at {ex.input_hw}: ours {best_ours * 1000:.1f} ms, floor "
          f"{best_floor * 1000:.1f} ms -> {best_ours / best_floor:.2f}x (goal <= 2x); a new map {switch * 1000:.1f} ms")
    return best_ours / best_floor


def grid_phases(loaded, img, layers) -> None:
    """Where the grid's time goes beyond the floor: the Explainer (image, pass, prediction) vs the
    24 maps, each synchronised, and the top of a cProfile of one grid (by own time)."""
    import cProfile
    import io
    import pstats
    sync()
    t0 = time.perf_counter()
    ex = explainer(loaded, img, layers, SIZE, True)
    sync()
    t1 = time.perf_counter()
    ex.heatmaps(GRID, layers)
    sync()
    t2 = time.perf_counter()
    print(f"   phases: Explainer {1000 * (t1 - t0):.1f} ms, 24 maps {1000 * (t2 - t1):.1f} ms "
          f"({1000 * (t2 - t1) / 24:.2f} ms a map)")
    prof = cProfile.Profile()
    prof.enable()
    ex = explainer(loaded, img, layers, SIZE, True)
    ex.heatmaps(GRID, layers)
    sync()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()][-19:]
    print("   cProfile of one grid, by own time:\n   " + "\n   ".join(lines))


def perturbation() -> dict[str, float]:
    """bench/grid.py's Score-CAM / Ablation-CAM vs batched forwards (goal <= 1.3x; pytorch-grad-cam
    took 82.7 s for one Score-CAM on DeepLabV3 layer4 on an H200). The CPU dry run: layer2."""
    from grid import perturbation_vs_forwards

    print("3. Score-CAM and Ablation-CAM against their batched forwards (goal <= 1.3x):")
    return perturbation_vs_forwards("deeplabv3", "layer4" if DEVICE == "cuda" else "layer2", 64, SIZE, DEVICE)


def memory(img) -> float:
    loaded = models.load_model("efficientnet_lite0", "untrained", DEVICE)
    small = images.from_array(img.rgb[::8, ::8].copy())

    def reruns(n: int) -> None:
        for _ in range(n):
            explainer(loaded, small, ["head"], None, True).heatmap("gradcam", "head")

    allocated = torch.cuda.memory_allocated if DEVICE == "cuda" else (lambda: 0)
    reruns(20)
    sync()
    before = allocated()
    reruns(200 if DEVICE == "cuda" else 5)
    sync()
    grown = (allocated() - before) / 2**20
    print(f"4. GPU memory over 200 reruns: {before / 2**20:.1f} MB after warm-up, {grown:+.2f} MB after (bound 16 MB)")
    return grown


def real_oom(img) -> bool:
    if DEVICE != "cuda":
        print("5. real CUDA OOM: skipped on the CPU")
        return True
    loaded = models.load_model("deeplabv3", "untrained", DEVICE)
    ex = explainer(loaded, img, ["layer4"], SIZE, True)
    layer, acts = loaded.layer_module("layer4"), ex.fp.activation_tensors["layer4"]
    x = ex.x.to(DEVICE)
    messages: list[str] = []
    with loaded.lock:
        fits = perturbation_mod.score_cam_weights(loaded.module, layer, x, acts, ex.grad_target, 32)
        # An H200 holds a batch of 2048 inputs at 520 px: cap this process at what it holds now plus
        # 8 GiB (a small card's room), so that 4096 raises the allocator's real OutOfMemoryError.
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 8 * 2**30) / total))
        try:
            huge = perturbation_mod.score_cam_weights(loaded.module, layer, x, acts, ex.grad_target, 4096,
                                                         progress=lambda f, m: messages.append(m))
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
    lowered = [m for m in messages if "out of GPU memory" in m]
    same = float(np.abs(fits - huge).max())
    print(f"5. real CUDA OOM: {len(lowered)} back-offs ({lowered[-1] if lowered else 'none'}), "
          f"max weight diff {same:.1e}")
    return bool(lowered) and same <= 1e-5


def main() -> None:
    global DEVICE, SIZE
    if "--cpu" in sys.argv:  # a dry run of the script itself (small sizes) where there is no GPU
        DEVICE, SIZE = "cpu", 160
    else:
        assert torch.cuda.is_available(), "no CUDA device"
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    img = images.from_array(skimage.data.astronaut())
    worst = equality(img)
    ratio = grid(img)
    pert = perturbation()
    grown = memory(img)
    oom = real_oom(img)
    ok = worst <= 1e-4 and ratio <= 2 and max(pert.values()) <= 1.3 and grown < 16 and oom
    print(f"gpu_check={'ok' if ok else 'FAILED'} maxdiff={worst:.2e} grid_vs_floor={ratio:.2f} "
          f"scorecam={pert['scorecam']:.2f} ablationcam={pert['ablationcam']:.2f} memory_mb={grown:+.2f} "
          f"real_oom={'ok' if oom else 'FAILED'}")


if __name__ == "__main__":
    main()
