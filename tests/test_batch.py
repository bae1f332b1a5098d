"""camcore.batch against a real mongod (conftest.py): bulk writes, resume, orphans, failures, CLI."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import fiftyone as fo
import pytest
from fo_helpers import coded_identity, unique_name, write_images
from warm_processes import CLI

from camcore import batch, store
from camcore.batch import BatchOptions
from camcore.store import sampledocs

MODEL = "efficientnet_lite0"

def _layer() -> str:
    from camcore.models import get_spec

    return get_spec(MODEL).default_layer


def _field(method: str = "gradcam", target: str = batch.PREDICTED) -> str:
    return coded_identity(model=MODEL, method=method, layer=_layer(), target=target).field_name


FIELD = _field()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"img{i}.png" for i in range(5)], size=(40, 48))
    ds = fo.Dataset(unique_name("batch"))
    ds.add_samples([fo.Sample(filepath=p, tags=["good"]) for p in paths])
    yield ds
    ds.delete()


def _files(ds: fo.Dataset, field: str) -> set[str]:
    folder = store.heatmap_path(ds.name, field, "x").parent
    return {str(p) for p in folder.iterdir()} if folder.is_dir() else set()


def test_batch_writes_every_sample_then_skips_all(dataset):
    calls = []
    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=2), progress=lambda *a: calls.append(a))
    assert (report.done, report.skipped, report.failed) == (5, 0, [])
    assert report.fields == {FIELD}
    labels = dataset.values(FIELD)
    assert all(isinstance(label, fo.Heatmap) for label in labels)
    assert all(os.path.isfile(label.map_path) for label in labels)
    first = labels[0]
    assert first.target_request == "predicted" and first.method == "gradcam" and first.target  # a class name
    assert _files(dataset, FIELD) == {label.map_path for label in labels}
    # progress: total 5, done rises to 5, a rate once something is done
    assert calls[0][:2] == (0, 5) and calls[-1][0] == 5 and calls[-1][2] > 0

    again = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=2))
    assert (again.done, again.skipped) == (0, 5)
    assert dataset.values(f"{FIELD}.created_at") == [label.created_at for label in labels]

    # other provenance (eigen smoothing): recomputed, same field
    other = batch.run_batch(dataset.limit(2), BatchOptions(MODEL, methods=["gradcam"], eigen_smooth=True))
    assert (other.done, other.skipped) == (2, 0)


def test_named_class_has_its_own_field(dataset):
    report = batch.run_batch(dataset.limit(1), BatchOptions(MODEL, methods=["gradcam"], target_rule="tabby"))
    assert report.fields == {_field(target="tabby")}
    assert dataset.first()[next(iter(report.fields))].target == "tabby"


class Killed(Exception):
    pass


def test_killed_run_resumes_without_recompute_and_leaves_no_orphans(dataset, monkeypatch):
    def die_after_first_write(done, total, rate, eta, message):
        if done >= 2:
            raise Killed()

    with pytest.raises(Killed):
        batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=2), progress=die_after_first_write)
    done_ids = [sid for sid, label in zip(*dataset.values(["id", FIELD])) if label is not None]
    assert len(done_ids) == 2
    created = dataset.select(done_ids).values(f"{FIELD}.created_at")

    # A crash between the files and the field: PNGs written, the labels' write never reached.
    real = store.push_many

    def crash(ds, items, **kw):
        orig_write = sampledocs.write
        monkeypatch.setattr(sampledocs, "write", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        try:
            return real(ds, items, **kw)
        finally:
            monkeypatch.setattr(sampledocs, "write", orig_write)

    monkeypatch.setattr(store, "push_many", crash)
    with pytest.raises(Killed):
        batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=1))
    monkeypatch.setattr(store, "push_many", real)
    orphans = _files(dataset, FIELD) - set(dataset.exists(FIELD).values(f"{FIELD}.map_path"))
    assert len(orphans) == 1  # the file of a sample whose field was never written

    computed = []
    real_explain_many = batch.explain_many
    monkeypatch.setattr(batch, "explain_many",
                        lambda m, imgs, *a, **k: computed.extend(i.path for i in imgs) or real_explain_many(m, imgs, *a, **k))
    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=2))
    assert (report.done, report.skipped, report.removed_orphans) == (3, 2, 1)
    assert len(computed) == 3
    assert dataset.select(done_ids).values(f"{FIELD}.created_at") == created  # not recomputed
    assert _files(dataset, FIELD) == set(dataset.values(f"{FIELD}.map_path"))


def test_cancel_stops_between_chunks_and_keeps_what_was_computed(dataset):
    cancel = threading.Event()

    def cancel_on_first_write(done, total, rate, eta, message):
        if done >= 1:
            cancel.set()

    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=1), progress=cancel_on_first_write, cancel=cancel)
    # A chunk's write finishes while the next chunk computes: that one is written too, no more.
    assert report.cancelled and 1 <= report.done <= 2
    assert len(dataset.exists(FIELD)) == report.done
    assert _files(dataset, FIELD) == set(dataset.exists(FIELD).values(f"{FIELD}.map_path"))


def test_unreadable_image_is_reported_and_the_rest_written(dataset, tmp_path):
    bad = tmp_path / "media" / "broken.png"
    bad.write_bytes(b"not a png at all")
    sample = fo.Sample(filepath=str(bad))
    dataset.add_sample(sample)
    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=4))
    assert report.done == 5
    assert [sid for sid, _msg in report.failed] == [sample.id]
    assert "broken.png" in report.failed[0][1] or "image" in report.failed[0][1].lower()
    assert dataset[sample.id][FIELD] is None
    assert not [f for f in _files(dataset, FIELD) if Path(f).name.startswith(sample.id)]  # no file of it


def test_unknown_class_fails_before_any_write(dataset):
    from camcore.errors import TargetError

    with pytest.raises(TargetError):
        batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], target_rule="no such class xyz"))
    assert FIELD not in dataset.get_field_schema()


def test_cli_batch_json(dataset, fork_server):
    dataset.persistent = True  # the CLI's process loads it by name
    proc = fork_server.run(CLI, ["batch", "--dataset", dataset.name, "--tag", "good", "--filename-contains", "img1",
                                 "--model", MODEL, "--method", "gradcam", "--json"], dict(os.environ), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["done"], out["skipped"], out["failed"]) == (1, 0, [])
    assert out["fields"] == [FIELD]
    assert "/s" in proc.stderr and "ETA" in proc.stderr
    dataset.reload()
    assert len(dataset.exists(FIELD)) == 1


def test_orphan_cleanup_never_touches_a_live_writers_file(dataset):
    """Two writers on one field: a run never deletes the file another writer has just written (its
    set_values still to come: its journal is locked), nor a fresh temp file; once that writer is
    gone without writing its label, the next run's clean-up deletes its file."""
    first, second = dataset.values("id")[:2]
    live = store.HeatmapWriter(dataset.name)
    in_flight = store.heatmap_path(dataset.name, FIELD, first, write_id="0ther0")
    live.record([str(in_flight)], [])
    in_flight.parent.mkdir(parents=True, exist_ok=True)
    in_flight.write_bytes(b"another writer's PNG")
    fresh_tmp, stale_tmp = live.folder / ".tmp-fresh.png", live.folder / ".tmp-stale.png"
    fresh_tmp.write_bytes(b"x")
    stale_tmp.write_bytes(b"x")
    old = os.path.getmtime(stale_tmp) - batch.STALE_TEMP_SECONDS - 60
    os.utime(stale_tmp, (old, old))

    report = batch.run_batch(dataset.select(second), BatchOptions(MODEL, methods=["gradcam"]))
    assert report.done == 1 and report.removed_orphans == 1  # the stale temp file only
    assert in_flight.read_bytes() == b"another writer's PNG" and fresh_tmp.exists()
    assert not stale_tmp.exists()

    live.close(ok=False)  # that writer stops before its set_values: its journal stays, unlocked
    report = batch.run_batch(dataset.select(first), BatchOptions(MODEL, methods=["gradcam"]))
    assert report.done == 1 and report.removed_orphans == 1
    assert not in_flight.exists() and os.path.isfile(dataset[first][FIELD].map_path)
    assert _files(dataset, FIELD) == set(dataset.exists(FIELD).values(f"{FIELD}.map_path"))


# ---------------------------------------------------------------- progress, cancel and failures inside a chunk


def test_progress_moves_per_sample_within_a_chunk(dataset, monkeypatch):
    """A slow method (Score-CAM) took minutes per chunk: progress must not wait for the chunk."""
    import time

    from camcore import engine

    monkeypatch.setattr(batch, "FLUSH_SECONDS", 0.05)
    monkeypatch.setattr(batch, "PROGRESS_INTERVAL", 0.0)
    real_heatmap, real_push = engine.Explainer.heatmap, store.push_many
    writes = []
    monkeypatch.setattr(store, "push_many", lambda ds, items, **k: writes.append(len(items)) or real_push(ds, items, **k))

    def slow_heatmap(self, *a, **k):  # slower than FLUSH_SECONDS, as Score-CAM's are
        time.sleep(0.1)
        return real_heatmap(self, *a, **k)

    monkeypatch.setattr(engine.Explainer, "heatmap", slow_heatmap)
    calls = []
    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=8), progress=lambda *a: calls.append(a))
    assert report.done == 5
    assert {c[0] for c in calls} >= {1, 2, 3, 4, 5}  # written (and reported) sample by sample
    # a rate and an ETA before anything is written: from the heatmaps computed so far
    assert any(done == 0 and rate > 0 and eta is not None for done, _t, rate, eta, _m in calls), calls[:4]
    assert len(dataset.exists(FIELD)) == 5 and writes == [1, 1, 1, 1, 1]


def test_fast_samples_are_still_written_once_per_chunk(dataset, monkeypatch):
    real_push = store.push_many
    writes = []
    monkeypatch.setattr(store, "push_many", lambda ds, items, **k: writes.append(len(items)) or real_push(ds, items, **k))
    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=3))
    assert report.done == 5 and writes == [3, 2]  # one bulk write per chunk


def test_cancel_takes_effect_at_the_next_heatmap_and_counts_what_was_written(dataset, monkeypatch):
    from camcore import engine
    from camcore.errors import Cancelled

    cancel = threading.Event()
    seen = []
    real = engine.Explainer.heatmap

    def heatmap(self, method, layer, eigen_smooth=False, progress=None, cancel_event=None):
        seen.append(cancel_event)
        if len(seen) == 3:  # Cancel pressed while the third heatmap computes (a perturbation method's loop)
            cancel.set()
            raise Cancelled("Score-CAM cancelled.")
        return real(self, method, layer, eigen_smooth, progress, cancel_event)

    monkeypatch.setattr(engine.Explainer, "heatmap", heatmap)
    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=8), cancel=cancel)
    assert seen[0] is cancel  # the engine gets the cancel: Score-CAM/Ablation-CAM stop inside
    assert len(seen) == 3  # not the whole chunk of 5
    assert report.cancelled and report.failed == []  # a cancel is no failure
    assert report.done == 2 == len(dataset.exists(FIELD))  # the computed ones are written and counted
    assert _files(dataset, FIELD) == set(dataset.exists(FIELD).values(f"{FIELD}.map_path"))

    again = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=8))  # resumes
    assert (again.done, again.skipped) == (3, 2)


def test_a_sample_that_fails_validation_fails_alone(dataset):
    """One bad sample (metadata that disagrees with its file) used to abort the batch, every rerun."""
    bad = dataset.first()
    bad.metadata = fo.ImageMetadata(width=999, height=77)
    bad.save()
    report = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=8))
    assert report.done == 4
    assert [sid for sid, _m in report.failed] == [bad.id]
    assert "77x999" in report.failed[0][1]
    assert dataset[bad.id][FIELD] is None
    assert not [f for f in _files(dataset, FIELD) if Path(f).name.startswith(bad.id)]  # no file of it
    assert len(dataset.exists(FIELD)) == 4
    again = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=8))
    assert (again.done, again.skipped, len(again.failed)) == (0, 4, 1)


def test_a_database_error_still_aborts(dataset, monkeypatch):
    from camcore.errors import StoreError

    def down(*a, **k):
        raise StoreError("cannot reach the FiftyOne database")

    monkeypatch.setattr(store, "push_many", down)
    with pytest.raises(StoreError):
        batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=2))


def test_a_rerun_that_skips_everything_still_lists_its_fields(dataset):
    batch.run_batch(dataset.limit(2), BatchOptions(MODEL, methods=["gradcam"]))
    again = batch.run_batch(dataset.limit(2), BatchOptions(MODEL, methods=["gradcam"]))
    assert (again.done, again.skipped) == (0, 2)
    assert again.fields == {FIELD} and again.to_dict()["fields"] == [FIELD]


def test_a_stopped_resumed_run_counts_what_earlier_runs_saved(dataset):
    """Issue 23 bug 2: a resumed run starts after what the last run wrote and checks those samples
    at its end; cancelled before, it said "17 of 24792 saved (17 written, 0 done already)" while
    FiftyOne held 102. Every saved sample is counted: written now, skipped, or done before."""
    def cancel_after(n: int):
        cancel = threading.Event()

        def progress(done, total, rate, eta, message):
            if done >= n:
                cancel.set()
        return cancel, progress

    cancel, progress = cancel_after(1)
    first = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=1), progress=progress,
                            cancel=cancel)
    assert first.cancelled and first.done >= 1 and first.done_before == 0
    before = len(dataset.exists(FIELD))
    cancel, progress = cancel_after(1)
    again = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=1), progress=progress,
                            cancel=cancel)
    assert again.cancelled and again.done >= 1
    saved = len(dataset.exists(FIELD))
    assert again.done + again.skipped + again.done_before == saved
    assert again.skipped + again.done_before == before  # what the first run saved, counted as done already
    assert again.to_dict()["done_before"] == again.done_before
