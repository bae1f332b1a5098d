"""camcore.store.views on a real MongoDB: views as stages, read a page at a time, jumps by id."""
from __future__ import annotations

import random

import fiftyone as fo
import pytest
from fo_helpers import unique_name, write_images

from camcore.errors import StoreError
from camcore.store import views


@pytest.fixture
def repeated(tmp_path):
    """a/frame.jpg, a/other.jpg, b/frame.jpg, c/d/frame.jpg: names that repeat across folders."""
    paths = []
    for folder, names in (("a", ["frame.jpg", "other.jpg"]), ("b", ["frame.jpg"]), ("c/d", ["frame.jpg"])):
        paths += write_images(tmp_path / "data" / folder, names)
    dataset = fo.Dataset(unique_name("views"))
    scores = [0.9, 0.1, 0.5, 0.7]
    dataset.add_samples([
        fo.Sample(filepath=p, uniqueness=s, tags=["val"] if i % 2 else ["train"],
                  predictions=fo.Classification(label="cat" if i < 2 else "dog", confidence=s))
        for i, (p, s) in enumerate(zip(paths, scores, strict=True))])
    yield dataset, paths, str(tmp_path / "data")
    dataset.delete()


def test_every_sample_is_reached_by_position_and_named_by_its_relative_path(repeated):
    dataset, paths, root = repeated
    view = views.build_view(dataset, views.ViewSpec())
    assert views.count(view) == 4
    seen = [views.page(view, i, 1)[0] for i in range(4)]
    assert [p for _i, p in seen] == paths
    assert len({i for i, _p in seen}) == 4
    folder = views.common_folder(dataset)
    assert folder == root
    labels = [views.relative_label(p, folder) for p in paths]
    assert labels == ["a/frame.jpg", "a/other.jpg", "b/frame.jpg", "c/d/frame.jpg"]
    # a page holds the neighbours, in view order
    assert [p for _i, p in views.page(view, 1, 2)] == paths[1:3]


def test_position_of_finds_each_sample_and_refuses_samples_outside_the_view(repeated):
    dataset, paths, _root = repeated
    ids = dataset.values("id")
    plain = views.ViewSpec()
    for k, sid in enumerate(ids):
        assert views.position_of(views.build_view(dataset, plain), plain, sid) == k
    train = views.ViewSpec(tags=("train",))
    tview = views.build_view(dataset, train)
    assert views.position_of(tview, train, ids[2]) == 1
    assert views.position_of(tview, train, ids[1]) is None  # tagged val: not in this view
    assert views.position_of(tview, train, "not-an-id") is None


def test_sort_by_a_field_both_ways_and_positions_follow_the_sort(repeated):
    dataset, paths, _root = repeated
    ids = dataset.values("id")
    assert "uniqueness" in views.sortable_fields(dataset)
    assert "predictions.confidence" in views.sortable_fields(dataset)
    asc = views.ViewSpec(sort_field="uniqueness")
    view = views.build_view(dataset, asc)
    order = [sid for sid, _p in views.page(view, 0, 10)]
    assert order == [ids[1], ids[2], ids[3], ids[0]]
    for k, sid in enumerate(order):
        assert views.position_of(view, asc, sid) == k
    desc = views.ViewSpec(sort_field="predictions.confidence", sort_reverse=True)
    dview = views.build_view(dataset, desc)
    dorder = [sid for sid, _p in views.page(dview, 0, 10)]
    assert dorder == [ids[0], ids[3], ids[2], ids[1]]
    assert views.position_of(dview, desc, ids[2]) == 2
    with pytest.raises(StoreError, match="sort"):
        views.build_view(dataset, views.ViewSpec(sort_field="no_such_field"))


def test_saved_views_and_label_filters_with_confidence(repeated):
    dataset, paths, _root = repeated
    ids = dataset.values("id")
    dataset.save_view("dogs", dataset.match(fo.ViewField("predictions.label") == "dog").sort_by("uniqueness"))
    spec = views.ViewSpec(saved_view="dogs")
    view = views.build_view(dataset, spec)
    assert [i for i, _p in views.page(view, 0, 10)] == [ids[2], ids[3]]
    # A saved view's own order: the position is found (by a scan of ids), not guessed.
    assert views.position_of(view, spec, ids[3]) == 1
    with pytest.raises(StoreError, match="saved view"):
        views.build_view(dataset, views.ViewSpec(saved_view="gone"))
    assert views.has_confidence(dataset, "predictions")
    conf = views.ViewSpec(label_field="predictions", label="cat", confidence=(0.5, 1.0))
    assert [i for i, _p in views.page(views.build_view(dataset, conf), 0, 10)] == [ids[0]]


def test_search_is_server_side_limited_and_case_insensitive(repeated):
    dataset, paths, _root = repeated
    view = views.build_view(dataset, views.ViewSpec())
    found = views.search(view, "FRAME", limit=2)
    assert len(found) == 2 and all("frame" in p for _i, p in found)
    assert [p for _i, p in views.search(view, "/b/")] == [paths[2]]
    assert views.search(view, "   ") == []


def test_app_view_and_selection_round_trip_as_stages(repeated):
    dataset, paths, _root = repeated
    ids = dataset.values("id")
    app_view = dataset.match_tags("val").sort_by("uniqueness", reverse=True)
    spec = views.ViewSpec(app_stages=views.app_view_spec(app_view))
    view = views.build_view(dataset, spec)
    assert [i for i, _p in views.page(view, 0, 10)] == app_view.values("id")
    assert views.app_view_spec(dataset.view()) == ""
    sel = views.ViewSpec(selected=(ids[3], ids[0]))
    assert [i for i, _p in views.page(views.build_view(dataset, sel), 0, 10)] == [ids[3], ids[0]]
    assert views.random_position(4, random.Random(0)) in range(4)


def test_positions_in_a_sorted_view_are_index_counts_and_follow_ties_and_missing_values(tmp_path):
    """Issue 23 design 1: opening a link or a search result in a sorted view finds the sample's
    position by counting on the sort's index (no scan of every sample: MongoDB's profiler), right
    with ties (broken by id in the sort's direction), samples without the field, and a tag filter."""
    [path] = write_images(tmp_path, ["x.png"])
    dataset = fo.Dataset(unique_name("views-sorted-positions"))
    dataset.add_samples([
        fo.Sample(filepath=path, tags=["a" if i % 3 else "b"],
                  **({} if i % 10 == 4 else {"uniqueness": (i * 7 % 5) / 5}))  # ties, and some without
        for i in range(60)])
    asc, desc = views.ViewSpec(sort_field="uniqueness"), views.ViewSpec(sort_field="uniqueness", sort_reverse=True)
    views.create_sort_index(dataset, "uniqueness")
    db = dataset._sample_collection.database
    try:
        for spec in (asc, desc, views.ViewSpec(sort_field="uniqueness", tags=("a",))):
            view = views.build_view(dataset, spec)
            order = [sid for sid, _p in views.page(view, 0, 100)]
            assert len(order) == (40 if spec.tags else 60)
            for k in random.Random(1).sample(range(len(order)), 12):
                assert views.position_of(view, spec, order[k]) == k, (spec, k)
        profiled = []
        for spec in (asc, desc):
            view = views.build_view(dataset, spec)
            order = [sid for sid, _p in views.page(view, 0, 100)]
            k = [i for i, sid in enumerate(order) if i > 20 and dataset[sid].uniqueness is not None][5]
            db.command("profile", 2)
            try:
                assert views.position_of(view, spec, order[k]) == k
            finally:
                db.command("profile", 0)
            profiled += list(db["system.profile"].find({"ns": f"{db.name}.{dataset._sample_collection_name}"}))
            db["system.profile"].drop()
        assert profiled, "nothing profiled"
        scans = [op.get("planSummary") for op in profiled if "COLLSCAN" in str(op.get("planSummary"))]
        assert not scans, f"{len(scans)} of {len(profiled)} reads scanned every sample"
        fetched = [int(op.get("docsExamined", 0)) for op in profiled]
        assert max(fetched) <= 1, f"a read fetched {max(fetched)} samples: a position counted by reading documents"
    finally:
        db["system.profile"].drop()
        dataset.delete()
