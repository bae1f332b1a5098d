"""store: datasets, views, samples, field names, findings, App links (real MongoDB)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import fiftyone as fo
import pytest

from camcore import store
from camcore.errors import ImageError, StoreError
from camcore.identity import MAX_FIELD_LEN, HeatmapIdentity
from fo_helpers import unique_name, write_images


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "img", ["Cat_01.png", "dog_02.png", "cat_03.jpg", "car_04.png"])
    ds = fo.Dataset(unique_name("store"))
    labels = ["cat", "dog", "cat", "car"]
    tags = [["train"], ["train"], ["val"], []]
    ds.add_samples([fo.Sample(filepath=p, tags=t, ground_truth=fo.Classification(label=lab))
                    for p, t, lab in zip(paths, tags, labels)])
    yield ds
    ds.delete()


def test_list_and_load_datasets(dataset):
    assert dataset.name in store.list_datasets()
    assert store.load_dataset(dataset.name).name == dataset.name


def test_unknown_dataset_names_it_and_the_known_ones(dataset):
    with pytest.raises(StoreError) as err:
        store.load_dataset("no-such-dataset")
    msg = str(err.value)
    assert "no-such-dataset" in msg and dataset.name in msg and "\n" not in msg


def test_make_view_filters_combine(dataset):
    assert len(store.make_view(dataset)) == 4
    assert len(store.make_view(dataset, tags="train")) == 2
    assert len(store.make_view(dataset, tags=["train", "val"])) == 3
    assert len(store.make_view(dataset, label_field="ground_truth", label="cat")) == 2
    assert len(store.make_view(dataset, label="dog")) == 1
    assert len(store.make_view(dataset, tags="train", label="cat")) == 1
    names = [s.filepath.rsplit("/", 1)[-1] for s in store.make_view(dataset, filename_contains="CAT")]
    assert sorted(names) == ["Cat_01.png", "cat_03.jpg"]
    # the folder name must not match: only the basename counts
    assert len(store.make_view(dataset, filename_contains="img")) == 0


def test_make_view_unknown_label_field(dataset):
    with pytest.raises(StoreError, match="no field 'nope'.*ground_truth"):
        store.make_view(dataset, label_field="nope")


def test_sample_ids_follow_the_view(dataset):
    view = store.make_view(dataset, tags="train")
    assert store.sample_ids(view) == [s.id for s in view]
    assert store.sample_ids(dataset) == dataset.values("id")


def test_get_sample_by_id_basename_and_path(dataset):
    first = dataset.first()
    assert store.get_sample(dataset, first.id).id == first.id
    assert store.get_sample(dataset, "Cat_01.png").id == first.id
    assert store.get_sample(dataset, first.filepath).id == first.id
    # a relative path names the end of the filepath, not the caller's working directory
    tail = "/".join(first.filepath.split("/")[-2:])
    assert store.get_sample(dataset, tail).id == first.id
    assert store.get_sample(dataset, "./" + tail).id == first.id
    view = store.make_view(dataset, tags="val")
    assert store.get_sample(view, "cat_03.jpg").filepath.endswith("cat_03.jpg")
    with pytest.raises(StoreError, match="no sample 'Cat_01.png'"):  # exists, but not in this view
        store.get_sample(view, "Cat_01.png")
    with pytest.raises(StoreError):
        store.get_sample(view, first.id)


def test_get_sample_unknown(dataset):
    with pytest.raises(StoreError, match="missing.png"):
        store.get_sample(dataset, "missing.png")
    with pytest.raises(StoreError):
        store.get_sample(dataset, "0123456789abcdef01234567")


def test_sample_image_path(dataset, tmp_path):
    sample = dataset.first()
    assert store.sample_image_path(sample) == sample.filepath
    (tmp_path / "img" / "Cat_01.png").unlink()
    with pytest.raises(ImageError, match="missing"):
        store.sample_image_path(sample)


def test_video_dataset_is_refused(tmp_path):
    ds = fo.Dataset(unique_name("video"))
    try:
        ds.add_sample(fo.Sample(filepath=str(tmp_path / "clip.mp4")))
        sample = ds.first()
        with pytest.raises(StoreError, match="video"):
            store.sample_image_path(sample)
        with pytest.raises(StoreError, match="video"):
            store.require_image(ds)
    finally:
        ds.delete()


def _name(model: str, method: str, layer: str, target: str) -> str:
    return HeatmapIdentity(model=model, method=method, layer=layer, target=target).field_name


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("resnet50", "gradcam", "layer4", "tabby cat"), ("resnet50", "gradcam", "layer4", "tabby_cat")),
        (("DeiT-Tiny", "GradCAM++", "blocks.11.norm1", "potter's wheel"),
         ("deit_tiny", "gradcampp", "blocks_11_norm1", "potter_s_wheel")),
        (("m", "eigen__cam", " layer  4 ", "__x__"), ("m", "eigen_cam", "layer_4", "x")),
    ],
)
def test_field_names_are_sanitised(parts, expected):
    name = _name(*parts)
    assert name.startswith(store.FIELD_PREFIX) and re.fullmatch(r"[a-z0-9_]+", name) and "__" not in name
    assert all(f"_{part}_" in f"{name}_" for part in expected), name


def test_gradcam_and_gradcam_plusplus_get_their_own_fields():
    assert _name("m", "gradcam", "l", "t") != _name("m", "gradcam++", "l", "t")


def test_long_field_names_are_capped_and_distinct():
    a = _name("model", "gradcam", "layer", "a" * 200)
    b = _name("model", "gradcam", "layer", "a" * 199 + "b")
    assert len(a) <= MAX_FIELD_LEN and len(b) <= MAX_FIELD_LEN
    assert a != b and a.startswith("cam_gradcam_layer_model_aaa")
    assert all(c.isalnum() or c == "_" for c in a) and a == a.lower()


def test_a_non_ascii_field_name_part_is_stable():
    a = _name("m", "gradcam", "l", "猫")
    assert a == _name("m", "gradcam", "l", "猫")
    assert a != _name("m", "gradcam", "l", "犬")
    assert a.isascii()


def test_findings_round_trip(dataset):
    sample = dataset.first()
    store.add_finding(dataset, sample.id, "background bias", note="looks at the grass")
    store.add_finding(dataset, sample.id, "good focus")
    other = dataset.skip(1).first()
    store.add_finding(dataset, other.id, "spurious edges", note="frame border")

    fresh = fo.load_dataset(dataset.name)
    fresh.reload()
    found = store.list_findings(fresh)
    assert [(f["sample_id"], f["tag"], f["note"]) for f in found] == [
        (sample.id, "background bias", "looks at the grass"),
        (sample.id, "good focus", ""),
        (other.id, "spurious edges", "frame border"),
    ]
    assert all(f["created_at"].endswith("Z") for f in found)
    tags = fresh[sample.id].tags
    assert "cam:background-bias" in tags and "cam:good-focus" in tags and "train" in tags
    # the same tag twice adds a second finding but not a second sample tag
    store.add_finding(dataset, sample.id, "background bias", note="again")
    assert fresh[sample.id].tags.count("cam:background-bias") == 1
    assert len(store.list_findings(dataset)) == 4


def test_finding_checks(dataset):
    sample = dataset.first()
    assert store.list_findings(dataset) == []
    with pytest.raises(StoreError, match="no field 'cam_nope'"):
        store.add_finding(dataset, sample.id, "good focus", heatmap_field="cam_nope")
    with pytest.raises(StoreError):
        store.add_finding(dataset, sample.id, "  ?! ")
    with pytest.raises(StoreError):
        store.add_finding(dataset, "no-such-sample.png", "good focus")
    assert dataset.get_field(store.FINDINGS_FIELD) is None  # nothing was written
    assert store.finding_tag("Background Bias") == "cam:background-bias"
    assert len(store.FINDING_TAGS) == 4


def test_foreign_findings_field_is_refused(dataset):
    dataset.add_sample_field(store.FINDINGS_FIELD, fo.StringField)
    with pytest.raises(StoreError, match="findings"):
        store.add_finding(dataset, dataset.first().id, "good focus")
    assert dataset.first().tags == ["train"]


def test_app_url():
    assert store.app_url("cam-explorer-demo") == "http://localhost:5151/datasets/cam-explorer-demo"
    assert (store.app_url("my data/1", "65a0b1c2d3e4f5a6b7c8d9e0", port=5200)
            == "http://localhost:5200/datasets/my%20data%2F1?id=65a0b1c2d3e4f5a6b7c8d9e0")


def test_database_down_is_one_clear_line():
    # A fresh process pointed at a closed port; the password in the URI must not leak.
    code = textwrap.dedent("""
        from camcore import store
        from camcore.errors import StoreError
        try:
            store.list_datasets()
        except StoreError as exc:
            print("STORE-ERROR", exc)
    """)
    env = dict(os.environ, FIFTYONE_DATABASE_URI="mongodb://me:secret@127.0.0.1:9/?serverSelectionTimeoutMS=1000")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("STORE-ERROR")]
    assert line, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "cannot reach the FiftyOne database" in line[0] and "FIFTYONE_DATABASE_URI" in line[0]
    assert "secret" not in proc.stdout


def test_segmentation_masks_by_label_from_arrays_and_files(tmp_path):
    import cv2
    import numpy as np

    paths = write_images(tmp_path / "img", ["a.png", "b.png", "c.png", "d.png", "e.png"], size=(8, 8))
    mask_a = np.zeros((4, 4), np.uint8)
    mask_a[1:3, 1:3] = 2
    mask_file = tmp_path / "mask_b.png"
    mask_b = np.full((6, 6), 2, np.uint8)
    mask_b[0] = 1
    assert cv2.imwrite(str(mask_file), mask_b)
    rgb = np.zeros((4, 4, 3), np.uint8)  # an RGB mask: classes are colours, not read
    ds = fo.Dataset(unique_name("masks"))
    ds.add_samples([
        fo.Sample(filepath=paths[0], gt=fo.Segmentation(mask=mask_a)),
        fo.Sample(filepath=paths[1], gt=fo.Segmentation(mask_path=str(mask_file))),
        fo.Sample(filepath=paths[2], gt=fo.Segmentation(mask=rgb)),
        fo.Sample(filepath=paths[3], gt=fo.Segmentation(mask_path=str(tmp_path / "gone.png"))),
        fo.Sample(filepath=paths[4]),
    ])
    try:
        assert store.segmentation_fields(ds) == ["gt"]
        assert store.segmentation_labels(ds, "gt") == ["0", "1", "2"]  # no mask targets: values found
        ds.mask_targets = {"gt": {0: "background", 1: "sky", 2: "plane"}}
        ds.save()
        assert store.segmentation_labels(ds, "gt") == ["background", "sky", "plane"]
        ids = ds.values("id")
        masks = store.segmentation_masks_by_sample(ds, "gt", "plane")
        assert set(masks) == {ids[0], ids[1]}  # RGB, missing file and no label are left out
        np.testing.assert_array_equal(masks[ids[0]], mask_a == 2)
        assert masks[ids[1]].shape == (6, 6) and masks[ids[1]].sum() == 30
        by_value = store.segmentation_masks_by_sample(ds, "gt", "1")
        assert by_value[ids[1]].sum() == 6
        with pytest.raises(StoreError, match="no class 'tree'"):
            store.segmentation_masks_by_sample(ds, "gt", "tree")
        ds.add_sample_field("gt_label", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
        with pytest.raises(StoreError, match="no segmentation masks"):
            store.segmentation_masks_by_sample(ds, "gt_label", "plane")
    finally:
        ds.delete()
