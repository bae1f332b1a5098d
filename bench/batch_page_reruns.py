"""Benchmark: a rerun of the Batch page with a detector and a `field:` box rule, at 10^3 vs 10^5
samples with boxes (issue 24, det32), in one run.

The page plans a `field:ground_truth` rule by reading the view: the field's labels and the most
boxes one sample holds (two aggregations over every sample). Before det32 that ran on every rerun
(any widget touched); now the page keeps what it found per dataset and view, and reads again only
when the view or the rule changes or at the Run click. Per size, in the real app in-process
(Streamlit AppTest, app.py, the Batch page, SSDlite untrained: no model is loaded to plan):

- ``rerun``: a widget touched (eigen_smooth toggled), the rerun's server time: median of --reruns;
- ``rerun_recounted``: the same rerun with the page's kept facts dropped first: what every rerun
  cost before (and what the Run click and a new rule cost now).

- ``form``: the plugin's compute_cams form asked for again (FiftyOne does so at every change of a
  field), the same rule on a filtered view (samples with 2+ boxes): median of --reruns; and
  ``form_recounted``: with the form's kept facts dropped first (every refresh before det32).

Sizes are interleaved (small, big, small, big) and the better of the two rounds is kept.

    .venv/bin/python bench/batch_page_reruns.py --sizes 1000,10000      # quick
    .venv/bin/python bench/batch_page_reruns.py --sizes 1000,100000     # the issue's sizes

Starts a private mongod unless FIFTYONE_DATABASE_URI is set. Last line:
rerun_ratio=<big/small> recounted_ratio=<big/small> form_ratio=<big/small> form_recounted_ratio=<big/small>
sizes=<a,b>
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # camcore; mongod_support, app_support

SSD = "ssdlite320_mobilenet_v3_large"


def build(n: int, tmp: Path):
    """A persistent dataset of n samples, each with 1-4 `ground_truth` boxes (raw inserts of a few
    real samples' documents: only the boxes matter here)."""
    import fiftyone as fo
    import numpy as np
    from PIL import Image

    image = tmp / "a.png"
    if not image.exists():
        Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)).save(image)
    ds = fo.Dataset(f"bench-batch-reruns-{n}", overwrite=True, persistent=True)
    ds.add_samples([fo.Sample(filepath=str(image), ground_truth=fo.Detections(detections=[
        fo.Detection(label=("kite", "dog")[j % 2], bounding_box=[0.2 * j, 0.1, 0.15, 0.3]) for j in range(1 + i % 4)]))
        for i in range(4)])
    docs = list(ds._sample_collection.find({}, {"_id": 0}))
    started = time.perf_counter()
    left, i = n - len(docs), 0
    while left > 0:
        chunk = [dict(docs[(i + k) % len(docs)]) for k in range(min(20_000, left))]
        ds._sample_collection.insert_many(chunk, ordered=False)
        left -= len(chunk)
        i += len(chunk)
    print(f"built {n:,} samples in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return ds


def page(name: str):
    """A session on the Batch page with the detector and the field rule, planned once."""
    from app_support import APP
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=600)
    for key, value in {"dataset": name, "model": SSD, "weights": "untrained"}.items():
        at.query_params[key] = value
    at.switch_page("pages/batch.py")
    at.run()
    at.multiselect(key="batch_methods").set_value(["eigencam"])
    at.text_input(key="batch_boxes").input("field:ground_truth@0")
    at.run()
    assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
    [plan] = [c.value for c in at.caption if c.value.startswith("Fields")]
    assert plan.count("`cam_") == 4, plan  # a field per box index: the most boxes a sample holds
    return at


def rerun(at, recount: bool) -> float:
    """A widget touched: the rerun's seconds. recount: the page's kept facts dropped first (the
    cost of every rerun before det32)."""
    from ui.state import Batch

    if recount:
        at.session_state[Batch.BOX_FACTS] = None
    toggle = at.toggle(key="batch_eigen_smooth")
    toggle.set_value(not toggle.value)
    started = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - started
    assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
    return seconds


def form_refresh(name: str, recount: bool) -> float:
    """The plugin's form for `field:ground_truth` on the samples with 2+ boxes: one refresh's seconds."""
    import fiftyone as fo
    import fiftyone.operators as foo
    from fiftyone import ViewField as F

    from camcore import batch
    from camcore.store import views

    view = fo.load_dataset(name).match(F("ground_truth.detections").length() > 1)
    if recount:
        batch.forget_shared_facts(views.view_key(view))
    stages = view._serialize()
    ctx = foo.ExecutionContext(request_params={"dataset_name": name, "view": stages, "params": {
        "model": SSD, "weights": "untrained", "methods": ["eigencam"], "layers": ["fpn"],
        "box": "field:ground_truth@0"}})
    started = time.perf_counter()
    form = str(foo.get_operator("@cam-explorer/cam/compute_cams").resolve_input(ctx).to_json())
    seconds = time.perf_counter() - started
    assert "Cannot compute" not in form, form[-500:]
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--reruns", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-reruns-"))
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ["CAM_EXPLORER_HOME"] = str(tmp / "home")
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(ROOT / "plugins")
    from mongod_support import private_mongod

    proc = private_mongod(tmp)
    try:
        run(sizes, args.reruns, tmp)
    finally:
        if proc is not None:
            from mongod_support import stop_mongod

            stop_mongod(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def run(sizes: list[int], reruns: int, tmp: Path) -> None:
    from camcore import demo_data

    demo_data.ensure_demo_dataset()
    built = {n: build(n, tmp) for n in sizes}
    page(built[sizes[0]].name)  # warm-up: imports, Streamlit's first run
    kept: dict[int, list[float]] = {n: [] for n in sizes}
    recounted: dict[int, list[float]] = {n: [] for n in sizes}
    form: dict[int, list[float]] = {n: [] for n in sizes}
    form_recounted: dict[int, list[float]] = {n: [] for n in sizes}
    form_refresh(built[sizes[0]].name, True)  # warm-up: the plugin's import
    for _round in range(2):
        for n in sizes:
            at = page(built[n].name)
            kept[n].append(statistics.median(rerun(at, False) for _ in range(reruns)))
            recounted[n].append(statistics.median(rerun(at, True) for _ in range(reruns)))
            form_refresh(built[n].name, True)
            form[n].append(statistics.median(form_refresh(built[n].name, False) for _ in range(reruns)))
            form_recounted[n].append(statistics.median(form_refresh(built[n].name, True) for _ in range(reruns)))
    small, big = sizes[0], sizes[-1]
    for n in sizes:
        print(f"{n:>9,} samples: rerun {min(kept[n]) * 1000:7.1f} ms · rerun with the field recounted "
              f"(before det32) {min(recounted[n]) * 1000:7.1f} ms · plugin form {min(form[n]) * 1000:7.1f} ms · "
              f"form recounted (before det32) {min(form_recounted[n]) * 1000:7.1f} ms")
    print(f"rerun_ratio={min(kept[big]) / min(kept[small]):.2f} "
          f"recounted_ratio={min(recounted[big]) / min(recounted[small]):.2f} "
          f"form_ratio={min(form[big]) / min(form[small]):.2f} "
          f"form_recounted_ratio={min(form_recounted[big]) / min(form_recounted[small]):.2f} sizes={small},{big}")
    for ds in built.values():
        ds.delete()


if __name__ == "__main__":
    main()
