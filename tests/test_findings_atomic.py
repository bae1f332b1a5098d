"""Findings are atomic updates of the one sample: a tag or a finding that another writer (the
FiftyOne App, another process) adds meanwhile is never lost. Findings keep the explorer URL they
were made at, and the Findings page reads them a page at a time."""
from __future__ import annotations

import textwrap
import time

import fiftyone as fo
import pytest
from fo_helpers import unique_name, write_images
from warm_processes import WarmPool

from camcore import store
from camcore.errors import StoreError
from camcore.store import findings


@pytest.fixture
def dataset(tmp_path):
    files = write_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    ds = fo.Dataset(unique_name("findings"))
    ds.add_samples([fo.Sample(filepath=p, tags=["train"]) for p in files])
    yield ds
    ds.delete()


def _foreign_finding(label: str) -> dict:
    """A finding as another writer stores it (FiftyOne's own document form)."""
    return fo.Classification(label=label, note="from elsewhere").to_mongo()


def test_a_tag_and_a_finding_added_meanwhile_are_kept(dataset, monkeypatch):
    """Between our read of the sample and our write, another writer (here: a direct MongoDB
    update, as the App or another process makes) adds a tag and a finding."""
    sample = dataset.first()
    store.add_finding(dataset, sample.id, "good focus")  # the findings list exists already
    real_ready = findings._findings_field_ready

    def ready_then_someone_else_writes(ds):
        real_ready(ds)
        dataset._sample_collection.update_one(
            {"_id": sample._id},
            {"$addToSet": {"tags": "app:reviewed"},
             "$push": {store.FINDINGS_FIELD + ".classifications": _foreign_finding("theirs")}})

    monkeypatch.setattr(findings, "_findings_field_ready", ready_then_someone_else_writes)
    store.add_finding(dataset, sample.id, "background bias", note="ours")

    doc = dataset._sample_collection.find_one({"_id": sample._id})
    assert "app:reviewed" in doc["tags"], doc["tags"]
    assert {"train", "cam:good-focus", "cam:background-bias"} <= set(doc["tags"]), doc["tags"]
    labels = [c["label"] for c in doc[store.FINDINGS_FIELD]["classifications"]]
    assert sorted(labels) == ["background bias", "good focus", "theirs"], labels
    # The in-process singleton sees the write (no stale copy for the next save to undo).
    assert "app:reviewed" in sample.tags and len(sample[store.FINDINGS_FIELD].classifications) == 3


def test_the_first_finding_of_a_sample_keeps_a_tag_added_meanwhile(dataset, monkeypatch):
    sample = dataset.first()
    real_ready = findings._findings_field_ready

    def ready_then_tag(ds):
        real_ready(ds)
        dataset._sample_collection.update_one({"_id": sample._id}, {"$addToSet": {"tags": "app:new"}})

    monkeypatch.setattr(findings, "_findings_field_ready", ready_then_tag)
    store.add_finding(dataset, sample.id, "spurious edges")
    dataset.reload()
    assert {"train", "app:new", "cam:spurious-edges"} <= set(dataset[sample.id].tags)
    assert [f["tag"] for f in store.list_findings(dataset)] == ["spurious edges"]
    # FiftyOne reads what we wrote as its own label type.
    value = dataset[sample.id][store.FINDINGS_FIELD]
    assert isinstance(value, fo.Classifications) and isinstance(value.classifications[0], fo.Classification)


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import fiftyone as fo
    from camcore import store
    ds = fo.load_dataset(os.environ["DATASET"])
    sid, who, n = os.environ["SAMPLE"], sys.argv[1], int(os.environ["N"])
    while time.time() < float(os.environ["START"]):  # start together
        time.sleep(0.005)
    for i in range(n):
        store.add_finding(ds, sid, f"{who} {i}", note=f"by {who}")
    print("done", flush=True)
    """
)


def test_two_processes_and_a_tagger_at_once_lose_nothing(dataset):
    sample = dataset.first()
    n = 15
    start = time.time() + 1.0  # the pool is warm: a second is plenty
    pool = WarmPool(2)  # two real processes, forked from one that imported FiftyOne once
    try:
        pool.send(WRITER, ["alpha", "beta"], {"DATASET": dataset.name, "SAMPLE": sample.id, "N": str(n),
                                              "START": str(start)})
        # Meanwhile, a third writer tags the same sample, as someone in the App would.
        while time.time() < start:
            time.sleep(0.005)
        for i in range(3 * n):
            dataset._sample_collection.update_one({"_id": sample._id}, {"$addToSet": {"tags": f"app:{i}"}})
        outs = pool.collect(2)
    finally:
        pool.close()
    assert all(not o.error and "done" in o.out for o in outs), [o.error[-3000:] for o in outs]
    doc = dataset._sample_collection.find_one({"_id": sample._id})
    labels = [c["label"] for c in doc[store.FINDINGS_FIELD]["classifications"]]
    assert sorted(labels) == sorted(f"{who} {i}" for who in ("alpha", "beta") for i in range(n)), labels
    tags = set(doc["tags"])
    assert {f"app:{i}" for i in range(3 * n)} <= tags, sorted({f"app:{i}" for i in range(3 * n)} - tags)
    assert {f"cam:{who}-{i}" for who in ("alpha", "beta") for i in range(n)} <= tags
    assert len(doc["tags"]) == len(tags), "a tag was added twice"


def test_a_finding_keeps_its_url(dataset):
    sample = dataset.first()
    url = f"http://localhost:8501/explore?dataset={dataset.name}&sample={sample.id}&model=efficientnet_lite0"
    store.add_finding(dataset, sample.id, "good focus", note="n", url=url)
    store.add_finding(dataset, sample.id, "misclassification")
    with_url, without = store.list_findings(dataset)
    assert with_url["url"] == url and without["url"] is None
    dataset.reload()
    assert dataset[sample.id][store.FINDINGS_FIELD].classifications[0]["url"] == url
    assert dataset.get_field(store.FINDINGS_FIELD + ".classifications.url") is not None  # the App lists it
    # A link in the Findings page: only the explorer's own kinds of address.
    for bad in ("javascript:alert(1)", "data:text/html,x", "file:///etc/passwd"):
        with pytest.raises(StoreError, match="http"):
            store.add_finding(dataset, sample.id, "good focus", url=bad)
    assert store.count_findings(dataset) == 2


def test_findings_page_by_page(dataset, monkeypatch):
    a, b, c = dataset.values("id")
    for sid, k in ((a, 3), (b, 0), (c, 4)):
        for i in range(k):
            store.add_finding(dataset, sid, "good focus", note=f"{sid[-4:]}-{i}")
    every = store.list_findings(dataset)
    expected = [f"{a[-4:]}-{i}" for i in range(3)] + [f"{c[-4:]}-{i}" for i in range(4)]
    assert [f["note"] for f in every] == expected
    assert store.count_findings(dataset) == 7
    # Pages are read on the server: never every sample's findings (values() reads them all).
    monkeypatch.setattr(fo.Dataset, "values", lambda *args, **kw: pytest.fail("read every finding"))
    monkeypatch.setattr(fo.DatasetView, "values", lambda *args, **kw: pytest.fail("read every finding"))
    assert store.list_findings(dataset, skip=0, limit=2) == every[:2]
    assert store.list_findings(dataset, skip=2, limit=2) == every[2:4]
    assert store.list_findings(dataset, skip=6, limit=5) == every[6:]
    assert store.list_findings(dataset, skip=7) == [] and store.list_findings(dataset, limit=0) == []
    assert store.list_findings(dataset, skip=5) == every[5:]
    view = dataset.select([c])
    assert store.count_findings(view) == 4 and store.list_findings(view, skip=1, limit=2) == every[4:6]
    with pytest.raises(StoreError, match="skip"):
        store.list_findings(dataset, skip=-1)


def test_no_findings_yet(dataset):
    assert store.count_findings(dataset) == 0 and store.list_findings(dataset, limit=10) == []
