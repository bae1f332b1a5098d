"""camcore.store.seek on a real MongoDB: a page of a sorted view read from a neighbour's key or
from the nearer end is exactly the page the skip reads, and walks O(page) index keys."""
from __future__ import annotations

import random

import fiftyone as fo
import pytest
from fo_helpers import unique_name, write_images

from camcore.store import seek, views

SIZE = 7  # a small page: many boundaries


@pytest.fixture
def scored(tmp_path):
    """150 samples: ties on the sort field, some without it, two tags."""
    [path] = write_images(tmp_path, ["x.png"])
    dataset = fo.Dataset(unique_name("seek"))
    dataset.add_samples([
        fo.Sample(filepath=path, tags=["a" if i % 3 else "b"],
                  **({} if i % 10 == 4 else {"uniqueness": (i * 7 % 11) / 11}))
        for i in range(150)])
    views.create_sort_index(dataset, "uniqueness")
    yield dataset
    dataset.delete()


SPECS = [views.ViewSpec(sort_field="uniqueness"), views.ViewSpec(sort_field="uniqueness", sort_reverse=True),
         views.ViewSpec(sort_field="uniqueness", tags=("a",)),
         views.ViewSpec(sort_field="uniqueness", tags=("b",), sort_reverse=True)]


def _check_every_page(dataset: fo.Dataset, specs: list[views.ViewSpec] = SPECS) -> None:
    """At every page boundary, ▶ (from the page before), ◀ (from the page after) and a jump (no
    neighbour) read exactly what the skip reads."""
    for spec in specs:
        view = views.build_view(dataset, spec)
        total = views.count(view)
        for start in range(0, total, SIZE):
            want = views.page(view, start, SIZE)
            assert seek.page_at(view, spec, start, SIZE) == want, (spec, start, "jump")
            if start:
                prev = views.page(view, start - SIZE, SIZE)
                assert seek.page_at(view, spec, start, SIZE, after=prev[-1][0]) == want, (spec, start, "next")
            if start + SIZE < total:
                nxt = views.page(view, start + SIZE, SIZE)
                assert seek.page_at(view, spec, start, SIZE, before=nxt[0][0]) == want, (spec, start, "prev")


def test_every_page_equals_the_skip_with_ties_missing_values_and_filters_and_after_changes(scored):
    _check_every_page(scored)
    # inserts, deletes and changes of the sort field: each read is afresh, so still exact
    [path] = scored.limit(1).values("filepath")
    scored.add_samples([fo.Sample(filepath=path, tags=["a"], uniqueness=0.5) for _ in range(9)]
                       + [fo.Sample(filepath=path, tags=["b"]) for _ in range(4)])
    ids = scored.values("id")
    scored.delete_samples(random.Random(2).sample(ids, 11))
    rng = random.Random(3)
    changed = rng.sample(scored.values("id"), 30)
    scored.select(changed).set_values("uniqueness", [rng.choice([None, 0.5, rng.random()]) for _ in changed])
    _check_every_page(scored)


@pytest.mark.parametrize("odd", ["zzz", float("nan")])
def test_values_a_range_would_miss_fall_back_to_the_skip(scored, odd):
    """A string among the floats sorts after every number, NaN before every number; a range from
    a float matches neither."""
    coll = scored._sample_collection
    coll.update_one({"_id": scored.first()._id}, {"$set": {"uniqueness": odd}})
    _check_every_page(scored)


def _examined(dataset: fo.Dataset, read, what: str = "keysExamined") -> int:
    """The most index keys (or, what="docsExamined", documents) one of read's operations on the
    dataset's samples examined (MongoDB's profiler)."""
    db = dataset._sample_collection.database
    db["system.profile"].drop()
    db.command("profile", 2)
    try:
        read()
    finally:
        db.command("profile", 0)
    ops = list(db["system.profile"].find({"ns": f"{db.name}.{dataset._sample_collection_name}"}))
    db["system.profile"].drop()
    assert ops, "nothing profiled"
    return max(int(op.get(what, 0)) for op in ops)


def test_next_previous_and_last_walk_a_page_of_keys_not_the_position(tmp_path):
    """Issue 23 design 1: the skip walks every index key before the position; ▶/◀ across a page
    boundary and the jump to the last page walk O(page) (MongoDB's profiler)."""
    [path] = write_images(tmp_path, ["x.png"])
    dataset = fo.Dataset(unique_name("seek-keys"))
    rng = random.Random(5)
    dataset.add_samples([fo.Sample(filepath=path, uniqueness=rng.random()) for _ in range(1200)])
    views.create_sort_index(dataset, "uniqueness")
    start, last = 600 - 600 % views.PAGE_SIZE, 1200 - views.PAGE_SIZE
    try:
        for spec in SPECS[:2]:
            view = views.build_view(dataset, spec)
            prev = views.page(view, start - views.PAGE_SIZE)
            nxt = views.page(view, start + views.PAGE_SIZE)
            assert _examined(dataset, lambda v=view: views.page(v, start)) >= start  # what skip costs
            for kw in ({"after": prev[-1][0]}, {"before": nxt[0][0]}):
                keys = _examined(dataset, lambda v=view, s=spec, k=kw: seek.page_at(v, s, start, **k))
                assert keys <= 4 * views.PAGE_SIZE, (spec, kw, keys)
            assert seek.page_at(view, spec, last) == views.page(view, last)
            assert _examined(dataset, lambda v=view, s=spec: seek.page_at(v, s, last)) <= 4 * views.PAGE_SIZE
    finally:
        dataset.delete()


def test_a_sorted_whole_dataset_is_counted_from_its_metadata(scored):
    """A new sort at 10^6 counted every sample (0.6 s): an order keeps every sample, so the count
    is the whole dataset's, read from the collection's metadata (no key, no document read)."""
    view = views.build_view(scored, views.ViewSpec(sort_field="uniqueness", sort_reverse=True))
    db = scored._sample_collection.database
    db["system.profile"].drop()
    db.command("profile", 2)
    try:
        assert views.count(view) == 150
    finally:
        db.command("profile", 0)
    ops = list(db["system.profile"].find({"ns": {"$regex": f"^{db.name}\\.{scored._sample_collection_name}"}}))
    db["system.profile"].drop()
    assert not [op for op in ops if op.get("keysExamined") or op.get("docsExamined")], ops
    assert views.count(views.build_view(scored, views.ViewSpec(sort_field="uniqueness", tags=("a",)))) == 100


# -- an unsorted view whose stages filter: ▶ resumes the collection scan after the page's last record


def _unsorted_specs(dataset: fo.Dataset) -> list[views.ViewSpec]:
    from fiftyone import ViewField as F

    if "high" not in dataset.list_saved_views():  # FiftyOne's `$expr`: no index serves it
        dataset.save_view("high", dataset.match(F("uniqueness") > 0.5))
    return [views.ViewSpec(), views.ViewSpec(tags=("a",)), views.ViewSpec(saved_view="high"),
            views.ViewSpec(saved_view="high", tags=("b",))]


def _check_every_next(dataset: fo.Dataset) -> None:
    _check_every_page(dataset, _unsorted_specs(dataset))


def test_next_in_an_unsorted_filtered_view_equals_the_skip_after_changes(scored):
    _check_every_next(scored)
    [path] = scored.limit(1).values("filepath")
    scored.add_samples([fo.Sample(filepath=path, tags=["a"], uniqueness=0.9) for _ in range(9)])
    scored.delete_samples(random.Random(4).sample(scored.values("id"), 11))
    rng = random.Random(6)
    changed = rng.sample(scored.values("id"), 30)
    scored.select(changed).set_values("uniqueness", [rng.choice([None, 0.2, 0.8]) for _ in changed])
    _check_every_next(scored)
    scored._sample_collection.create_index([("tags", 1)], name="tags_only")  # the tag filter's order: the index's
    _check_every_next(scored)


def test_next_in_a_saved_filter_reads_a_page_of_documents_not_the_position(tmp_path):
    """Issue 23: a saved view `F(...) > x` cost 1.7 s a page at 10^6: the skip evaluates the filter
    on every document before the position; ▶ resumes after the page's last record."""
    from fiftyone import ViewField as F

    [path] = write_images(tmp_path, ["x.png"])
    dataset = fo.Dataset(unique_name("seek-scan"))
    rng = random.Random(7)
    dataset.add_samples([fo.Sample(filepath=path, uniqueness=rng.random()) for _ in range(1200)])
    dataset.save_view("high", dataset.match(F("uniqueness") > 0.5))
    spec = views.ViewSpec(saved_view="high")
    try:
        view = views.build_view(dataset, spec)
        start = 480
        prev = views.page(view, start - views.PAGE_SIZE)
        assert _examined(dataset, lambda: views.page(view, start), "docsExamined") >= 2 * start * 0.8  # what skip costs
        assert seek.page_at(view, spec, start, after=prev[-1][0]) == views.page(view, start)
        docs = _examined(dataset, lambda: seek.page_at(view, spec, start, after=prev[-1][0]), "docsExamined")
        assert docs <= 4 * views.PAGE_SIZE, docs
        # with the sort's index MongoDB serves the filter from it (the view takes its order, and the
        # skip fetches every document before the position): ▶ continues from the page's last key
        views.create_sort_index(dataset, "uniqueness")
        view = views.build_view(dataset, spec)
        prev = views.page(view, start - views.PAGE_SIZE)
        assert _examined(dataset, lambda: views.page(view, start), "docsExamined") >= start
        assert seek.page_at(view, spec, start, after=prev[-1][0]) == views.page(view, start)
        docs = _examined(dataset, lambda: seek.page_at(view, spec, start, after=prev[-1][0]), "docsExamined")
        assert docs <= 4 * views.PAGE_SIZE, docs
        nxt = views.page(view, start + views.PAGE_SIZE)  # ◀ too, from the key of the page after
        assert seek.page_at(view, spec, start, before=nxt[0][0]) == views.page(view, start)
        docs = _examined(dataset, lambda: seek.page_at(view, spec, start, before=nxt[0][0]), "docsExamined")
        assert docs <= 4 * views.PAGE_SIZE, docs
    finally:
        dataset.delete()


def test_next_falls_back_to_the_skip_where_the_server_refuses_to_resume_a_scan(scored, monkeypatch):
    """`$_resumeAfter` is an internal find option: a managed or older MongoDB may refuse it (a
    refusal is stood in for here: this MongoDB accepts it). ▶ then reads the page by the skip."""
    import pymongo.database
    import pymongo.errors

    command = pymongo.database.Database.command
    refused = []

    def refusing(self, cmd, *args, **kwargs):
        if "$_resumeAfter" in kwargs:
            refused.append(cmd)
            raise pymongo.errors.OperationFailure("unrecognized field '$_resumeAfter'", code=9)
        return command(self, cmd, *args, **kwargs)

    monkeypatch.setattr(pymongo.database.Database, "command", refusing)
    spec = views.ViewSpec(tags=("a",))
    view = views.build_view(scored, spec)
    first, second = views.page(view, 0, SIZE), views.page(view, SIZE, SIZE)
    assert seek.page_at(view, spec, SIZE, SIZE, after=first[-1][0]) == second
    assert refused, "the resume was not tried: this test checks nothing"
