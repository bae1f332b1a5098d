"""Issue 22 item 1: a push costs the same on a dataset with a few CAM fields and with many.

Measured by what the push does, not by wall time: the operations MongoDB's own profiler records
for the push (how many, of which kind, and the bytes of the commands sent) and the number of
Python function calls the push makes. A push that again parses the whole schema, converts or
rewrites the whole App config, or reloads every field of an in-memory sample does work that
grows with the fields, and this fails.
"""
from __future__ import annotations

import copy
import sys
from collections import Counter
from datetime import UTC, datetime

import bson
import fiftyone as fo
import fiftyone.core.odm as foo
import pytest
from bson import json_util
from fo_helpers import make_heatmap, make_result, unique_name, write_images

from camcore import store
from camcore.store import leases
from camcore.store.datasets import MARK

SIZE = (24, 32)
FEW, MANY = 4, 160


def _fill(ds: fo.Dataset, count: int) -> None:
    """`count` CAM fields as our pushes declare them (schema entry, registry, colour scale, sidebar
    path) and a label in each on every sample: copies of one pushed field, written raw (seconds)."""
    h = make_heatmap(SIZE, "gradcam", layer="seed")
    store.push_heatmaps(ds, ds.first().id, make_result(SIZE, [h]))
    conn = foo.get_db_conn().datasets
    doc = conn.find_one({"_id": ds._doc.id})
    seed = next(f for f in doc["sample_fields"] if f["name"] == h.field)
    registry = dict(doc["info"][MARK]["fields"])
    entries, names = [], []
    for i in range(count - 1):
        entry = copy.deepcopy(seed)
        entry["name"] = entry["db_field"] = f"{h.field}_{i:04d}"
        entry["info"][MARK]["layer"] = f"seed{i}"
        entries.append(entry)
        names.append(entry["name"])
        registry[entry["name"]] = dict(entry["info"][MARK])
    app = doc["app_config"]
    app["color_scheme"]["colorscales"] += [{"path": n, "name": "jet"} for n in names]
    next(g for g in app["sidebar_groups"] if g["name"] == "CAM heatmaps")["paths"] += names
    conn.update_one({"_id": ds._doc.id}, {"$push": {"sample_fields": {"$each": entries}},
                                          "$set": {f"info.{MARK}.fields": registry, "app_config": app}})
    label = ds._sample_collection.find_one({"_id": ds.first()._id})[h.field]
    ds._sample_collection.update_many({}, {"$set": {n: label for n in [h.field, *names]}})
    ds.reload()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    out = {}
    for n in (FEW, MANY):
        files = write_images(tmp_path_factory.mktemp(f"img{n}"), [f"{i}.png" for i in range(3)], size=SIZE)
        ds = fo.Dataset(unique_name(f"scale{n}"))
        ds.add_samples([fo.Sample(filepath=p) for p in files])
        ds.compute_metadata()
        _fill(ds, n)
        out[n] = ds
    yield out
    for ds in out.values():
        ds.delete()


def _profiled(db, start: datetime, ds: fo.Dataset) -> list[dict]:
    """The profiler's entries since `start`, less those of other processes. The profiler sees the
    whole database, and other processes of this worker use it meanwhile: an explorer watching an
    App's scheme reads its dataset's document by name each second (once counted as a push's second
    read of the datasets collection: a whole run red at 1 of 6); an App server's notification
    service polls FiftyOne's execution store (once counted as a push's command on it: CI red on
    7777502). Left out: FiftyOne's execution store (a push never uses it), other datasets' samples,
    dataset documents named or keyed otherwise, and leases on keys that are not this dataset's."""
    ours = {"name": ds.name, "_id": ds._doc.id}

    def other(entry: dict) -> bool:
        collection = str(entry.get("ns", "")).split(".", 1)[-1]
        command = entry.get("command") or {}
        found = command.get("filter") or command.get("query") or command.get("q") or {}
        if collection == "execution_store":
            return True
        if collection.startswith("samples."):
            return collection != ds._sample_collection_name
        if collection == "datasets":
            return any(key in found and found[key] != value for key, value in ours.items())
        if collection == leases.COLLECTION:
            return str(ds._doc.id) not in json_util.dumps(command)
        return False

    return [e for e in db["system.profile"].find({"ts": {"$gte": start.replace(tzinfo=None)}}) if not other(e)]


def _push_measured(ds: fo.Dataset, tag: str, heatmap_dir) -> tuple[Counter, int, int]:
    """Push 3 new fields to a sample held in memory (as the app holds it): (operations per kind
    and collection, bytes of the commands sent, Python calls)."""
    sample = ds[ds.skip(1).first().id]  # a Sample in memory (FiftyOne keeps it current), a label in every field
    maps = [make_heatmap(SIZE, "gradcam", layer=f"{tag}{k}", seed=k) for k in range(3)]
    result = make_result(SIZE, maps)
    db = foo.get_db_conn()
    db.command("profile", 2)
    start = datetime.now(UTC)
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        store.push_heatmaps(ds, sample.id, result, heatmap_dir=heatmap_dir)
    finally:
        sys.setprofile(None)
        db.command("profile", 0)
    ops: Counter = Counter()
    sent = 0
    for entry in _profiled(db, start, ds):
        ns = str(entry.get("ns", ""))
        if ns.endswith("system.profile"):
            continue
        kind = "samples" if ".samples." in ns else ns.split(".", 1)[-1]
        ops[(entry.get("op"), kind)] += 1
        sent += len(bson.encode(entry.get("command") or {}))
    assert sample[maps[0].field] is not None  # the sample in memory shows the push
    return ops, sent, calls


def test_a_push_does_the_same_work_at_few_and_at_many_cam_fields(datasets, tmp_path):
    few_ops, few_sent, few_calls = _push_measured(datasets[FEW], "a", tmp_path / "hm")
    many_ops, many_sent, many_calls = _push_measured(datasets[MANY], "b", tmp_path / "hm")
    assert many_ops == few_ops, (few_ops, many_ops)
    assert many_sent <= few_sent * 1.1 + 1024, (few_sent, many_sent)  # no command carries every field
    assert many_calls <= few_calls * 1.2, (few_calls, many_calls)  # nothing walks every field


def _dataset_doc_traffic(ds: fo.Dataset, tag: str, heatmap_dir) -> tuple[int, int]:
    """(bytes MongoDB sent back, bytes of the commands) on the datasets collection for one push of
    3 new fields, in a process that has pushed before (its copy of the schema current)."""
    db = foo.get_db_conn()
    maps = [make_heatmap(SIZE, "gradcam", layer=f"{tag}{k}", seed=k) for k in range(4)]
    store.push_heatmaps(ds, ds.first().id, make_result(SIZE, maps[:1]), heatmap_dir=heatmap_dir)
    db.command("profile", 2)
    start = datetime.now(UTC)
    try:
        store.push_heatmaps(ds, ds.first().id, make_result(SIZE, maps[1:]), heatmap_dir=heatmap_dir)
    finally:
        db.command("profile", 0)
    entries = [e for e in _profiled(db, start, ds) if str(e.get("ns", "")).endswith(".datasets")]
    return (sum(int(e.get("responseLength") or 0) for e in entries),
            sum(len(bson.encode(e.get("command") or {})) for e in entries))


def test_a_push_reads_the_same_bytes_of_the_dataset_document_at_few_and_at_many_cam_fields(datasets, tmp_path):
    """The schema lease brings this process's copy of the schema up to date before a declaration:
    it read every field's name and the whole App config (about 190 B a CAM field: 94 kB at 500) on
    each push and batch set-up. Now that read returns a few bytes while the document is as this
    process last saw it (its last_modified_at and size), the names and config only when another
    writer changed it."""
    few = _dataset_doc_traffic(datasets[FEW], "r", tmp_path / "hm")
    many = _dataset_doc_traffic(datasets[MANY], "s", tmp_path / "hm")
    assert many[0] <= few[0] + 512, (few, many)  # 160 fields: +30 kB before
    assert many[1] <= few[1] + 512, (few, many)


def _is_write(entry: dict) -> bool:
    """A profiled update of a document (findAndModify is profiled as a command)."""
    return entry.get("op") in ("update", "findAndModify") or "findAndModify" in (entry.get("command") or {})


def _dataset_doc(ds: fo.Dataset) -> dict:
    return foo.get_db_conn().datasets.find_one({"_id": ds._doc.id})


def test_a_new_cam_field_adds_little_to_the_dataset_document_in_one_update(datasets, tmp_path):
    """MongoDB rewrites the whole dataset document on each update that adds a field, so its size
    is part of every push's cost (2.7 MB at 500 CAM fields: bench/scale.py --fields). A push of 3
    new fields makes one update of it and adds under 1.3 kB a field (1.7 kB with the sub-fields the
    Heatmap type declares itself stored in each entry, 5.4 kB before the schema entries
    left out the keys that hold FiftyOne's defaults, 3.4 kB before only DECLARED_ATTRIBUTES were
    declared, 2.2 kB before the description was kept once, on the field); FiftyOne reads the
    entries back as declared."""
    ds = datasets[FEW]
    before = len(bson.encode(_dataset_doc(ds)))
    maps = [make_heatmap(SIZE, "gradcam", layer=f"size{k}", seed=k) for k in range(3)]
    db = foo.get_db_conn()
    db.command("profile", 2)
    start = datetime.now(UTC)
    try:
        fields = store.push_heatmaps(ds, ds.first().id, make_result(SIZE, maps), heatmap_dir=tmp_path / "hm")
    finally:
        db.command("profile", 0)
    writes = [e for e in _profiled(db, start, ds) if e.get("ns", "").endswith(".datasets") and _is_write(e)]
    assert len(writes) == 1, [e.get("command") for e in writes]  # one update for the 3 fields
    per_field = (len(bson.encode(_dataset_doc(ds))) - before) / len(fields)
    # 1,679 B while the Heatmap type's own sub-fields (id, tags, map, map_path, range) were stored too;
    # 2,154 B while the mark and the registry each held the description
    assert per_field < 1300, per_field
    # A fresh load (another process, the App's server) sees each field as this process declared it
    fresh = fo.Dataset(ds.name, _create=False, _virtual=True)
    for field in fields:
        mine, theirs = ds.get_field(field), fresh.get_field(field)
        assert (theirs.description, theirs.info) == (mine.description, mine.info)
        assert {k: type(v) for k, v in theirs.get_field_schema().items()} == \
            {k: type(v) for k, v in mine.get_field_schema().items()}
        assert set(store.DECLARED_ATTRIBUTES) <= set(theirs.get_field_schema())


def test_a_push_appends_to_the_app_configs_lists_without_walking_them(datasets, tmp_path):
    """The App config holds a colour scale and a sidebar path per CAM field, the schema a field
    entry each. A push's update of the dataset document, in a process whose copy is current, appends
    at the lists' next indexes ($set) with no guard on an index: MongoDB's $push walks the list, and a
    guard on `list.<i>` matches every entry's sub-fields too (bench/scale.py --fields: +1 ms of the
    ~10 ms set-up at 500 fields). The lists come out in order, each new field once."""
    ds = datasets[MANY]
    maps = [make_heatmap(SIZE, "gradcam", layer=f"walk{k}", seed=k) for k in range(4)]
    store.push_heatmaps(ds, ds.first().id, make_result(SIZE, maps[:1]), heatmap_dir=tmp_path / "hm")  # a process that pushed before
    db = foo.get_db_conn()
    db.command("profile", 2)
    start = datetime.now(UTC)
    try:
        store.push_heatmaps(ds, ds.first().id, make_result(SIZE, maps[1:]), heatmap_dir=tmp_path / "hm")
    finally:
        db.command("profile", 0)
    [write] = [e for e in _profiled(db, start, ds) if e.get("ns", "").endswith(".datasets") and _is_write(e)]
    command = write["command"]
    update, query = command.get("update") or command.get("u"), command.get("query") or command.get("q")
    assert "$push" not in update, update.get("$push")
    assert not [k for k in query if k.split(".")[-1].isdigit()], query  # no guard on a list's index
    doc = _dataset_doc(ds)
    new = [m.field for m in maps]
    scales = [c["path"] for c in doc["app_config"]["color_scheme"]["colorscales"]]
    [group] = [g for g in doc["app_config"]["sidebar_groups"] if g["name"] == "CAM heatmaps"]
    names = [f["name"] for f in doc["sample_fields"]]
    for listed in (scales, group["paths"], names):
        assert listed[-4:] == new and len(set(listed)) == len(listed), listed[-6:]


def test_fields_written_whole_by_fiftyone_keep_working(datasets, tmp_path):
    """FiftyOne's own schema writes (add_sample_field here, a field deleted in the App) store every
    entry whole again: those entries (and fields made by older versions) still take pushes."""
    ds = datasets[FEW]
    maps = [make_heatmap(SIZE, "gradcam", layer=f"whole{k}", seed=k) for k in range(2)]
    fields = store.push_heatmaps(ds, ds.first().id, make_result(SIZE, maps[:1]), heatmap_dir=tmp_path / "hm")
    ds.add_sample_field("other_note", fo.StringField)
    entry = next(f for f in _dataset_doc(ds)["sample_fields"] if f["name"] == fields[0])
    assert entry["fields"][0].get("read_only") is False  # written whole (FiftyOne's form)
    again = store.push_heatmaps(ds, ds.skip(1).first().id, make_result(SIZE, maps), heatmap_dir=tmp_path / "hm")
    assert again[0] == fields[0] and len(again) == 2
    fresh = fo.load_dataset(ds.name)
    fresh.reload()
    assert fresh.skip(1).first()[again[0]].map_path and fresh.skip(1).first()[again[1]].map_path


def test_undeclared_label_attributes_read_back_and_fields_declared_whole_keep_theirs(datasets, tmp_path, monkeypatch):
    """A new field declares Heatmap's own attributes and DECLARED_ATTRIBUTES only (each declared
    attribute is a filter in the App's sidebar and ~100 B of the dataset document per field); every
    other attribute a label carries is stored on it undeclared, and reads back as before: as an
    attribute, by key, in values() and in a match, from a fresh load. A field declared the old way
    (every label attribute) keeps its declarations and takes pushes without FiftyOne's slow path."""
    from fiftyone import ViewField as F

    from camcore.store import fields as fields_mod

    ds = datasets[FEW]
    hm = tmp_path / "hm"
    monkeypatch.setattr(fields_mod, "DECLARED_ATTRIBUTES", tuple(store.LABEL_ATTRIBUTES))  # as before
    [old] = store.push_heatmaps(ds, ds.first().id, make_result(SIZE, [make_heatmap(SIZE, layer="old")]), heatmap_dir=hm)
    monkeypatch.undo()
    added: list[str] = []
    monkeypatch.setattr(fo.Dataset, "add_sample_field",
                        lambda self, path, *a, **k: added.append(path) or pytest.fail(f"slow path for {path}"))
    maps = [make_heatmap(SIZE, layer="old"), make_heatmap(SIZE, layer="new", raw_range=(0.25, 7.5))]
    old_again, new = store.push_heatmaps(ds, ds.skip(1).first().id, make_result(SIZE, maps), heatmap_dir=hm)
    monkeypatch.undo()
    assert old_again == old and not added
    fresh = fo.Dataset(ds.name, _create=False, _virtual=True)
    heatmap_own = set(fo.Heatmap._fields) - {"_cls"}
    assert set(fresh.get_field(old).get_field_schema()) == heatmap_own | set(store.LABEL_ATTRIBUTES)
    assert set(fresh.get_field(new).get_field_schema()) == heatmap_own | {"target", "blank"}  # the App's filters
    sample = fresh.skip(1).first()
    for field in (old, new):
        label = sample[field]
        written = label.to_dict()
        assert set(store.LABEL_ATTRIBUTES) <= set(written), field  # every attribute stored on the label
        for attr in store.LABEL_ATTRIBUTES:
            assert label[attr] == getattr(label, attr) == label.get_field(attr) == written[attr], (field, attr)
    label = sample[new]
    assert (label.raw_min, label.raw_max, label["weights"], label.input_size) == (0.25, 7.5, "ImageNet (torchvision)", 224)
    view = fresh.match(F(f"{new}.raw_max") > 7)
    assert view.values("id") == [sample.id] and view.values(f"{new}.weights_sha256") == [label.weights_sha256]
