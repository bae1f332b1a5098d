"""Issue 13, items 1 and 2: a heatmap label never points at another map, and clean-up never
deletes a file that a label of any dataset references or that a live writer is writing.

A push or a batch that dies between any two of its steps (journal, PNGs, the labels' write of each field,
deletion of the replaced files) leaves every label with the file it was written with; the next
clean-up removes only what no label references. Kills are real (os._exit in a child process, so
no finally block runs; the children are forked from one with FiftyOne imported) for pushes, and exceptions at each step for batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fiftyone as fo
import fiftyone.core.odm as foo
import numpy as np
import pytest
from bson import ObjectId
from fo_helpers import field_name, make_heatmap, make_result, unique_name, write_images
from PIL import Image

from camcore import batch, store
from camcore.store import heatmaps, sampledocs
from camcore.store.datasets import parse_utc

ROOT = Path(__file__).resolve().parents[1]
SIZE = (24, 32)
QUANT = 1.0 / 65535 + 1e-6
OLD_MAX, NEW_MAX = 1.0, 9.0  # raw_max tells the old label from the new one


@pytest.fixture
def dataset(tmp_path):
    files = write_images(tmp_path / "img", ["a.png", "b.png"], size=SIZE)
    ds = fo.Dataset(unique_name("write-safety"), persistent=True)  # the child loads it by name
    ds.add_samples([fo.Sample(filepath=p) for p in files])
    ds.compute_metadata()
    yield ds
    for name in fo.list_datasets():
        if name.startswith(ds.name):
            fo.delete_dataset(name)


def _maps(seed_old: int = 1, seed_new: int = 4):
    old = [
        make_heatmap(SIZE, "gradcam", seed=seed_old, raw_range=(0.0, OLD_MAX)),
        make_heatmap(SIZE, "layercam", seed=seed_old + 1, raw_range=(0.0, OLD_MAX)),
    ]
    new = [
        make_heatmap(SIZE, "gradcam", seed=seed_new, raw_range=(0.0, NEW_MAX)),
        make_heatmap(SIZE, "layercam", seed=seed_new + 1, raw_range=(0.0, NEW_MAX)),
    ]
    return old, new


def _png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.float64) / 65535.0


def _check_each_label_has_its_own_file(
    ds: fo.Dataset, sample_id: str, fields: list[str], old, new
) -> list[str]:
    """Every label is the old one with the old map, or the new one with the new map; returns which."""
    ds.reload()
    states = []
    for field, h_old, h_new in zip(fields, old, new):
        label = ds[sample_id][field]
        assert label is not None and os.path.isfile(label.map_path), (field, label)
        expected = h_old if label.raw_max == OLD_MAX else h_new
        np.testing.assert_allclose(_png(label.map_path), expected.map, atol=QUANT)
        states.append("old" if label.raw_max == OLD_MAX else "new")
    return states


def _field_files(ds: fo.Dataset, fields: list[str], heatmap_dir: Path) -> set[str]:
    out = set()
    for field in fields:
        folder = store.heatmap_path(ds.name, field, "x", heatmap_dir).parent
        out |= {str(p) for p in folder.glob("*.png")} if folder.is_dir() else set()
    return out


CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = [os.environ["ROOT"], os.environ["ROOT"] + "/tests"]
    import fiftyone as fo
    from camcore import store
    from camcore.store import heatmaps, sampledocs
    from fo_helpers import make_heatmap, make_result

    step = sys.argv[1]
    size = (24, 32)
    ds = fo.load_dataset(os.environ["DATASET"])
    new = [make_heatmap(size, "gradcam", seed=4, raw_range=(0.0, 9.0)),
           make_heatmap(size, "layercam", seed=5, raw_range=(0.0, 9.0))]

    def die():
        os._exit(9)  # no finally, no atexit: as a SIGKILL would

    real_write, real_set, real_delete = heatmaps._write_pngs, sampledocs.write, heatmaps._delete_unreferenced
    calls = []
    if step == "after_journal":
        heatmaps._write_pngs = lambda *a, **k: die()
    elif step == "after_pngs":
        heatmaps._write_pngs = lambda *a, **k: (real_write(*a, **k), die())
    elif step == "between_fields":
        def write(*a, **k):  # one write per field
            calls.append(1)
            if len(calls) == 2:
                die()
            return real_set(*a, **k)
        sampledocs.write = write
    elif step == "after_labels":
        heatmaps._delete_unreferenced = lambda *a, **k: die()
    elif step == "after_delete":
        store.HeatmapWriter.close = lambda self, ok=True: (self.flush(), die())
    store.push_heatmaps(ds, ds.first().id, make_result(size, new), heatmap_dir=os.environ["HM"])
    print("finished")
    """
)


@pytest.mark.parametrize(
    "step", ["after_journal", "after_pngs", "between_fields", "after_labels", "after_delete"]
)
def test_a_push_killed_between_any_two_steps_keeps_labels_and_files_together(dataset, tmp_path, step, fork_server):
    hm = tmp_path / "hm"
    sample = dataset.first()
    old, new = _maps()
    fields = store.push_heatmaps(dataset, sample.id, make_result(SIZE, old), heatmap_dir=hm)
    old_files = {dataset[sample.id][f].map_path for f in fields}

    proc = fork_server.run(CHILD, [step], {"ROOT": str(ROOT), "DATASET": dataset.name, "HM": str(hm)})
    assert proc.returncode == 9 and "finished" not in proc.stdout, proc.stderr[-2000:]

    states = _check_each_label_has_its_own_file(dataset, sample.id, fields, old, new)
    expected = {
        "after_journal": ["old", "old"],
        "after_pngs": ["old", "old"],
        "between_fields": ["new", "old"],
        "after_labels": ["new", "new"],
        "after_delete": ["new", "new"],
    }[step]
    assert states == expected
    # The next clean-up takes the dead writer's journal: what no label references goes, nothing else.
    store.clean_orphans(dataset, hm)
    dataset.reload()
    referenced = {dataset[sample.id][f].map_path for f in fields}
    assert _field_files(dataset, fields, hm) == referenced
    assert not list(hm.glob("*/.pending/*.journal"))
    _check_each_label_has_its_own_file(dataset, sample.id, fields, old, new)
    if step in ("after_journal", "after_pngs"):
        assert referenced == old_files  # untouched


def test_a_push_never_overwrites_the_file_a_label_points_at(dataset, tmp_path):
    """The old label's file keeps its bytes until the new label is in: no write goes to its name."""
    hm = tmp_path / "hm"
    sample = dataset.first()
    old, new = _maps()
    [f1, f2] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, old), heatmap_dir=hm)
    old_path = dataset[sample.id][f1].map_path
    before = Path(old_path).read_bytes()
    seen = []
    real_set = sampledocs.write

    def write(*a, **k):
        seen.append(Path(old_path).read_bytes() == before)  # still the old map when the label changes
        return real_set(*a, **k)

    sampledocs.write = write
    try:
        store.push_heatmaps(dataset, sample.id, make_result(SIZE, new), heatmap_dir=hm)
    finally:
        sampledocs.write = real_set
    assert seen and all(seen)
    assert dataset[sample.id][f1].map_path != old_path and not os.path.exists(old_path)


# ---------------------------------------------------------------- batch


MODEL = "efficientnet_lite0"


def _batch_field() -> str:
    from camcore.models import get_spec

    return field_name(MODEL, "gradcam", get_spec(MODEL).default_layer, "predicted")


class Died(BaseException):
    """A death, not an error: nothing on the way out may catch it and tidy up."""


def _die(*args, **kwargs):
    raise Died()


@pytest.mark.parametrize("step", ["pngs", "labels", "delete"])
def test_a_rebatch_that_dies_at_any_step_keeps_labels_and_files_together(
    dataset, tmp_path, monkeypatch, step
):
    field = _batch_field()
    report = batch.run_batch(dataset, batch.BatchOptions(MODEL, methods=("gradcam",), chunk=4))
    assert report.done == 2
    before = {
        sid: (label.map_path, label.created_at, Path(label.map_path).read_bytes())
        for sid, label in zip(*dataset.values(["id", field]))
    }
    # The labels no longer match the request: the next batch recomputes into the same field, and
    # the images changed (noise now), so the new maps differ from the old ones.
    dataset.set_values(f"{field}.eigen_smooth", [True] * len(dataset))
    rng = np.random.default_rng(7)
    for path in dataset.values("filepath"):
        with Image.open(path) as im:
            size = im.size
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    time.sleep(1.1)  # created_at has a one-second resolution: tell the new labels from the old

    where = {
        "pngs": (heatmaps, "_write_pngs"),
        "labels": (sampledocs, "write"),
        "delete": (store.HeatmapWriter, "flush"),
    }[step]  # flush: deletes the replaced files
    monkeypatch.setattr(*where, _die)
    with pytest.raises(Died):
        batch.run_batch(dataset, batch.BatchOptions(MODEL, methods=("gradcam",), chunk=4))
    monkeypatch.undo()

    dataset.reload()
    for sid, label in zip(*dataset.values(["id", field])):
        assert os.path.isfile(label.map_path), (step, label.map_path)
        old_path, old_created, old_bytes = before[sid]
        if label.map_path == old_path:  # the old label, with its old file (the same bytes)
            assert label.created_at == old_created and label.eigen_smooth
            assert Path(label.map_path).read_bytes() == old_bytes
        else:  # the new label, with its new file
            assert label.created_at != old_created and not label.eigen_smooth and old_path != label.map_path
    # The rerun settles what the dead run left and finishes; no file is left that no label uses.
    again = batch.run_batch(dataset, batch.BatchOptions(MODEL, methods=("gradcam",), chunk=4))
    assert again.done + again.skipped == 2 and again.failed == []
    dataset.reload()
    referenced = set(dataset.values(f"{field}.map_path"))
    assert all(os.path.isfile(p) for p in referenced)
    folder = store.heatmap_path(dataset.name, field, "x").parent
    assert {str(p) for p in folder.glob("*.png")} == referenced


# ---------------------------------------------------------------- clean-up: clones and live writers


def test_a_clones_file_is_never_deleted(dataset, tmp_path):
    """Clones keep sample ids and absolute map_paths: re-pushing on the original must leave the
    clone's file, and so must clean-up of a journal that lists it."""
    hm = tmp_path / "hm"
    sample = dataset.first()
    old, new = _maps()
    fields = store.push_heatmaps(dataset, sample.id, make_result(SIZE, old), heatmap_dir=hm)
    clone = dataset.clone(dataset.name + "-clone")
    shared = {f: clone[sample.id][f].map_path for f in fields}
    assert shared == {f: dataset[sample.id][f].map_path for f in fields}

    store.push_heatmaps(dataset, sample.id, make_result(SIZE, new), heatmap_dir=hm)
    dataset.reload()
    clone.reload()
    for f in fields:
        assert dataset[sample.id][f].map_path != shared[f]
        assert os.path.isfile(shared[f]), "the clone's file was deleted"
        np.testing.assert_allclose(_png(clone[sample.id][f].map_path), old[fields.index(f)].map, atol=QUANT)

    # A dead writer's journal that lists the clone's files: clean-up keeps them.
    dead = store.HeatmapWriter(dataset.name, hm)
    dead.record([], list(shared.values()))
    dead.close(ok=False)
    assert store.clean_orphans(dataset, hm) == 0
    assert all(os.path.isfile(p) for p in shared.values())

    # Once no dataset references them, a writer replacing them deletes them.
    store.push_heatmaps(clone, sample.id, make_result(SIZE, new), heatmap_dir=hm)
    assert not any(os.path.exists(p) for p in shared.values())


def test_referenced_paths_looks_in_every_dataset_and_nested_fields(dataset, tmp_path):
    other = fo.Dataset(dataset.name + "-other")
    target = str(tmp_path / "x.png")
    other.add_sample(
        fo.Sample(
            filepath=str(tmp_path / "img" / "a.png"),
            renamed=fo.Heatmap(map_path=target),
            nested=fo.DynamicEmbeddedDocument(h=fo.Heatmap(map_path=str(tmp_path / "y.png"))),
        )
    )
    other.add_dynamic_sample_fields()
    found = store.referenced_paths([target, str(tmp_path / "y.png"), str(tmp_path / "z.png")])
    assert found == {target, str(tmp_path / "y.png")}


def _aged(ds: fo.Dataset, copies: int = 0, days: int = 2) -> None:
    """`copies` more samples (raw copies of the first, seconds), and every sample last written
    `days` ago, as in a dataset built before the session (FiftyOne would stamp now)."""
    doc = ds._sample_collection.find_one({"_id": ds.first()._id})
    if copies:
        ds._sample_collection.insert_many([{**doc, "_id": ObjectId(), "filepath": f"/nowhere/{i}.png"}
                                           for i in range(copies)])
    ds._sample_collection.update_many({}, {"$set": {"last_modified_at": datetime.now(UTC) - timedelta(days=days)}})


def _overwrite_profiled(dataset: fo.Dataset, hm: Path) -> list[dict]:
    """Push two maps on the first sample, then replace them: the profiler's entries of the
    replacing push on this dataset's samples. The replaced files must be gone (nobody's)."""
    sample_id = dataset.first().id
    old, new = _maps()
    fields = store.push_heatmaps(dataset, sample_id, make_result(SIZE, old), heatmap_dir=hm)
    replaced = [dataset[sample_id][f].map_path for f in fields]
    db = foo.get_db_conn()
    start = datetime.now(UTC).replace(tzinfo=None)
    db.command("profile", 2)
    try:
        store.push_heatmaps(dataset, sample_id, make_result(SIZE, new), heatmap_dir=hm)
    finally:
        db.command("profile", 0)
    assert not any(os.path.exists(p) for p in replaced)  # checked, and nobody's: deleted
    ns = f"{db.name}.{dataset._sample_collection_name}"
    return list(db["system.profile"].find({"ts": {"$gte": start}, "ns": ns}))


def _map_path_queries(entries: list[dict]) -> list[dict]:
    """The reference check's queries among profiled entries, each with its plan's stage names."""
    def stages(node: dict) -> list[str]:
        below = [node["inputStage"]] if "inputStage" in node else node.get("inputStages", [])
        return [str(node.get("stage")), *(s for child in below for s in stages(child))]

    return [{**e, "stages": stages(e.get("execStats") or {})} for e in entries
            if "map_path" in str((e.get("command") or {}).get("filter"))]


def test_an_overwrite_reads_only_the_samples_written_since_the_old_maps_label(dataset, tmp_path):
    """The check that no label of any dataset points at a replaced file reads the documents written
    since that file's label (FiftyOne's index on last_modified_at), not every sample of every
    dataset: 0.4 s per overwrite at 10^6 samples (bench/scale.py --measures overwrite)."""
    _aged(dataset, copies=3000)
    entries = _overwrite_profiled(dataset, tmp_path / "hm")
    examined = [e.get("docsExamined", 0) for e in entries]
    assert examined and max(examined) < 100, examined  # 3002 when every sample is read
    assert all("SUBPLAN" not in q["stages"] for q in _map_path_queries(entries))


def test_an_overwrite_after_a_write_to_most_samples_reads_them_once(dataset, tmp_path):
    """When most samples were written since the label (a batch over the dataset minutes ago), the
    check reads the collection once, not the index and then each document (at 10^6: 0.4 s, 1.1 s),
    and without planning each Heatmap field's branch of its query against every index (MongoDB's
    SUBPLAN: 0.55 s at 500 fields, on 3 samples as on 10^6)."""
    _aged(dataset, copies=1200, days=0)
    queries = _map_path_queries(_overwrite_profiled(dataset, tmp_path / "hm"))
    assert queries and {q.get("planSummary") for q in queries} == {"COLLSCAN"}, queries
    assert all("SUBPLAN" not in q["stages"] for q in queries), [q["stages"] for q in queries]


def test_a_copy_stamped_by_a_slow_clock_or_of_an_undated_label_keeps_its_file(dataset, tmp_path):
    """A copy of a label in another dataset (add_samples: new ids) made on a host whose clock runs
    behind (set to local time, read as UTC: its last_modified_at 9 h before the label's
    created_at) keeps the file when the original is replaced; so does a copy made any time before,
    when the replaced label does not say when it was written (read as: every document is checked)."""
    _aged(dataset)
    hm = tmp_path / "hm"
    sample_id = dataset.first().id
    old, new = _maps()
    fields = store.push_heatmaps(dataset, sample_id, make_result(SIZE, old), heatmap_dir=hm)
    other = fo.Dataset(dataset.name + "-copy")
    other.add_samples([dataset[sample_id]])
    created = parse_utc(dataset[sample_id][fields[0]].created_at)
    slow = created - timedelta(hours=9)  # that host's clock: set to local time, 9 h behind UTC
    other._sample_collection.update_many({}, {"$set": {"last_modified_at": slow}})
    shared = [dataset[sample_id][f].map_path for f in fields]
    store.push_heatmaps(dataset, sample_id, make_result(SIZE, new), heatmap_dir=hm)
    assert all(os.path.isfile(p) for p in shared), "the copy's file was deleted"

    undated = [dataset[sample_id][f].map_path for f in fields]
    other.add_samples([dataset[sample_id]])
    other._sample_collection.update_many({}, {"$set": {"last_modified_at": datetime.now(UTC) - timedelta(days=3)}})
    dataset._sample_collection.update_one({"_id": ObjectId(sample_id)}, {"$unset": {f"{f}.created_at": 1 for f in fields}})
    store.push_heatmaps(dataset, sample_id, make_result(SIZE, old), heatmap_dir=hm)
    assert all(os.path.isfile(p) for p in undated), "the copy's file was deleted"


LIVE_WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path[:0] = [os.environ["ROOT"], os.environ["ROOT"] + "/tests"]
    from pathlib import Path
    from camcore import store

    writer = store.HeatmapWriter(os.environ["DATASET"], os.environ["HM"])
    path = Path(os.environ["FILE"])
    writer.record([str(path)], [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"a map whose label is still to come")
    print("written", flush=True)
    time.sleep(600)  # between its PNGs and its labels' write
    """
)


def test_cleanup_leaves_a_live_writers_file_in_another_process(dataset, tmp_path):
    hm = tmp_path / "hm"
    sample = dataset.first()
    field = "cam_other_writer"
    path = store.heatmap_path(dataset.name, field, sample.id, hm, write_id="abc123")
    env = {**os.environ, "ROOT": str(ROOT), "DATASET": dataset.name, "HM": str(hm), "FILE": str(path)}
    child = subprocess.Popen([sys.executable, "-c", LIVE_WRITER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        # Old enough for any grace period, unreferenced: still its writer's, which is alive.
        old = time.time() - 10 * store.FOREIGN_JOURNAL_GRACE
        os.utime(path, (old, old))
        assert store.clean_orphans(dataset, hm) == 0
        assert path.read_bytes() == b"a map whose label is still to come"
        report = batch.run_batch(dataset, batch.BatchOptions(MODEL, methods=("gradcam",), heatmap_dir=hm))
        assert report.done == 2 and report.removed_orphans == 0 and path.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # The writer died before its labels' write: its file is nobody's now.
    assert store.clean_orphans(dataset, hm) == 1
    assert not path.exists() and not list(hm.glob("*/.pending/*.journal"))


def test_a_journal_from_another_machine_waits_out_its_grace_period(dataset, tmp_path):
    """A shared folder (NFS) may not carry the other machine's lock: its journal is left alone
    until it is older than FOREIGN_JOURNAL_GRACE."""
    import json

    hm = tmp_path / "hm"
    path = store.heatmap_path(dataset.name, "cam_f", dataset.first().id, hm, write_id="def456")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"png")
    folder = heatmaps._pending_dir(dataset.name, hm)
    folder.mkdir(parents=True)
    journal = folder / f"x{store.JOURNAL_SUFFIX}"
    journal.write_text(
        json.dumps({"host": "another-node", "pid": 1, "started": time.time()})
        + "\n"
        + json.dumps({"new": [str(path)], "old": []})
        + "\n"
    )
    assert store.clean_orphans(dataset, hm) == 0 and path.exists() and journal.exists()
    old = time.time() - store.FOREIGN_JOURNAL_GRACE - 60
    os.utime(journal, (old, old))
    assert store.clean_orphans(dataset, hm) == 1 and not path.exists() and not journal.exists()


def test_a_journal_being_opened_is_left_to_its_writer(dataset, tmp_path):
    """A writer creates its journal as `.new-<id>`, then locks it, then renames it: a clean-up
    (another writer's push) that came in between took the unlocked file, and the writer's push
    failed ("cannot write heatmaps ...: No such file or directory", seen with 4 processes pushing
    to one field: tests/test_concurrent_fields.py). A `.new-` file lists no files: it goes only once
    stale, as a temp PNG."""
    hm = tmp_path / "hm"
    folder = heatmaps._pending_dir(dataset.name, hm)
    folder.mkdir(parents=True)
    opening = folder / ".new-0123456789abcdef"
    opening.write_bytes(b"")  # created, not locked yet
    assert store.clean_orphans(dataset, hm) == 0 and opening.exists()
    old = time.time() - heatmaps.STALE_TEMP_SECONDS - 60  # its writer died in between, long ago
    os.utime(opening, (old, old))
    assert store.clean_orphans(dataset, hm) == 1 and not opening.exists()
