"""Benchmark: camcore.batch.run_batch vs the article's loop, in the same run, on N demo images.

The article's loop: per sample, load the image, build a pytorch-grad-cam GradCAM object
(`with`), call it (targets=None: the predicted class), resize the map to the image, set
`sample["field"] = fo.Heatmap(map=...)` and `sample.save()`.
Ours: run_batch (one batched forward + backward per chunk, PNGs written atomically, one set_values
per field per chunk).
Floor: the model's batched forward + backward to the hooked layer alone, over the same tensors
in batches of --chunk (also printed: with a full backward, parameter gradients included).

    .venv/bin/python bench/batch.py --n 16        # EfficientNet-Lite0 (packaged weights), CPU

Starts a private mongod (as tests/conftest.py does) unless FIFTYONE_DATABASE_URI is set.
Last line: batch_vs_article=<speedup> batch_vs_floor=<ratio> n=<N>
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # mongod_support


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="samples (the 8 demo images, cycled)")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="auto", help="auto, untrained, or a file (deeplabv3/deit_tiny: untrained offline)")
    ap.add_argument("--size", type=int, default=None, help="DeepLabV3 input short side (default: the model's)")
    ap.add_argument("--measures-cost", action="store_true",
                    help="instead: run_batch without measures vs with measures (share only, then with faithfulness)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ["CAM_EXPLORER_HOME"] = str(tmp / "home")
    from mongod_support import private_mongod

    proc = private_mongod(tmp)
    try:
        (measures_cost if args.measures_cost else run)(args, tmp)
    finally:
        if proc is not None:
            from mongod_support import stop_mongod

            stop_mongod(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def measures_cost(args, tmp: Path) -> None:
    """run_batch on the same N demo samples (with their `objects` boxes): no measures, measures
    without faithfulness (score/conf/share/bg: the share is a mask sum), then with faithfulness
    (keep/remove: two forwards per heatmap, and one for the score). Interleaved, best of two.
    Last line: measures_ratio=<with faithfulness / none> share_only_ratio=<...> n=<N>"""
    import fiftyone as fo

    from camcore import batch, demo_data
    from camcore.measures import MeasureOptions

    demo = demo_data.ensure_demo_dataset()
    docs = list(zip(*demo.values(["filepath", "objects"]), strict=True))
    variants = {"none": None, "share only": MeasureOptions(object_field="objects", faithfulness=False),
                "with faithfulness": MeasureOptions(object_field="objects", faithfulness=True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    batch.run_batch(demo.limit(2), batch.BatchOptions(args.model, weights=args.weights, chunk=args.chunk))  # warm-up
    for round_ in range(2):
        for name, measures in variants.items():
            ds = fo.Dataset(f"bench-measures-{round_}-{name.replace(' ', '-')}")
            ds.add_samples([fo.Sample(filepath=docs[i % len(docs)][0], objects=docs[i % len(docs)][1])
                            for i in range(args.n)])
            started = time.perf_counter()
            report = batch.run_batch(ds, batch.BatchOptions(args.model, weights=args.weights, chunk=args.chunk,
                                                            input_size=args.size, measures=measures))
            times[name].append(time.perf_counter() - started)
            assert report.done == args.n and not report.failed, report.to_dict()
            ds.delete()
    best = {k: min(v) for k, v in times.items()}
    for name, seconds in best.items():
        print(f"{name:>18}: {seconds:6.2f} s for {args.n} samples ({seconds / args.n * 1000:.0f} ms a sample)")
    print(f"faithfulness costs {(best['with faithfulness'] - best['share only']) / args.n * 1000:.0f} ms a heatmap; "
          f"score/conf/share/bg {(best['share only'] - best['none']) / args.n * 1000:.0f} ms")
    print(f"measures_ratio={best['with faithfulness'] / best['none']:.2f} "
          f"share_only_ratio={best['share only'] / best['none']:.2f} n={args.n}")


def run(args, tmp: Path) -> None:
    import cv2
    import fiftyone as fo
    import numpy as np
    import torch
    from pytorch_grad_cam import GradCAM

    from camcore import batch, demo_data, images, models, preprocessing, targets

    demo = demo_data.ensure_demo_dataset()
    files = demo.values("filepath")
    paths = [files[i % len(files)] for i in range(args.n)]
    ours_ds = fo.Dataset("bench-batch-ours")
    ours_ds.add_samples([fo.Sample(filepath=p) for p in paths])
    art_ds = fo.Dataset("bench-batch-article")
    art_ds.add_samples([fo.Sample(filepath=p) for p in paths])

    loaded = models.load_model(args.model, args.weights)
    spec = loaded.spec
    layer = spec.default_layer
    print(f"model {spec.key} ({loaded.weights_label}) on {loaded.device}, layer {layer}, "
          f"{args.n} images, torch threads {torch.get_num_threads()}", file=sys.stderr)

    # warm-up (first-call costs out of every timing)
    x0 = preprocessing.preprocess(spec, images.load_image(paths[0]).rgb, args.size)
    with torch.enable_grad():
        loaded.module(x0.to(loaded.device)).sum().backward()
    loaded.module.zero_grad(set_to_none=True)

    # floors on the same tensors, in batches of --chunk: forward + backward to the hooked layer
    # (what a batched Grad-CAM needs), and forward + full backward (parameter gradients too,
    # as pytorch-grad-cam does). Image decoding and preprocessing are outside both.
    # Images are grouped by input shape (as run_batch does) so that they can be stacked.
    xs = [preprocessing.preprocess(spec, images.load_image(p).rgb, args.size) for p in paths]
    groups: dict = {}
    for x in xs:
        groups.setdefault(tuple(x.shape), []).append(x)
    stacks = [torch.cat(g[i:i + args.chunk]) for g in groups.values() for i in range(0, len(g), args.chunk)]
    floors = {}
    for full in (False, True, False):  # the first floor again last: the better of two is kept
        start = time.perf_counter()
        with torch.enable_grad():
            for x in stacks:
                x = x.to(loaded.device)
                got = {}
                handle = loaded.layer_module(layer).register_forward_hook(lambda _m, _i, o: got.update(a=o))
                try:
                    out = loaded.module(x)
                finally:
                    handle.remove()
                if isinstance(out, dict):  # torchvision segmentation
                    out = out["out"]
                loss = out.gather(1, out.argmax(1, keepdim=True)).sum()
                if full:
                    loss.backward()
                    loaded.module.zero_grad(set_to_none=True)
                else:
                    torch.autograd.grad(loss, [got["a"]])
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        floors[full] = min(floors.get(full, float("inf")), time.perf_counter() - start)
    floor = floors[False]

    # ours
    start = time.perf_counter()
    options = batch.BatchOptions(spec.key, args.weights, ["gradcam"], [layer], chunk=args.chunk, input_size=args.size)
    report = batch.run_batch(ours_ds, options)
    ours = time.perf_counter() - start
    assert report.done == args.n and not report.failed, report

    # the article's loop
    start = time.perf_counter()
    module = loaded.module
    for sample in art_ds:
        img = images.load_image(sample.filepath)
        x = preprocessing.preprocess(spec, img.rgb, args.size).to(loaded.device)
        cam_targets = None  # classifiers: the library's own top-1
        if spec.task == "segmentation":  # the article's segmentation loop: a forward for the mask first
            with torch.no_grad():
                out = module(x)[0]
            names = spec.class_names()
            target = targets.choose_target(targets.predict(spec.task, out, names, img.size), names, None)
            cam_targets = [targets.grad_cam_target(spec.task, target, out)]
        with GradCAM(model=module, target_layers=[loaded.layer_module(layer)]) as cam:
            gray = cam(input_tensor=x, targets=cam_targets)[0]
        gray = cv2.resize(gray, (img.size[1], img.size[0]))
        sample["gradcam"] = fo.Heatmap(map=gray)
        sample.save()
    article = time.perf_counter() - start

    # same maps? (ours is stored as a 16-bit PNG: compare at that precision)
    ours_map = ours_ds.first()[next(iter(report.fields))].get_map().astype(np.float32) / 65535
    art_map = art_ds.first()["gradcam"].map
    diff = float(np.abs(ours_map - art_map).max())

    print(f"floor, batched fwd + bwd to the layer: {floor:.2f} s ({args.n / floor:.1f} img/s)")
    print(f"batched fwd + full bwd (params too):   {floors[True]:.2f} s ({args.n / floors[True]:.1f} img/s)")
    print(f"ours (run_batch):                      {ours:.2f} s ({args.n / ours:.1f} img/s)"
          f"  {ours / floor:.2f}x floor")
    print(f"article's loop:                        {article:.2f} s ({args.n / article:.1f} img/s)")
    print(f"max |ours - article| on sample 0: {diff:.1e}")
    print(f"batch_vs_article={article / ours:.2f} batch_vs_floor={ours / floor:.2f} n={args.n}")
    ours_ds.delete()
    art_ds.delete()


if __name__ == "__main__":
    main()
