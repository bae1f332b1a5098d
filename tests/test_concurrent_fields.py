"""Issue 22, items 1 and 3: several processes declaring CAM fields on one dataset at once all
succeed, the schema holds every field and the registry in dataset.info loses no entry; a field is
declared with every label attribute in one schema write.

Writers are real processes (one warm pool for the file, FiftyOne imported once each) started
together (a shared start time), each pushing its own new fields (its own layer names) into the
same dataset."""

from __future__ import annotations

import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fiftyone as fo
import pytest
from bson import ObjectId
from fo_helpers import make_heatmap, make_result, unique_name, write_images
from warm_processes import WarmPool

from camcore import store
from camcore.store.datasets import MARK, datasets_collection

SIZE = (24, 32)
WRITERS = 6
FIELDS_EACH = 3

PUSHER = textwrap.dedent(
    """
    import os, sys, time
    import fiftyone as fo
    from fo_helpers import make_heatmap, make_result
    from camcore import store

    me = int(sys.argv[1])
    ds = fo.load_dataset(os.environ["DATASET"])
    sample_id = ds.first().id
    size = (24, 32)
    maps = [make_heatmap(size, "gradcam", layer=f"w{me}l{k}", seed=k) for k in range(int(os.environ["EACH"]))]
    while time.time() < float(os.environ["START"]):  # all writers declare at the same moment
        time.sleep(0.005)
    fields = store.push_heatmaps(ds, sample_id, make_result(size, maps), heatmap_dir=os.environ["HM"])
    print("pushed", " ".join(fields), flush=True)
    """
)


@pytest.fixture(scope="module")
def pool():
    """The writers: started once for the file (each start imports FiftyOne and torch)."""
    warm = WarmPool(WRITERS)
    yield warm
    warm.close()


def _start_soon() -> str:
    """A start time all writers wait for: the pool is warm, so a second is plenty."""
    return str(time.time() + 1.0)


@pytest.fixture
def dataset(tmp_path):
    files = write_images(tmp_path / "img", ["a.png", "b.png"], size=SIZE)
    ds = fo.Dataset(unique_name("concurrent-fields"), persistent=True)  # children load it by name
    ds.add_samples([fo.Sample(filepath=p) for p in files])
    ds.compute_metadata()
    yield ds
    fo.delete_dataset(ds.name)


def test_processes_declaring_fields_at_once_all_succeed_and_the_registry_keeps_every_entry(pool, dataset, tmp_path):
    # one field declared first, so the registry exists before the race
    store.push_heatmaps(dataset, dataset.first().id, make_result(SIZE, [make_heatmap(SIZE, "gradcam", layer="seed")]),
                        heatmap_dir=tmp_path / "hm")
    env = {"DATASET": dataset.name, "HM": str(tmp_path / "hm"), "EACH": str(FIELDS_EACH), "START": _start_soon()}
    outs = pool.run(PUSHER, [str(i) for i in range(WRITERS)], env)
    failed = [o.error[-1500:] for o in outs if o.error]
    assert not failed, failed
    pushed = {f for o in outs for f in o.out.split()[1:]}
    assert len(pushed) == WRITERS * FIELDS_EACH

    dataset.reload()
    schema = dataset.get_field_schema()
    assert pushed <= set(schema), sorted(pushed - set(schema))
    registry = dataset.info[MARK]["fields"]
    assert pushed <= set(registry), sorted(pushed - set(registry))
    # ... and the App config styles every one of them (each writer extends the stored config)
    scales = {c["path"] for c in dataset.app_config.color_scheme.colorscales}
    assert pushed <= scales, sorted(pushed - scales)
    group = next(g for g in dataset.app_config.sidebar_groups if g.name == "CAM heatmaps")
    assert pushed <= set(group.paths), sorted(pushed - set(group.paths))
    # ... each once and no hole in the stored lists (a writer appends at a list's next index only
    # when its copy is the document: a copy behind would leave nulls or overwrite an entry)
    raw = datasets_collection().find_one({"_id": dataset._doc.id}, {"app_config": 1})["app_config"]
    stored_scales = [c and c.get("path") for c in raw["color_scheme"]["colorscales"]]
    stored_group = next(g for g in raw["sidebar_groups"] if g["name"] == "CAM heatmaps")["paths"]
    for stored in (stored_scales, stored_group):
        assert None not in stored and len(stored) == len(set(stored)), stored
    sample = dataset.first()
    for field in pushed:  # every label readable, with its file
        assert Path(sample[field].map_path).is_file()


def test_a_new_field_costs_no_reload_or_save_of_the_whole_dataset_document(dataset, tmp_path):
    """FiftyOne's add_sample_field reloads and saves the whole dataset document (every field's
    entry): a cost that grows with the number of fields (bench/scale.py --fields). A push of new
    fields must do neither, in this process or in another one that learns of them."""
    from fiftyone.core.odm.document import Document

    calls: list[str] = []
    originals = {name: getattr(Document, name) for name in ("reload", "save")}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            if self is dataset._doc:
                calls.append(name)
            return originals[name](self, *args, **kwargs)
        return wrapper

    for name in originals:
        setattr(Document, name, counting(name))
    try:
        maps = [make_heatmap(SIZE, "gradcam", layer=f"l{k}", seed=k) for k in range(3)]
        fields = store.push_heatmaps(dataset, dataset.first().id, make_result(SIZE, maps),
                                     heatmap_dir=tmp_path / "hm")
    finally:
        for name, original in originals.items():
            setattr(Document, name, original)
    assert calls == [], calls
    declared = dataset.get_field(fields[0]).get_field_schema()
    assert set(store.DECLARED_ATTRIBUTES) <= set(declared)
    # what is in the database is what this process believes
    fresh = fo.Dataset(dataset.name, _create=False, _virtual=True)
    assert set(fields) <= set(fresh.get_field_schema())
    assert dataset.first()[fields[0]].map_path


SAME_FIELD = textwrap.dedent(
    """
    import os, sys, time
    import fiftyone as fo
    from fo_helpers import make_heatmap, make_result
    from camcore import store

    me = int(sys.argv[1])
    ds = fo.load_dataset(os.environ["DATASET"])
    sample_id = ds.first().id
    size = (24, 32)
    while time.time() < float(os.environ["START"]):
        time.sleep(0.005)
    for k in range(int(os.environ["ROUNDS"])):  # same sample, same field, every writer at once
        store.push_heatmaps(ds, sample_id, make_result(size, [make_heatmap(size, "gradcam", seed=me * 100 + k)]),
                            heatmap_dir=os.environ["HM"])
    print("done", flush=True)
    """
)


def _first_map(dataset, hm: Path) -> tuple[str, str]:
    """One Grad-CAM map pushed to the first sample: (its sample id, its field)."""
    sample_id = dataset.first().id
    (field,) = store.push_heatmaps(dataset, sample_id, make_result(SIZE, [make_heatmap(SIZE, "gradcam")]),
                                   heatmap_dir=hm)
    return sample_id, field


def _race_same_field(pool, dataset, hm: Path, sample_id: str, field: str) -> tuple[str, list[str]]:
    """4 writers x 6 rounds replace the sample's map at once (SAME_FIELD): (the file its label points at
    afterwards, the PNGs in that folder). No writer failed, no journal is left."""
    env = {"DATASET": dataset.name, "HM": str(hm), "ROUNDS": "6", "START": _start_soon()}
    outs = pool.run(SAME_FIELD, [str(i) for i in range(4)], env)
    assert not any(o.error for o in outs), [o.error[-1500:] for o in outs]
    assert not list(hm.glob("*/.pending/*.journal"))
    dataset.reload()
    label_path = dataset[sample_id][field].map_path
    return label_path, sorted(str(p) for p in Path(label_path).parent.glob("*.png"))


def test_writers_of_one_sample_and_field_leave_only_the_file_its_label_points_at(pool, dataset, tmp_path):
    hm = tmp_path / "hm"
    sample_id, field = _first_map(dataset, hm)
    label_path, files = _race_same_field(pool, dataset, hm, sample_id, field)
    assert files == [label_path]


def test_writers_on_a_dataset_written_days_ago_keep_the_file_a_copy_points_at(pool, dataset, tmp_path):
    """The same race on a dataset last written two days ago (1,000 more samples), with a copy of the
    first label in another dataset (add_samples: a new sample id): each writer's check of the file
    it replaces reads only the documents written since that file's label, and finds the copy."""
    coll = dataset._sample_collection
    doc = coll.find_one({"_id": dataset.first()._id})
    coll.insert_many([{**doc, "_id": ObjectId(), "filepath": f"/nowhere/{i}.png"} for i in range(1000)])
    coll.update_many({}, {"$set": {"last_modified_at": datetime.now(UTC) - timedelta(days=2)}})
    hm = tmp_path / "hm"
    sample_id, field = _first_map(dataset, hm)
    copy = fo.Dataset(unique_name("concurrent-fields-copy"))
    copy.add_samples([dataset[sample_id]])
    kept = copy.first()[field].map_path
    label_path, files = _race_same_field(pool, dataset, hm, sample_id, field)
    assert files == sorted([label_path, kept])
    copy.delete()


CLASHING = textwrap.dedent(
    """
    import dataclasses, os, sys, time
    from pathlib import Path
    import fiftyone as fo
    from fo_helpers import coded_identity, make_heatmap, make_result
    from camcore import store
    from camcore.results import Target
    from camcore.store import heatmaps
    from camcore.store.datasets import datasets_collection

    me = int(sys.argv[1])
    ds = fo.load_dataset(os.environ["DATASET"])
    sample_id = ds.first().id
    size = (24, 32)
    name, flag = os.environ["NAME"], Path(os.environ["FLAG"])
    target = Target(me, ("Egyptian cat", "Egyptian mau")[me], "chosen")
    h = make_heatmap(size, "gradcam", layer="head", target=target, seed=me, model="efficientnet_lite0")
    identity = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target=target.name)
    object.__setattr__(identity, "field_name", name)  # both maps' names cut alike (their short hashes meet)
    h = dataclasses.replace(h, identity=identity)
    deadline = time.monotonic() + 120  # a job that hangs would hang the test: fail instead
    real = heatmaps.declare_heatmap_fields

    def late(dataset, *args, **kwargs):
        # planned before the other process declared: declare once it has (the race, made certain)
        flag.touch()
        while name not in [f["name"] for f in datasets_collection().find_one({"name": dataset.name})["sample_fields"]]:
            assert time.monotonic() < deadline, "the other process never declared its field"
            time.sleep(0.05)
        return real(dataset, *args, **kwargs)

    if me == 1:
        heatmaps.declare_heatmap_fields = late
    else:
        while not flag.exists():
            assert time.monotonic() < deadline, "the other process never planned its write"
            time.sleep(0.05)
    try:
        fields = store.push_heatmaps(ds, sample_id, make_result(size, [h], model="efficientnet_lite0"),
                                     heatmap_dir=os.environ["HM"])
    finally:
        heatmaps.declare_heatmap_fields = real  # a warm process runs later jobs too
    print("pushed", " ".join(fields), flush=True)
    """
)


def test_two_processes_declaring_names_cut_alike_at_once_both_push(pool, dataset, tmp_path):
    """Two maps whose cut names meet, declared by two processes at once (one planned its write
    before the other declared the name): both pushes succeed, with no "push again"; the second
    map takes its spare name."""
    from fo_helpers import coded_identity

    name = "cam_grad_head_effl0_egyptian_0ab"
    env = {"DATASET": dataset.name, "HM": str(tmp_path / "hm"), "NAME": name, "FLAG": str(tmp_path / "planned")}
    outs = pool.run(CLASHING, ["0", "1"], env)
    failed = [o.error[-1500:] for o in outs if o.error]
    assert not failed, (failed, [o.out for o in outs])
    spare = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head",
                           target="Egyptian mau").spare_field_name
    assert [o.out.split()[1:] for o in outs] == [[name], [spare]]
    dataset.reload()
    sample = dataset.first()
    assert (sample[name].target, sample[spare].target) == ("Egyptian cat", "Egyptian mau")
    for field in (name, spare):  # each label with its file, and no file left from the retried write
        assert sorted(p.name for p in Path(sample[field].map_path).parent.glob("*.png")) == [
            Path(sample[field].map_path).name]


MEASURING = textwrap.dedent(
    """
    import json, os, sys, time
    import fiftyone as fo
    from fo_helpers import coded_identity
    from camcore.store import measures

    target = sys.argv[1]
    ds = fo.load_dataset(os.environ["DATASET"])
    identity = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target=target)
    while time.time() < float(os.environ["START"]):  # every process declares at the same moment
        time.sleep(0.005)
    print(json.dumps(measures.declare_measure_fields(ds, identity)), flush=True)
    """
)


def test_processes_declaring_measure_fields_whose_cut_names_meet_keep_every_map_apart(pool, dataset):
    """Issue #21/#22: batches measuring maps of one model, method and layer for different classes,
    started together (their measure names, cut to fit the App's sidebar, meet): every process gets
    its map's own fields, no two maps share one, and each field is linked to its own map; two
    processes measuring the same map get the same fields."""
    import json

    from fo_helpers import coded_identity

    from camcore.store import measures

    targets = ["predicted", "Egyptian cat", "Egyptian mau", "tabby", "predicted", "Egyptian cat"]
    ids = {t: coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target=t) for t in targets}
    assert len({i.measure_field("remove") for i in ids.values()}) == 1  # their plain names all meet
    outs = pool.run(MEASURING, targets, {"DATASET": dataset.name, "START": _start_soon()})
    failed = [o.error[-1500:] for o in outs if o.error]
    assert not failed, failed
    got = [json.loads(o.out) for o in outs]
    for target, fields in zip(targets, got, strict=True):  # the same map, the same fields
        assert fields == got[targets.index(target)], target
    per_map = {ids[t].field_name: fields for t, fields in zip(targets, got, strict=True)}
    names = [name for fields in per_map.values() for name in fields.values()]
    assert len(names) == len(set(names)), "two maps share a measure field"
    dataset.reload()
    assert measures.measure_runs(dataset) == per_map  # each field linked to its own map


THEIR_CHANGES = textwrap.dedent(
    """
    import os
    import fiftyone as fo

    ds = fo.load_dataset(os.environ["DATASET"])
    ds.add_sample_field("their_note", fo.StringField)  # FiftyOne's own writes, as a colleague's
    ds.app_config.color_scheme.color_by = "field"
    ds.save()
    print("changed", flush=True)
    """
)


def test_a_process_that_pushed_before_takes_what_another_process_changed_since(pool, dataset, tmp_path):
    """A push reads the field names and App config only when the dataset document is not as this
    process last saw it (FiftyOne's last_modified_at and the document's size): what FiftyOne wrote
    in another process, or a raw write that keeps last_modified_at, is read before the next push."""
    from camcore.store import schema

    hm = tmp_path / "hm"
    push = lambda layer: store.push_heatmaps(  # noqa: E731
        dataset, dataset.first().id, make_result(SIZE, [make_heatmap(SIZE, "gradcam", layer=layer)]), heatmap_dir=hm)
    push("first")
    [out] = pool.run(THEIR_CHANGES, ["0"], {"DATASET": dataset.name})
    assert not out.error, out.error[-1500:]
    mine = push("second")
    assert "their_note" in dataset._sample_doc_cls._fields  # declared here by the push's catching up
    assert schema.stored_app_config(dataset)["color_scheme"]["color_by"] == "field"
    # A raw write that leaves last_modified_at as it was (its size differs) is caught up too
    schema.datasets_collection().update_one({"_id": dataset._doc.id},
                                            {"$set": {"app_config.color_scheme.color_by": "instance"}})
    push("third")
    assert schema.stored_app_config(dataset)["color_scheme"]["color_by"] == "instance"
    fresh = fo.Dataset(dataset.name, _create=False, _virtual=True)
    assert {"their_note", *mine} <= set(fresh.get_field_schema())
    assert fresh.app_config.color_scheme.color_by == "instance"
