"""The FiftyOne App's compute form, first open in a fresh App server: this checkout vs a base commit.

A fresh process stands for the App's server as it runs operators: FiftyOne imported, our plugin
from the tree's plugins/ folder (camcore importable only through it), a one-sample dataset. It
resolves compute_cams's form for each model in MODELS (the first open of the form, then one per
model switch), and reports the CPU seconds and wall seconds of the first open, of the others, and
which of torch, torchvision, pytorch-grad-cam and timm got loaded, and the process's peak memory
(the App server keeps what the form loaded for its life). The base's tree is a git
worktree of --base (removed after); the two trees run alternately, --repeats times each, in one
private mongod. Ratios are base / this checkout, medians.

    .venv/bin/python bench/form_open.py --base 6864371 [--repeats 3]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]  # mongod_support

from base_tree import parse_args, worktree  # noqa: E402

MODELS = ("efficientnet_lite0", "deeplabv3", "fasterrcnn_resnet50_fpn_v2")
HEAVY = ("torch", "torchvision", "pytorch_grad_cam", "timm")

_PROBE = """
import json, resource, sys, time
import fiftyone as fo
import fiftyone.operators as foo
ds = fo.Dataset()
ds.add_sample(fo.Sample(filepath=sys.argv[1]))
ds.compute_metadata()
times = []
for model in sys.argv[2].split(","):
    ctx = foo.ExecutionContext(request_params={"dataset_name": ds.name, "params": {"model": model}})
    cpu, wall = time.process_time(), time.perf_counter()
    form = foo.get_operator("@cam-explorer/cam/compute_cams").resolve_input(ctx).to_json()
    times.append((time.process_time() - cpu, time.perf_counter() - wall))
    assert "gradcam" in json.dumps(form), model  # a real form, not an error
ds.delete()
print(json.dumps({"times": times, "loaded": [m for m in sys.argv[3].split(",") if m in sys.modules],
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def one_open(tree: Path, image: str) -> dict:
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(tree / "plugins"), "FIFTYONE_DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", _PROBE, image, ",".join(MODELS), ",".join(HEAVY)],
                          cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    args = parse_args(__doc__, repeats=3)

    import cv2
    import numpy as np
    from mongod_support import private_mongod, stop_mongod

    work = Path(tempfile.mkdtemp(prefix="form-open-"))
    image = str(work / "one.png")
    cv2.imwrite(image, np.full((240, 320, 3), 128, np.uint8))
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    mongod = private_mongod(work / "db")
    runs: dict[str, list[dict]] = {"base": [], "this": []}
    try:
        with worktree(args.base, work / "base") as base:
            for _ in range(args.repeats):
                for name, tree in (("base", base), ("this", ROOT)):
                    runs[name].append(one_open(tree, image))
    finally:
        if mongod is not None:
            stop_mongod(mongod, disconnect_fiftyone=False)

    def median(name: str, which: slice, part: int) -> float:
        return statistics.median(sum(t[part] for t in run["times"][which]) for run in runs[name])

    print(f"compute form in a fresh App server, {args.repeats} runs each, medians (models: {', '.join(MODELS)})")
    print(f"{'':28}{'base ' + args.base:>18}{'this checkout':>16}{'ratio':>8}")
    for label, which in (("first open", slice(0, 1)), (f"next {len(MODELS) - 1} opens (switches)", slice(1, None))):
        for unit, part in (("CPU-s", 0), ("wall s", 1)):
            b, t = median("base", which, part), median("this", which, part)
            print(f"{label + ' ' + unit:28}{b:18.2f}{t:16.2f}{b / t if t else float('inf'):8.1f}x")
    b, t = (statistics.median(run["peak_mib"] for run in runs[name]) for name in ("base", "this"))
    print(f"{'peak memory MiB':28}{b:18.0f}{t:16.0f}{b / t:8.1f}x")
    for name in runs:
        print(f"loaded by the form ({name}): {', '.join(runs[name][-1]['loaded']) or 'none'}")


if __name__ == "__main__":
    main()
