"""Issue 12: batch reads its view a page at a time (resume checks included) and Ray shards are the
view's stages plus an _id range, never lists of ids; the view stays a FiftyOne view throughout."""

from __future__ import annotations

import os

import fiftyone as fo
import fiftyone.core.collections as foc
import pytest
from fo_helpers import coded_identity, unique_name, write_images

from camcore import batch, distributed
from camcore.batch import BatchOptions
from camcore.progress import Meter
from camcore.store import scan

MODEL = "efficientnet_lite0"
N = 7


def _field() -> str:
    from camcore.models import get_spec

    return coded_identity(model=MODEL, method="gradcam", layer=get_spec(MODEL).default_layer,
                           target=batch.PREDICTED).field_name


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"p{i}.png" for i in range(N)], size=(40, 48))
    ds = fo.Dataset(unique_name("paging"))
    ds.add_samples([fo.Sample(filepath=p, tags=["odd" if i % 2 else "even"]) for i, p in enumerate(paths)])
    yield ds
    ds.delete()


@pytest.fixture
def reads(monkeypatch):
    """Every values(), select() and raw aggregate read's size: no read may cover more than a page."""
    sizes: list[int] = []
    real_values, real_select = foc.SampleCollection.values, foc.SampleCollection.select

    def values(self, *args, **kwargs):
        out = real_values(self, *args, **kwargs)
        first = (
            out[0]
            if isinstance(out, tuple) or (isinstance(out, list) and out and isinstance(out[0], list))
            else out
        )
        sizes.append(len(first) if isinstance(first, list) else 1)
        return out

    def select(self, sample_ids, *args, **kwargs):
        ids = [sample_ids] if isinstance(sample_ids, str) else list(sample_ids)
        sizes.append(len(ids))
        return real_select(self, ids, *args, **kwargs)

    def counted(real):
        def aggregate(self, *args, **kwargs):  # the store's raw reads (scan.py) and FiftyOne's own
            out = real(self, *args, **kwargs)
            if not isinstance(out, list | tuple):
                out = list(out)
                sizes.append(len(out))
            return out
        return aggregate

    monkeypatch.setattr(foc.SampleCollection, "values", values)
    monkeypatch.setattr(foc.SampleCollection, "select", select)
    for cls in (fo.Dataset, fo.DatasetView):  # each has its own _aggregate
        monkeypatch.setattr(cls, "_aggregate", counted(cls._aggregate))
    return sizes


def test_batch_reads_the_view_in_pages(dataset, monkeypatch, reads):
    monkeypatch.setattr(batch, "PAGE_SIZE", 2, raising=False)
    calls = []
    report = batch.run_batch(
        dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=3), progress=lambda *a: calls.append(a)
    )
    assert (report.done, report.skipped, report.failed) == (N, 0, [])
    assert max(reads) <= 3, reads  # pages of 2, writes of a chunk (3): never the whole view
    assert calls[0][:2] == (0, N) and calls[-1][:2] == (N, N)
    field = _field()
    assert len(dataset.exists(field)) == N

    reads.clear()
    again = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=3))  # resume checks, paged too
    assert (again.done, again.skipped) == (0, N) and max(reads) <= 2


def test_progress_total_shrinks_as_done_samples_are_found(dataset, monkeypatch):
    monkeypatch.setattr(batch, "PAGE_SIZE", 2, raising=False)
    batch.run_batch(dataset.match_tags("even"), BatchOptions(MODEL, methods=["gradcam"]))  # 4 of 7 done
    calls = []
    report = batch.run_batch(
        dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=2), progress=lambda *a: calls.append(a)
    )
    assert (report.done, report.skipped) == (3, 4)
    assert calls[0][:2] == (0, N - 1)  # the view's count less the done samples before the first pending one
    assert calls[-1][:2] == (3, 3)  # exact once every page was read
    assert all(done <= total for done, total, *_ in calls)


def test_a_resumed_run_starts_where_the_killed_one_stopped(dataset, monkeypatch):
    """The done samples before the first pending one are not checked before the first chunk (at
    10^6 samples that took a minute): the server finds where to start; their files are checked
    after the others, and a lost one is computed then."""
    monkeypatch.setattr(batch, "PAGE_SIZE", 2, raising=False)
    ids, paths = dataset.values(["id", "filepath"])  # _id order
    batch.run_batch(dataset.select(ids[:4]), BatchOptions(MODEL, methods=["gradcam"]))
    field = _field()
    os.unlink(dataset[ids[1]][field].map_path)  # a done sample whose file is gone: to compute again
    computed, calls = [], []
    real = batch.explain_many
    monkeypatch.setattr(
        batch,
        "explain_many",
        lambda m, imgs, *a, **k: computed.extend(i.path for i in imgs) or real(m, imgs, *a, **k),
    )
    report = batch.run_batch(
        dataset, BatchOptions(MODEL, methods=["gradcam"], chunk=1), progress=lambda *a: calls.append(a)
    )
    assert computed == paths[4:] + [paths[1]]
    assert (report.done, report.skipped) == (4, 3)
    assert calls[0][:2] == (0, N - 4) and calls[-1][:2] == (4, 4)
    assert all(os.path.isfile(label.map_path) for label in dataset.values(field))


def test_a_view_that_filters_on_the_field_being_written_is_done_once(dataset, monkeypatch):
    """Keyset paging (_id > last): samples written meanwhile drop out of such a view without
    shifting the pages, so none is skipped or computed twice (skip/limit paging would miss some)."""
    monkeypatch.setattr(batch, "PAGE_SIZE", 2, raising=False)
    field = _field()
    batch.run_batch(dataset.limit(1), BatchOptions(MODEL, methods=["gradcam"]))  # declares the field
    computed = []
    real = batch.explain_many
    monkeypatch.setattr(
        batch,
        "explain_many",
        lambda m, imgs, *a, **k: computed.extend(i.path for i in imgs) or real(m, imgs, *a, **k),
    )
    report = batch.run_batch(
        dataset.exists(field, False), BatchOptions(MODEL, methods=["gradcam"], chunk=1)
    )
    assert report.done == N - 1 and len(computed) == N - 1 == len(set(computed))
    assert len(dataset.exists(field)) == N


def test_views_with_their_own_stages_keep_their_meaning(dataset, monkeypatch):
    monkeypatch.setattr(batch, "PAGE_SIZE", 2, raising=False)
    view = dataset.sort_by("filepath", reverse=True).limit(3)  # the last three files by name
    expected = set(view.values("id"))
    report = batch.run_batch(view, BatchOptions(MODEL, methods=["gradcam"], chunk=2))
    assert report.done == 3
    assert set(dataset.exists(_field()).values("id")) == expected


# ---------------------------------------------------------------- Ray shards: stages + _id ranges


def test_shards_cover_the_view_once_and_rebuild_from_stages(dataset):
    view = dataset.match_tags("odd").sort_by("filepath", reverse=True)
    stages = scan.view_stages(view)
    shards = scan.Shards(view, 2)
    cut = []
    while (shard := shards.next()) is not None:
        cut.append(shard)
    assert len(cut) == 2 and cut[0][0] is None and cut[-1][1] is None
    # what a worker does: rebuild the view from its stages, then take its range
    rebuilt = scan.view_from_stages(dataset, stages)
    parts = [scan.id_range(rebuilt, *shard).values("id") for shard in cut]
    assert sorted(i for p in parts for i in p) == sorted(view.values("id"))
    assert all(len(p) <= 2 for p in parts)
    assert [len(p) for p in parts] == [2, 1]


class _FakeRef:
    def __init__(self, value):
        self.value = value


class _FakeRay:
    """Just enough of ray for _dispatch: remote calls run at once."""

    @staticmethod
    def wait(refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    @staticmethod
    def get(ref):
        if isinstance(ref.value, Exception):
            raise ref.value
        return ref.value


class _FakeActor:
    def __init__(self, dataset, die_on: int | None = None):
        self.calls, self.dataset, self.die_on = [], dataset, die_on
        actor = self

        class _Run:
            @staticmethod
            def remote(dataset_name, stages, bounds, options):
                actor.calls.append((dataset_name, stages, bounds))
                if actor.die_on is not None and len(actor.calls) == actor.die_on:
                    return _FakeRef(RuntimeError("actor died"))
                view = scan.id_range(scan.view_from_stages(actor.dataset, stages), *bounds)
                n = len(view.values("id"))
                return _FakeRef(
                    {
                        "done": n,
                        "skipped": 0,
                        "removed_orphans": 0,
                        "failed": [],
                        "fields": ["f"],
                        "cancelled": False,
                    }
                )

        self.run = _Run()


def test_dispatch_sends_stages_and_ranges_never_ids(dataset):
    view = dataset.match_tags("even")  # 4 samples
    stages = scan.view_stages(view)
    actors = [_FakeActor(dataset), _FakeActor(dataset, die_on=1)]
    report = distributed.DistributedReport()
    distributed._dispatch(
        _FakeRay,
        actors,
        dataset.name,
        stages,
        scan.Shards(view, 1),
        {},
        report,
        view.count(),
        Meter(None),
        None,
    )
    sent = [c for a in actors for c in a.calls]
    assert all(s == stages and isinstance(b, tuple) and len(b) == 2 for _n, s, b in sent)
    lost = [sid for sid, reason in report.failed if reason.startswith("worker lost")]
    assert report.done + len(lost) == 4 and len(lost) == 1  # the dead actor's one shard
    assert set(lost) <= set(view.values("id"))


def test_the_stored_label_check_agrees_with_is_done(dataset, tmp_path):
    """Resume checks read labels as stored (dicts, ~200x faster than label objects): the verdict
    must be _is_done's, whatever _is_done and the provenance hold."""
    from camcore.models import load_model

    batch.run_batch(dataset.limit(2), BatchOptions(MODEL, methods=["gradcam"]))
    field = _field()
    model = load_model(MODEL, "auto")
    identity = BatchOptions(MODEL).checked().identity("gradcam", model.spec.default_layer, model)
    job_provenance = batch.resume_provenance(identity)
    first, second, third = dataset.limit(3).values("id")
    dataset.set_values(f"{field}.layer", {second: "another layer"}, key_field="id")  # other provenance
    Path = type(tmp_path)
    Path(dataset[first][field].map_path).rename(tmp_path / "moved.png")  # file gone
    dataset.set_values(f"{field}.map_path", {first: str(tmp_path / "moved.png")}, key_field="id")  # back
    cases = []
    for prov in (job_provenance, {**job_provenance, "method": "layercam"}, {}):
        objects = dataset.values(field)
        stored = dataset.values(field, _raw=True)
        cases += [(scan.is_done(o, prov), scan.stored_done(s, prov)) for o, s in zip(objects, stored)]
    assert all(a == b for a, b in cases), cases
    assert {a for a, _b in cases} == {True, False}  # both verdicts were tried
