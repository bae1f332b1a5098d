"""Benchmark: does the cost of a step depend on the dataset's size? (issue 12, part 5)

Builds FiftyOne datasets of each size in --sizes (a few hundred image files, cycled) and runs
each measure on each, printing every number beside its ratio against the first (smallest) size,
measured in the same run:

- ``batch``: `run_batch` on the whole dataset (EfficientNet-Lite0, Grad-CAM, chunk 8, on the CPU),
  in a fresh subprocess: the time from the call to its first chunk being written, and the peak
  memory (RSS) of the process, over the first --batch-chunks chunks (then it is cancelled).
- ``scan``: the resume checks alone: `store.scan.pages` over the whole view (ids, paths and the run's
  label for every sample, a page at a time), in a fresh subprocess: seconds, and RSS growth.
- ``resume``: as ``batch``, on a view whose first 90% (--resume-done) is done already (labels that
  match the request, files that exist): the resume checks over 9x10^5 samples come first.
- ``batch_head``: as ``batch`` with camcore/batch.py as committed at git HEAD (a before/after).
- ``interaction``, ``click``, ``sessions`` (bench/scale_ui.py): the server time of one ▶ click
  (sidebar + Explore's header and thumbnails, no model pass), a ▶ click in Chromium, and the
  server's memory per browser session.
- ``views`` (issue 23 design 1): a sort, tag-filter and filter+sort change as the sidebar makes it
  (build the view, count it, read its first page), a jump in it (the page at a random position:
  a typed position, Random), ▶ onto the next page, the last and the middle page, each read as the sidebar reads
  it (``seek.page_at``), with the sort's index in place, the filtered sort then also with a (tags,
  field, _id) index; medians of --clicks.
- ``overwrite``: a map replaced on one sample (the same computation pushed again), with every
  sample last written two days ago and then just now: the push, and its check that no label of
  any dataset points at the old file (by the documents written since the old label; ``full``: by
  every document, as before: the baseline, in the same run).
- ``build``: how the dataset was built, and how fast (documents inserted in bulk; --build-compare N
  also times `add_samples` in batches on N samples, the way FiftyOne users add them).

    .venv/bin/python bench/scale.py --sizes 1000,1000000
    .venv/bin/python bench/scale.py --sizes 1000,100000 --measures batch --db-dir /tmp/scale-db

Starts a private mongod (data under --db-dir, kept between runs so the big datasets are built
once; a temp folder by default) unless FIFTYONE_DATABASE_URI is set. To add a measure: write
``measure_<name>(dataset, args) -> dict[str, float]`` (lower is better for every value) and list it
in MEASURES; main() runs it on every size and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # camcore; mongod_support

import scale_ui  # noqa: E402  (beside this file)

MODEL = "efficientnet_lite0"
IMAGES = 300  # distinct image files, cycled over the samples
INSERT_BATCH = 10_000


# ---------------------------------------------------------------- set-up


def bench_database(db_dir: str | None, prefix: str) -> tuple[Path, object]:
    """(the data folder, the private mongod or None) for a bench script: FiftyOne quiet, the
    folder given (kept between runs, so big datasets are built once) or a new temporary one."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    folder = Path(db_dir or tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    from mongod_support import private_mongod

    return folder, private_mongod(folder)


def make_images(image_dir: Path, count: int = IMAGES) -> list[str]:
    """`count` different JPEGs (224-320 px crops of the photos scikit-image ships), made once."""
    import cv2
    import numpy as np
    import skimage

    image_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(str(p) for p in image_dir.glob("img*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    data = Path(skimage.__file__).parent / "data"
    sources = []
    for name in (
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "horse.png",
    ):
        img = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 224:
            sources.append(img)
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        side = int(rng.integers(224, min(320, min(src.shape[:2])) + 1))
        y = int(rng.integers(0, src.shape[0] - side + 1))
        x = int(rng.integers(0, src.shape[1] - side + 1))
        crop = src[y : y + side, x : x + side]
        path = image_dir / f"img{i:04d}.jpg"
        cv2.imwrite(str(path), crop[:, ::-1] if i % 2 else crop)
        out.append(str(path))
    return out


def build_dataset(name: str, n: int, image_dir: Path,
                  written: datetime | None = None) -> fo.Dataset:  # noqa: F821 (fiftyone imported late)
    """A persistent image dataset of n samples over a few hundred files (cycled), built once.

    One sample goes in through add_samples (FiftyOne writes its document as it wants it); the
    rest are copies of that document inserted in bulk, 10^4 at a time (about 20x faster than
    add_samples at 10^6: see --build-compare), stamped `written` (UTC; default: as inserted).
    Reused when it exists with n samples."""
    import fiftyone as fo
    from bson import ObjectId

    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if ds.count() == n:
            return ds
        ds.delete()
    images = make_images(image_dir)
    ds = fo.Dataset(name, persistent=True)
    ds.add_sample(fo.Sample(filepath=images[0]))
    coll = ds._sample_collection
    template = coll.find_one()
    rng = random.Random(0)
    for start in range(1, n, INSERT_BATCH):
        now = written or datetime.now(UTC).replace(tzinfo=None)
        docs = [
            {
                **template,
                "_id": ObjectId(),
                "filepath": images[i % len(images)],
                "_rand": rng.random(),
                "created_at": now,
                "last_modified_at": now,
            }
            for i in range(start, min(n, start + INSERT_BATCH))
        ]
        coll.insert_many(docs, ordered=False)
    ds.reload()
    return ds


def build_with_add_samples(name: str, n: int, image_dir: Path) -> fo.Dataset:  # noqa: F821
    """The same dataset built the way users build one: add_samples, in batches of 10^4."""
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    images = make_images(image_dir)
    ds = fo.Dataset(name)
    for start in range(0, n, INSERT_BATCH):
        ds.add_samples(
            [fo.Sample(filepath=images[i % len(images)]) for i in range(start, min(n, start + INSERT_BATCH))],
            progress=False,
        )
    return ds


# ---------------------------------------------------------------- measures (each in a fresh process)


def _probe(kind: str, dataset_name: str, args: argparse.Namespace) -> dict:
    """Run one probe in a fresh Python process (same database and home); its JSON last line."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe",
        kind,
        "--probe-dataset",
        dataset_name,
        "--batch-chunks",
        str(args.batch_chunks),
        "--chunk",
        str(args.chunk),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.probe_timeout,
        env={**os.environ, "CAM_EXPLORER_DEVICE": "cpu"},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"probe {kind} on {dataset_name} failed ({proc.returncode}): {proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def measure_batch(dataset, args) -> dict[str, float]:
    return _probe("batch", dataset.name, args)


def measure_scan(dataset, args) -> dict[str, float]:
    """Every sample given a heatmap label first (in bulk, pointing at no file), so the scan reads
    labels of real size, as a rerun over a finished dataset does."""
    from bson import ObjectId

    from camcore import store
    from camcore.identity import HeatmapIdentity

    identity = HeatmapIdentity(model=MODEL, method="gradcam", layer="head", target="predicted", weights="packaged")
    field = store.declare_heatmap_field(dataset, identity)
    label = {
        "_id": ObjectId(),
        "_cls": "Heatmap",
        "tags": [],
        "map_path": "/nonexistent/heatmap.png",
        "range": [0, 65535],
        "model": MODEL,
        "weights": "packaged",
        "method": "gradcam",
        "layer": "head",
        "target": "tabby",
        "target_index": 281,
        "target_rule": "predicted",
        "aug_smooth": False,
        "eigen_smooth": False,
        "raw_min": 0.0,
        "raw_max": 1.0,
        "blank": False,
        "created_at": "2026-11-30T00:00:00Z",
        "versions": {"camcore": "bench"},
    }
    dataset._sample_collection.update_many({}, {"$set": {field: label}})
    return _probe("scan", dataset.name, args)


def measure_resume(dataset, args) -> dict[str, float]:
    """batch on a view whose first --resume-done share (in _id order, the order a batch goes in)
    is done already, as after a run killed there: its labels match the request and their file
    exists. Time to the first chunk = the resume checks over those samples, then one chunk."""
    import cv2
    import numpy as np
    from bson import ObjectId

    from camcore import batch, store
    from camcore.models import load_model

    model = load_model(MODEL, "auto", "cpu")
    layer = model.spec.default_layer
    options = batch.BatchOptions(MODEL, methods=("gradcam",), device="cpu").checked()
    identity = options.identity("gradcam", layer, model)  # the field and labels the batch writes
    field = store.declare_heatmap_field(dataset, identity)
    png = Path(os.environ["CAM_EXPLORER_HOME"]) / "done.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(png), np.zeros((8, 8), np.uint16))
    label = {
        "_id": ObjectId(),
        "_cls": "Heatmap",
        "tags": [],
        "map_path": str(png),
        "range": [0, 65535],
        **identity.provenance,
        **options.label_extra,
        **batch.resume_provenance(identity),
    }
    done = int(dataset.count() * args.resume_done)
    coll = dataset._sample_collection
    if done:
        cutoff = dataset.sort_by("_id", create_index=False).skip(done - 1).limit(1).values("_id")[0]
        coll.update_many({"_id": {"$lte": cutoff}}, {"$set": {field: label}})
        coll.update_many({"_id": {"$gt": cutoff}}, {"$unset": {field: ""}})
    out = _probe("batch", dataset.name, args)
    out["skipped_before_first_chunk"] = done
    return out


def measure_batch_head(dataset, args) -> dict[str, float]:
    """The same as batch, with camcore/batch.py as committed at git HEAD (before: for comparison)."""
    return _probe("batch_head", dataset.name, args)


def _views_fields(dataset) -> None:
    """A float to sort by (uniqueness) and a tag on about a tenth of the samples (shard3), set on
    the server in one update each, a saved view (uniqueness > 0.5); the sort's index as the sidebar
    offers it (and not yet the compound (tags, field, _id) index: measure_views times the filtered
    sort without, then with it)."""
    from camcore.store import views

    coll = dataset._sample_collection
    if coll.find_one({"uniqueness": {"$exists": True}}) is None:
        coll.update_many({}, [{"$set": {"uniqueness": {"$rand": {}}}}])
        coll.update_many({"_rand": {"$lt": 0.1}}, {"$set": {"tags": ["shard3"]}})
        dataset.add_sample_field("uniqueness", __import__("fiftyone").FloatField)
        dataset.reload()
    if "top_half" not in dataset.list_saved_views():  # a saved view, as the "changing the view"
        from fiftyone import ViewField as F

        dataset.save_view("top_half", dataset.match(F("uniqueness") > 0.5))
    views.create_sort_index(dataset, "uniqueness")
    if "tags_uniqueness_id" in coll.index_information():
        coll.drop_index("tags_uniqueness_id")


def measure_views(dataset, args) -> dict[str, float]:
    """Sort, filter and view changes as the sidebar makes them (issue 23 design 1): a change builds
    the view, counts it and reads its first page; a move (a typed position, Random) reads the page
    at a random position, "next" the page after it (▶ across a page boundary), "last" the last page, "mid"
    the middle one (a sorted view's worst jump).
    Medians of --clicks repeats, with the sort's index the sidebar offers in place; the filtered
    sort again with the (tags, uniqueness, _id) index the sidebar offers after a tag filter."""
    from camcore.store import seek, views

    _views_fields(dataset)
    rng = random.Random(3)
    cases = {"unsorted": views.ViewSpec(),
             "sort": views.ViewSpec(sort_field="uniqueness", sort_reverse=True),
             "filter": views.ViewSpec(tags=("shard3",)),
             "saved": views.ViewSpec(saved_view="top_half"),
             "saved_sort": views.ViewSpec(saved_view="top_half", sort_field="uniqueness", sort_reverse=True),
             "filter_sort": views.ViewSpec(tags=("shard3",), sort_field="uniqueness"),
             "filter_sort_tagindex": views.ViewSpec(tags=("shard3",), sort_field="uniqueness")}
    out: dict[str, float] = {}
    for name, spec in cases.items():
        if name == "filter_sort_tagindex":
            dataset._sample_collection.create_index([("tags", 1), ("uniqueness", 1), ("_id", 1)],
                                                    name="tags_uniqueness_id")
        changes, moves, nexts, lasts, mids = [], [], [], [], []
        for _ in range(args.clicks):
            t0 = time.perf_counter()
            view = views.build_view(dataset, spec)
            total = views.count(view)
            seek.page_at(view, spec, 0)
            changes.append(time.perf_counter() - t0)
            start = rng.randrange(total) // views.PAGE_SIZE * views.PAGE_SIZE
            t0 = time.perf_counter()
            rows = seek.page_at(view, spec, start)  # a jump: a typed position, Random
            moves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # ▶ onto the next page, as the sidebar reads it (page before kept)
            seek.page_at(view, spec, start + views.PAGE_SIZE, after=rows[-1][0])
            nexts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            seek.page_at(view, spec, max(0, total - views.PAGE_SIZE))  # the last page
            lasts.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            seek.page_at(view, spec, total // 2)  # the middle: the farthest from both ends
            mids.append(time.perf_counter() - t0)
        for measure, values in (("change", changes), ("move", moves), ("next", nexts), ("last", lasts),
                                ("mid", mids)):
            out[f"{name}_{measure}_s"] = round(statistics.median(values), 4)
    return out


def measure_overwrite(dataset, args) -> dict[str, float]:
    """A map replaced on one sample (the explorer pushing the same computation again): the push,
    and its check that no label of any dataset points at the old file. On a dataset of this size
    whose samples were written two days ago (a copy, built so: moving 10^6 stamps back in place
    leaves the index's old entries where the check reads, a state FiftyOne's stamps, which only move
    forward, never make), then on this one with every sample written just now (a batch over the
    dataset): medians of --clicks pushes, and of the check alone, by the documents written since
    the old label (``labelled_since``) and, as before, by every document of every dataset with
    Heatmap fields (``full``: the baseline, in the same run)."""
    import fiftyone as fo
    from fo_helpers import make_heatmap, make_result

    from camcore import store
    from camcore.store.datasets import parse_utc, utc_now

    n = dataset.count()
    if fo.dataset_exists(f"{dataset.name}-written-days-ago"):  # left by a run that stopped
        fo.delete_dataset(f"{dataset.name}-written-days-ago")
    two_days_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2)
    aged = build_dataset(f"{dataset.name}-written-days-ago", n, Path(dataset.first().filepath).parent, two_days_ago)
    dataset._sample_collection.update_many({}, {"$set": {"last_modified_at": datetime.now(UTC).replace(tzinfo=None)}})
    size = (224, 224)  # the label's map; its sample's image is not read
    folder = Path(tempfile.mkdtemp(prefix="bench-overwrite-"))
    out: dict[str, float] = {}
    for written, ds in (("aged", aged), ("fresh", dataset)):
        sample_id = ds.first().id
        pushes, checks, fulls = [], [], []
        for k in range(args.clicks + 1):
            maps = [make_heatmap(size, "gradcam", layer=f"overwrite{j}", seed=k) for j in range(2)]
            t0 = time.perf_counter()
            store.push_heatmaps(ds, sample_id, make_result(size, maps), heatmap_dir=folder)
            if k:  # the first push makes the fields; the rest replace their maps
                pushes.append(time.perf_counter() - t0)
            since = parse_utc(utc_now())
            t0 = time.perf_counter()
            store.referenced_paths(["/nowhere/old.png"], labelled_since=since)
            checks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.referenced_paths(["/nowhere/old.png"])
            fulls.append(time.perf_counter() - t0)
        out[f"{written}_push_s"] = round(statistics.median(pushes), 4)
        out[f"{written}_check_s"] = round(statistics.median(checks), 4)
        out[f"{written}_check_full_s"] = round(statistics.median(fulls), 4)
        for field in [f for f in ds.get_field_schema() if f.startswith("cam_")]:
            ds.delete_sample_field(field)  # neither dataset's check reads the other's fields
    # deleting a field stamps every sample written now: the next run builds the copy again
    aged.delete()
    shutil.rmtree(folder, ignore_errors=True)
    return out


MEASURES: dict[str, Callable] = {
    "batch": measure_batch,
    "scan": measure_scan,
    "resume": measure_resume,
    "batch_head": measure_batch_head,
    "views": measure_views,
    "overwrite": measure_overwrite,
    **scale_ui.MEASURES,  # the explorer: a click's server time, a click in Chromium, memory per session
}


def _head_batch_module():
    import importlib.util

    source = subprocess.run(
        ["git", "show", "HEAD:camcore/batch.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-head-")) / "batch_head.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("camcore._batch_head", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_hwm() -> None:
    # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def probe_batch(dataset_name: str, args: argparse.Namespace, head: bool = False) -> dict:
    """Time from run_batch's call to its first chunk written; peak RSS while it runs."""
    import threading

    import fiftyone as fo

    from camcore import batch

    if head:
        batch = _head_batch_module()  # noqa: F811
    from camcore.models import load_model

    ds = fo.load_dataset(dataset_name)
    load_model(MODEL, "auto", "cpu")  # loaded before timing: the model's cost does not scale
    cancel = threading.Event()
    first, told, computed = [], [], []
    wanted = args.batch_chunks * args.chunk

    def progress(done, total, rate, eta, message):
        now = time.perf_counter()
        if not told:
            told.append(now)  # set-up done: fields declared, clean-up, counts (the old code: all read)
        if ": gradcam on" in message and not computed:
            computed.append(now)  # the first heatmap: first page read, first chunk decoded and passed
        if done and not first:
            first.append(now)
        if done >= wanted:
            cancel.set()

    rss_before = _rss_mib()
    _reset_hwm()
    t0 = time.perf_counter()
    options = batch.BatchOptions(MODEL, methods=("gradcam",), chunk=args.chunk, device="cpu")
    report = batch.run_batch(ds, options, progress=progress, cancel=cancel)
    seconds = time.perf_counter() - t0
    return {
        "setup_s": round(told[0] - t0, 3) if told else float("nan"),
        "first_heatmap_s": round(computed[0] - t0, 3) if computed else float("nan"),
        "first_chunk_s": round(first[0] - t0, 3) if first else float("nan"),
        "peak_rss_mib": round(_hwm_mib(), 1),
        "rss_growth_mib": round(_hwm_mib() - rss_before, 1),
        "run_s": round(seconds, 2),
        "written": report.done,
    }


def probe_scan(dataset_name: str, args: argparse.Namespace) -> dict:
    """The resume checks alone over the whole view: every page of ids, paths and labels."""
    import fiftyone as fo

    from camcore import batch
    from camcore.identity import HeatmapIdentity
    from camcore.store import scan

    ds = fo.load_dataset(dataset_name)
    field = HeatmapIdentity(model=MODEL, method="gradcam", layer="head", target="predicted").field_name
    fields = [field] if ds.has_field(field) else []
    rss_before = _rss_mib()
    _reset_hwm()
    t0 = time.perf_counter()
    count = 0
    first = None
    done = 0
    for page in scan.pages(ds, ds, fields, batch.PAGE_SIZE):
        count += len(page)
        done += sum(scan.stored_done(labels[0], {"model": MODEL}) for _sid, _path, labels in page if labels)
        if first is None:
            first = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    return {
        "first_page_s": round(first or 0.0, 4),
        "scan_s": round(seconds, 2),
        "us_per_sample": round(1e6 * seconds / max(1, count), 1),
        "rss_growth_mib": round(_hwm_mib() - rss_before, 1),
        "samples": count,
    }


# ---------------------------------------------------------------- --fields: cost vs CAM field count (issue 22, item 1)

FIELDS_SAMPLES = 12  # the dataset's size does not matter here: its number of CAM fields does
FIELDS_NEW = 3  # new fields per push / per batch (each a new layer)
FIELDS_LAYERS = ("blocks.4", "blocks.5", "blocks.6")  # EfficientNet-Lite0 layers of the batch
# The CPU seconds of this process for the last measured step: on a shared machine wall time swings
# with other jobs' load, the work a step does does not (the database's own time is not in it)
_CPU: list[float] = []


def fill_fields(ds, count: int, labelled: bool = False) -> None:
    """Give `ds` `count` CAM heatmap fields as a month of exploring would: declared like ours (every
    label attribute), listed in the registry and the App config, one label in each (labelled: a
    label in each on every sample, as a month of pushes and batches leaves them). Built by copying
    one declared field's schema entry in the database (seconds), not by `count` declarations."""
    import copy

    from fo_helpers import make_heatmap, make_result

    from camcore import store
    from camcore.store.datasets import MARK

    size = (224, 224)
    h = make_heatmap(size, "gradcam", layer="seed")
    store.push_heatmaps(ds, ds.first().id, make_result(size, [h]))
    ds.reload()
    conn = ds._doc._get_collection()
    doc = conn.find_one({"_id": ds._doc.id})
    seed = next(f for f in doc["sample_fields"] if f["name"] == h.field)
    info = doc.get("info") or {}
    registry = dict(info.get(MARK, {}).get("fields") or {})
    fields, scales, group = [], [], []
    for i in range(count - 1):
        name = f"{h.field}_{i:04d}"
        f = copy.deepcopy(seed)
        f["name"] = f["db_field"] = name
        f["info"][MARK]["layer"] = f"seed{i}"
        fields.append(f)
        registry[name] = dict(f["info"][MARK])
        scales.append({"path": name, "name": "jet"})
        group.append(name)
    conn.update_one({"_id": ds._doc.id}, {"$push": {"sample_fields": {"$each": fields}},
                                          "$set": {f"info.{MARK}.fields": registry}})
    app = doc.get("app_config") or {}
    scheme = app.get("color_scheme") or {}
    scheme["colorscales"] = list(scheme.get("colorscales") or []) + scales
    for g in app.get("sidebar_groups") or []:
        if g.get("name") == "CAM heatmaps":
            g["paths"] = list(g.get("paths") or []) + group
    conn.update_one({"_id": ds._doc.id}, {"$set": {"app_config.color_scheme": scheme,
                                                   "app_config.sidebar_groups": app.get("sidebar_groups")}})
    label = ds._sample_collection.find_one({"_id": ds.first()._id})[h.field]
    where = {} if labelled else {"_id": ds.first()._id}
    ds._sample_collection.update_many(where, {"$set": {f["name"]: label for f in [*fields, {"name": h.field}]}})
    ds.reload()


def _drop_new(ds, before: set[str], raw: bool = False, catch_up_timed: bool = False) -> None:
    """Remove the fields a measured step added (untimed), so every repeat starts alike.

    FiftyOne's delete_sample_fields saves the whole field list back, every entry in FiftyOne's own
    (whole) form; raw: the entries, values, registry entries, colour scales and sidebar paths are
    removed by name, and the other entries stay as the pushes wrote them."""
    from camcore import store
    from camcore.store.datasets import MARK

    new = [f for f in ds.get_field_schema() if f not in before]
    if new and raw:
        conn = ds._doc._get_collection()
        groups = conn.find_one({"_id": ds._doc.id}, {"app_config.sidebar_groups.name": 1})
        names = [g.get("name") for g in groups["app_config"]["sidebar_groups"]]
        conn.update_one({"_id": ds._doc.id}, {
            "$pull": {"sample_fields": {"name": {"$in": new}},
                      "app_config.color_scheme.colorscales": {"path": {"$in": new}}},
            "$pullAll": {f"app_config.sidebar_groups.{i}.paths": new for i in range(len(names))},
            "$unset": {f"info.{MARK}.fields.{f}": "" for f in new}})
        ds._sample_collection.update_many({}, {"$unset": dict.fromkeys(new, "")})
        ds.reload()
        # This process catches up with the drop here, untimed: the next repeat is timed as a push
        # in a process that pushed before (its App config and field index current), not as the
        # first push after someone else deleted fields, which converts them again (--catch-up-timed)
        if not catch_up_timed:
            from fo_helpers import make_heatmap

            store.refresh_schema(ds)
            store.stored_identity(ds, make_heatmap((8, 8), layer="warm").identity)
    elif new:
        ds.delete_sample_fields(new)
    store.clean_orphans(ds)


def time_push(ds, rep: int) -> float:
    """One sample's push of FIELDS_NEW maps into new fields: seconds."""
    from fo_helpers import make_heatmap, make_result

    from camcore import store

    size = (224, 224)
    maps = [make_heatmap(size, "gradcam", layer=f"push{rep}x{k}", seed=k) for k in range(FIELDS_NEW)]
    sample = ds.skip(1 + rep % (FIELDS_SAMPLES - 1)).first()
    t0, c0 = time.perf_counter(), time.process_time()
    store.push_heatmaps(ds, sample.id, make_result(size, maps))
    _CPU.append(time.process_time() - c0)
    return time.perf_counter() - t0


def time_batch_setup(ds, rep: int) -> float:
    """A batch's set-up with FIELDS_NEW new fields (its layers): from the call to the first progress
    report (fields declared, clean-up, counts, where to start), the model loaded beforehand."""
    import threading

    from camcore import batch

    told: list[float] = []
    cancel = threading.Event()

    def progress(done, total, rate, eta, message):
        if not told:
            told.append(time.perf_counter())
            _CPU.append(time.process_time() - c0)
        cancel.set()

    # A new target rule each repeat: new fields, as a batch over new layers would declare.
    options = batch.BatchOptions(MODEL, methods=("gradcam",), layers=FIELDS_LAYERS, chunk=1, device="cpu",
                                 target_rule=str(rep + 1))
    t0, c0 = time.perf_counter(), time.process_time()
    batch.run_batch(ds.limit(1), options, progress=progress, cancel=cancel)
    return told[0] - t0


def _doc_sizes(ds) -> str:
    """The dataset document's size, and its largest parts (MongoDB rewrites it whole on each update)."""
    import bson

    doc = ds._doc._get_collection().find_one({"_id": ds._doc.id})
    parts = {k: len(bson.encode({k: doc.get(k)})) for k in ("sample_fields", "info", "app_config")}
    return f"dataset document {len(bson.encode(doc)) / 1e6:.2f} MB (" + ", ".join(
        f"{k} {v / 1e6:.2f}" for k, v in parts.items()) + ")"


def _journal_bytes() -> int:
    """Bytes MongoDB's journal (WiredTiger's log) has written: load on the machine does not change
    what a step writes there, only how long it waits."""
    import fiftyone.core.odm as foo

    status = foo.get_db_conn().client.admin.command("serverStatus")
    return int(status.get("wiredTiger", {}).get("log", {}).get("log bytes written", 0))


def run_fields(counts: list[int], repeats: int, image_dir: Path, profile: str | None = None,
               labelled: bool = False, raw_drop: bool = False, catch_up_timed: bool = False,
               collect: bool = True) -> dict:
    """Median seconds of a push and of a batch's set-up at each CAM field count; ratios against
    the first count, measured in this run (interleaved, so drift hits every count alike)."""
    import gc
    import statistics

    import fiftyone as fo

    from camcore.models import load_model

    load_model(MODEL, "auto", "cpu")
    sets = {}
    for n in counts:
        name = f"cam-fields-{n}"
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        from fo_helpers import write_images

        files = write_images(image_dir / "fields", [f"f{i}.png" for i in range(FIELDS_SAMPLES)], size=(224, 224))
        ds = fo.Dataset(name, persistent=True)
        ds.add_samples([fo.Sample(filepath=p) for p in files])
        ds.compute_metadata()
        t0 = time.perf_counter()
        fill_fields(ds, n, labelled)
        cams = [f for f in ds.get_field_schema() if f.startswith("cam_")]
        print(f"dataset {name}: {len(cams)} CAM fields in {time.perf_counter() - t0:.1f} s; {_doc_sizes(ds)}",
              flush=True)
        sets[n] = (ds, set(ds.get_field_schema()))
    if collect:
        gc.collect()
    keys = ("push_s", "batch_setup_s", "push_cpu_s", "batch_setup_cpu_s", "push_journal_mb", "batch_setup_journal_mb")
    times: dict[int, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in counts}
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    for rep in range(repeats):
        for n in counts:
            ds, before = sets[n]
            profiling = prof is not None and n == counts[-1]
            if profiling:
                prof.enable()
            logged = _journal_bytes()
            times[n]["push_s"].append(time_push(ds, rep))
            times[n]["push_cpu_s"].append(_CPU.pop())
            times[n]["push_journal_mb"].append((_journal_bytes() - logged) / 1e6)
            logged = _journal_bytes()
            times[n]["batch_setup_s"].append(time_batch_setup(ds, rep))
            times[n]["batch_setup_cpu_s"].append(_CPU.pop())
            times[n]["batch_setup_journal_mb"].append((_journal_bytes() - logged) / 1e6)
            if profiling:
                prof.disable()
            _drop_new(ds, before, raw_drop, catch_up_timed)
            if collect:
                # The drop reloads the dataset (every field's objects made anew, ~50k at 500 fields): young
                # objects that Python's collector would scan in the next timed step (+0.4 ms at 500 fields),
                # which a process that has been pushing does not hold. Collected here, untimed.
                gc.collect()
        print(f"  repeat {rep + 1}: " + "  ".join(
            f"{n}: push {times[n]['push_s'][-1]:.2f} s, set-up {times[n]['batch_setup_s'][-1]:.2f} s"
            for n in counts), flush=True)
    if prof is not None and profile:
        prof.dump_stats(profile)
    # to 0.1 ms: a set-up takes ~10 ms, so a median rounded to the ms moved its ratio by 10%
    out = {n: {k: round(statistics.median(v), 4) for k, v in t.items()} for n, t in times.items()}
    base = counts[0]
    print(f"\nmedians of {repeats} repeats; ratios against {base} CAM fields (same run)")
    for key in keys:
        unit = "MB" if key.endswith("_mb") else "s"
        print(f"{key}: " + "  ".join(f"{n} fields: {out[n][key]} {unit} ({_ratio(out[n][key], out[base][key])})"
                                      for n in counts))
    ratios = {key: _ratio(out[counts[-1]][key], out[base][key]) for key in keys}
    print("RESULT " + json.dumps({"fields": counts, "repeats": repeats, "ratios": ratios, "medians": out}))
    return out


# ---------------------------------------------------------------- main


def _ratio(value: float, base: float) -> str:
    if (
        not isinstance(value, (int, float))
        or not isinstance(base, (int, float))
        or not base
        or value != value
    ):
        return "-"
    return f"{value / base:.2f}x"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", default="1000,1000000", help="comma-separated sample counts (first = baseline)"
    )
    ap.add_argument("--measures", default="batch,scan", help=f"comma-separated, of: {', '.join(MEASURES)}")
    ap.add_argument(
        "--db-dir", default=None, help="private mongod data folder, kept (default: a temp folder)"
    )
    ap.add_argument("--build-compare", type=int, default=0, help="also time add_samples on this many samples")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument(
        "--batch-chunks", type=int, default=3, help="chunks written before the batch is cancelled"
    )
    ap.add_argument("--probe-timeout", type=int, default=1800)
    ap.add_argument("--clicks", type=int, default=10, help="▶ clicks timed (interaction, click)")
    ap.add_argument("--sessions", type=int, default=3, help="browser sessions opened (sessions)")
    ap.add_argument("--resume-done", type=float, default=0.9, help="resume: share of the view done already")
    ap.add_argument("--fields", help="CAM field counts, e.g. 5,500: push and batch set-up at each (issue 22)")
    ap.add_argument("--repeats", type=int, default=5, help="--fields: repeats (medians are reported)")
    ap.add_argument("--profile", help="--fields: write a cProfile of the largest count here")
    ap.add_argument("--labelled", action="store_true",
                    help="--fields: a label in every CAM field on every sample (the pushed sample's too)")
    ap.add_argument("--raw-drop", action="store_true",
                    help="--fields: remove each repeat's new fields by name, not with FiftyOne's "
                         "delete_sample_fields (which writes every field's entry whole again)")
    ap.add_argument("--catch-up-timed", action="store_true",
                    help="--fields --raw-drop: leave this process's catching up with each repeat's drop to the "
                         "next (timed) push, as the runs before scale31 did")
    ap.add_argument("--no-gc-collect", action="store_true",
                    help="--fields: do not collect Python's garbage after each repeat's (untimed) drop, as the runs "
                         "before scale32 did: the next timed steps then scan the objects the drop's reload made")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    ap.add_argument("--probe-dataset", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

    if args.probe:  # a child: the database and home are set by the parent
        probes = {
            "batch": probe_batch,
            "scan": probe_scan,
            "batch_head": lambda name, a: probe_batch(name, a, head=True),
        }
        out = probes[args.probe](args.probe_dataset, args)
        print(json.dumps(out))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    measures = [m for m in args.measures.split(",") if m.strip()]
    temp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    db_dir = Path(args.db_dir) if args.db_dir else temp / "db"
    db_dir.mkdir(parents=True, exist_ok=True)
    os.environ["CAM_EXPLORER_HOME"] = str(temp / "home")  # heatmaps of this run only
    from mongod_support import private_mongod

    mongod = private_mongod(db_dir)
    try:
        import fiftyone as fo

        image_dir = db_dir / "images"
        results: dict[int, dict[str, dict]] = {}
        if args.build_compare:
            t0 = time.perf_counter()
            build_with_add_samples("cam-scale-add-samples", args.build_compare, image_dir)
            slow = time.perf_counter() - t0
            fo.delete_dataset("cam-scale-add-samples")
            t0 = time.perf_counter()
            build_dataset("cam-scale-bulk", args.build_compare, image_dir)
            fast = time.perf_counter() - t0
            fo.delete_dataset("cam-scale-bulk")
            print(
                f"build {args.build_compare} samples: add_samples {slow:.1f} s "
                f"({args.build_compare / slow:.0f}/s), bulk insert {fast:.1f} s "
                f"({args.build_compare / fast:.0f}/s): {slow / fast:.1f}x",
                flush=True,
            )
        if args.fields:
            run_fields([int(c) for c in args.fields.split(",") if c.strip()], args.repeats, image_dir, args.profile,
                       args.labelled, args.raw_drop, args.catch_up_timed, not args.no_gc_collect)
            return
        for n in sizes:
            t0 = time.perf_counter()
            ds = build_dataset(f"cam-scale-{n}", n, image_dir)
            print(
                f"dataset {ds.name}: {ds.count()} samples ready in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            results[n] = {}
            for m in measures:
                results[n][m] = MEASURES[m](ds, args)
                print(f"  {m} @ {n}: {results[n][m]}", flush=True)
            for field in [f for f in ds.get_field_schema() if f.startswith("cam_")]:
                ds.delete_sample_field(field)  # the next run starts from nothing done again
        base = sizes[0]
        print(f"\nratios against {base} samples (same run)")
        for m in measures:
            for key, value in results[base][m].items():
                row = "  ".join(
                    f"{n}: {results[n][m].get(key)} ({_ratio(results[n][m].get(key), value)})" for n in sizes
                )
                print(f"{m}.{key}: {row}")
        last = {
            f"{m}.{k}": _ratio(results[sizes[-1]][m][k], results[base][m][k])
            for m in measures
            for k in results[base][m]
        }
        print("RESULT " + json.dumps({"sizes": sizes, "ratios": last, "results": results}))
    finally:
        if mongod is not None:
            from mongod_support import stop_mongod

            stop_mongod(mongod)
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
