"""store.push_heatmaps: files + fields, replace on re-push, read back in a new process, collisions."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
from pathlib import Path

import cv2
import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from camcore import paths, store
from camcore.errors import ImageError, StoreError
from camcore.results import Target
from fo_helpers import field_name, make_heatmap, make_result, unique_name, with_identity, write_images

SIZE = (24, 32)
QUANT = 0.5 / 65535 + 1e-7  # 16-bit rounding error bound


@pytest.fixture
def dataset(tmp_path):
    files = write_images(tmp_path / "img", ["a.png", "b.png"], size=SIZE)
    ds = fo.Dataset(unique_name("push name"))  # a space: the folder name must be sanitised
    ds.add_samples([fo.Sample(filepath=p) for p in files])
    ds.compute_metadata()
    yield ds
    ds.delete()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_push_writes_pngs_fields_and_registry(dataset, tmp_path):
    sample = dataset.first()
    h1 = make_heatmap(SIZE, "gradcam", "layer4", seed=0)
    h2 = make_heatmap(SIZE, "eigencam", "layer3.1", seed=2)
    fields = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [h1, h2]), heatmap_dir=tmp_path / "hm")

    assert fields == [field_name("resnet50", "gradcam", "layer4", "tabby cat"),
                      field_name("resnet50", "eigencam", "layer3.1", "tabby cat")]
    assert "_layer3_1_" in fields[1]  # sanitised: "." is not a field-name character
    for field, h in zip(fields, (h1, h2), strict=True):
        label = dataset[sample.id][field]
        assert isinstance(label, fo.Heatmap) and list(label.range) == [0, 65535]
        path = Path(label.map_path)
        assert path.is_absolute() and path.is_file()
        # <sample id>-<write id>.png: a new name per write, never replaced in place
        assert path.parent.name == field and re.fullmatch(rf"{sample.id}-[0-9a-f]+\.png", path.name)
        assert path.is_relative_to(tmp_path / "hm") and " " not in path.parent.parent.name
        png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == SIZE
        np.testing.assert_allclose(png / 65535.0, h.map, atol=QUANT)
        assert label.method == h.method and label.layer == h.layer and label.target == "tabby cat"
        info = dataset.get_field(field).info[store.MARK]
        assert info["layer"] == h.layer and info["model"] == "resnet50"
        assert dataset.info[store.MARK]["fields"][field]["method"] == h.method
    assert store.heatmap_fields(dataset).keys() == set(fields)
    # A short name the App's sidebar shows whole; the full description is the field's own.
    assert fields[0] == "cam_gradcam_layer4_resnet50_tabby_cat"
    for field, h in zip(fields, (h1, h2), strict=True):
        described = dataset.get_field(field)
        assert described.description == h.identity.description
        assert f"{h.method} on {h.layer} of resnet50" in described.description
        assert "'tabby cat'" in described.description
        # once: the mark and the registry hold the meaning (the document every push rewrites)
        assert described.info[store.MARK] == h.identity.meaning
        assert dataset.info[store.MARK]["fields"][field] == h.identity.meaning
        assert store.heatmap_fields(dataset)[field]["description"] == h.identity.description
    # the other sample is untouched
    assert dataset.skip(1).first()[fields[0]] is None
    assert not [p for p in _files(tmp_path / "hm") if p.name.startswith(".tmp-")]


def test_push_defaults_to_home_heatmaps_dir(dataset):
    sample = dataset.first()
    [field] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE)]))
    path = Path(dataset[sample.id][field].map_path)
    assert path.is_relative_to(paths.heatmaps_dir())
    assert str(paths.home()) == os.path.realpath(os.environ["CAM_EXPLORER_HOME"])


def test_push_twice_replaces(dataset, tmp_path):
    sample = dataset.first()
    hm_dir = tmp_path / "hm"
    first = make_result(SIZE, [make_heatmap(SIZE, seed=1)])
    [field] = store.push_heatmaps(dataset, sample.id, first, heatmap_dir=hm_dir)
    first_path = dataset[sample.id][field].map_path
    second = make_heatmap(SIZE, seed=4, raw_range=(0.0, 9.0))
    assert store.push_heatmaps(dataset, sample.id, make_result(SIZE, [second]), heatmap_dir=hm_dir) == [field]

    fresh = fo.load_dataset(dataset.name)
    label = fresh[sample.id][field]
    # A new file for the new label; the old one is gone once the database took the new label.
    assert label.map_path != first_path and label.raw_max == 9.0
    assert _files(hm_dir) == [Path(label.map_path)] and not Path(first_path).exists()
    assert [f for f in fresh.get_field_schema() if f.startswith("cam_")] == [field]
    assert list(fresh.info[store.MARK]["fields"]) == [field]
    np.testing.assert_allclose(label.get_map() / 65535.0, second.map, atol=QUANT)


def test_read_back_in_a_new_process(dataset, tmp_path, fork_server):
    sample = dataset.first()
    target = Target(504, "coffee mug", "predicted top-1")
    h = make_heatmap(SIZE, "gradcam++", "features.7", target=target, seed=3, eigen_smooth=True,
                     model="efficientnet_lite0")
    [field] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [h], model="efficientnet_lite0"))
    out = tmp_path / "map.npy"
    code = textwrap.dedent(f"""
        import json, numpy as np, fiftyone as fo
        ds = fo.load_dataset({dataset.name!r})
        label = ds[{sample.id!r}][{field!r}]
        np.save({str(out)!r}, label.get_map().astype(np.float64) / label.range[1])
        keys = ["model", "weights", "pretrained", "method", "layer", "target", "target_index",
                "target_rule", "aug_smooth", "eigen_smooth", "raw_min", "raw_max", "created_at", "versions"]
        print(json.dumps({{k: label[k] for k in keys}}))
    """)
    proc = fork_server.run(code, [], dict(os.environ))  # a process of its own, no dataset in memory
    assert proc.returncode == 0, proc.stderr[-2000:]
    prov = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.load(out), h.map, atol=QUANT)
    assert prov["model"] == "efficientnet_lite0" and prov["weights"] == "ImageNet (torchvision)"
    assert prov["pretrained"] is True and prov["method"] == "gradcam++" and prov["layer"] == "features.7"
    assert prov["target"] == "coffee mug" and prov["target_index"] == 504
    assert prov["target_rule"] == "predicted top-1"
    assert prov["aug_smooth"] is False and prov["eigen_smooth"] is True
    assert prov["raw_min"] == 0.0 and prov["raw_max"] == 3.5
    assert prov["created_at"].endswith("Z") and prov["created_at"][:2] == "20"
    assert set(prov["versions"]) == {"camcore", "torch", "torchvision", "pytorch_grad_cam", "timm"}
    assert prov["versions"]["torch"].startswith("2.")


def _assert_nothing_written(dataset, hm_dir, fields_before):
    assert list(dataset.get_field_schema()) == fields_before
    assert _files(hm_dir) == []
    assert store.MARK not in (fo.load_dataset(dataset.name).info or {})


def test_foreign_field_of_another_type_is_not_touched(dataset, tmp_path):
    ok = make_heatmap(SIZE, "gradcam", "layer4", seed=1)
    clash = make_heatmap(SIZE, "scorecam", "layer4", seed=2)
    foreign = clash.field
    dataset.add_sample_field(foreign, fo.StringField)
    dataset.set_values(foreign, ["keep me", "keep me too"])
    before = list(dataset.get_field_schema())
    with pytest.raises(StoreError, match="not a Heatmap field"):
        store.push_heatmaps(dataset, dataset.first().id, make_result(SIZE, [ok, clash]),
                            heatmap_dir=tmp_path / "hm")
    _assert_nothing_written(dataset, tmp_path / "hm", before)  # not even the good heatmap
    assert dataset.values(foreign) == ["keep me", "keep me too"]


def test_foreign_heatmap_field_not_marked_ours_is_not_touched(dataset, tmp_path):
    h = make_heatmap(SIZE)
    field = h.field
    sample = dataset.first()
    dataset.set_values(field, {sample.id: fo.Heatmap(map=np.zeros(SIZE, np.float32))}, key_field="id")
    before = list(dataset.get_field_schema())
    with pytest.raises(StoreError, match="not created by CAM Explorer"):
        store.push_heatmaps(dataset, sample.id, make_result(SIZE, [h]), heatmap_dir=tmp_path / "hm")
    _assert_nothing_written(dataset, tmp_path / "hm", before)
    assert dataset[sample.id][field].map_path is None


def test_names_that_sanitise_alike_do_not_share_a_field(dataset, tmp_path):
    sample = dataset.first()
    store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE, layer="layer4.0")]),
                        heatmap_dir=tmp_path / "hm")
    with pytest.raises(StoreError, match="collide"):
        again = make_result(SIZE, [make_heatmap(SIZE, layer="layer4_0", seed=5)])
        store.push_heatmaps(dataset, sample.id, again, heatmap_dir=tmp_path / "hm")
    label = dataset[sample.id][field_name("resnet50", "gradcam", "layer4.0", "tabby cat")]
    assert label.layer == "layer4.0"


def test_bad_maps_are_refused_before_writing(dataset, tmp_path):
    sample = dataset.first()
    before = list(dataset.get_field_schema())
    wrong_size = make_heatmap((SIZE[0] + 1, SIZE[1]), method="xgradcam")
    with pytest.raises(ImageError, match="25x32"):
        store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE), wrong_size]),
                            heatmap_dir=tmp_path / "hm")
    nan = make_heatmap(SIZE, method="layercam")
    nan.map[3, 3] = np.nan
    with pytest.raises(ImageError, match="finite"):
        store.push_heatmaps(dataset, sample.id, make_result(SIZE, [nan]), heatmap_dir=tmp_path / "hm")
    # the result says 24x32 but the sample's image is not that size
    other = make_heatmap((10, 10))
    with pytest.raises(ImageError, match="the sample is 24x32"):
        store.push_heatmaps(dataset, sample.id, make_result((10, 10), [other]), heatmap_dir=tmp_path / "hm")
    _assert_nothing_written(dataset, tmp_path / "hm", before)


def test_unknown_sample_and_foreign_heatmap(dataset, tmp_path):
    result = make_result(SIZE, [make_heatmap(SIZE)])
    with pytest.raises(StoreError, match="no sample"):
        store.push_heatmaps(dataset, "0123456789abcdef01234567", result, heatmap_dir=tmp_path / "hm")
    with pytest.raises(StoreError, match="not part of this result"):
        store.push_heatmaps(dataset, dataset.first().id, result, heatmaps=[make_heatmap(SIZE)],
                            heatmap_dir=tmp_path / "hm")
    assert _files(tmp_path / "hm") == []


def test_push_a_subset_and_attach_a_finding(dataset, tmp_path):
    sample = dataset.first()
    h1, h2 = make_heatmap(SIZE, "gradcam"), make_heatmap(SIZE, "hirescam", seed=2)
    [field] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [h1, h2]), heatmaps=[h2],
                                  heatmap_dir=tmp_path / "hm")
    assert field == field_name("resnet50", "hirescam", "layer4", "tabby cat") == h2.field
    store.add_finding(dataset, sample.id, "background bias", "edges of the frame", heatmap_field=field)
    [finding] = store.list_findings(dataset)
    assert finding["heatmap_field"] == field and finding["note"] == "edges of the frame"


def test_pushed_fields_are_switched_on_in_the_app(dataset, tmp_path):
    sample = dataset.first()
    other = "foreign_heatmap"
    dataset.set_values(other, {sample.id: fo.Heatmap(map=np.zeros(SIZE, np.float32))}, key_field="id")
    dataset.set_values("gt", {sample.id: fo.Classification(label="cat")}, key_field="id")
    dataset.set_values("score", {sample.id: 0.5}, key_field="id")
    assert dataset.app_config.active_fields is None  # FiftyOne's default: dense labels unchecked
    [field] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE)]),
                                  heatmap_dir=tmp_path / "hm")
    config = fo.load_dataset(dataset.name).app_config
    # FiftyOne's default (label fields, not dense ones, not metadata or primitives) plus ours: an
    # exclusion list once switched every metadata field on over each thumbnail in the App grid.
    assert config.active_fields.exclude is False and config.active_fields.paths == ["gt", field]
    assert {"path": field, "name": "jet"} in config.color_scheme.colorscales  # drawn like the app

    # a user's explicit include list gets our new field appended, nothing else changes
    dataset.app_config.active_fields.exclude = False
    dataset.app_config.active_fields.paths = ["ground_truth"]
    dataset.save()
    [field2] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE, "layercam")]),
                                   heatmap_dir=tmp_path / "hm")
    assert fo.load_dataset(dataset.name).app_config.active_fields.paths == ["ground_truth", field2]
    assert field != field2

    # the exclusion list earlier versions wrote (other dense fields only) becomes the default list
    from fiftyone.core.odm.dataset import ActiveFields

    dataset.app_config.active_fields = ActiveFields(exclude=True, paths=[other])
    dataset.save()
    [field3] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE, "xgradcam")]),
                                   heatmap_dir=tmp_path / "hm")
    active = fo.load_dataset(dataset.name).app_config.active_fields
    # FiftyOne's defaults plus only the field just pushed: earlier maps no longer cover each thumbnail
    assert active.exclude is False and set(active.paths) == {"gt", field3}


def test_a_huge_image_computed_downscaled_is_stored_at_its_own_size(tmp_path):
    """Images over MAX_WORKING_SIDE are computed downscaled; the stored map must still have the
    file's size (it was refused, so such a sample could never be pushed)."""
    from camcore.images import MAX_WORKING_SIDE

    full = (60, MAX_WORKING_SIDE + 400)
    [path] = write_images(tmp_path / "big", ["wide.png"], size=full)
    ds = fo.Dataset(unique_name("huge"))
    ds.add_sample(fo.Sample(filepath=path))
    ds.compute_metadata()
    working = (59, MAX_WORKING_SIDE)
    h = make_heatmap(working)
    result = dataclasses.replace(make_result(working, [h]), original_size=full)
    try:
        [field] = store.push_heatmaps(ds, ds.first().id, result, heatmap_dir=tmp_path / "hm")
        with Image.open(ds.first()[field].map_path) as im:
            assert (im.height, im.width) == full
            stored = np.asarray(im, dtype=np.float64) / 65535
        assert abs(stored.max() - 1.0) < 1e-3 and stored.min() < 1e-3
    finally:
        ds.delete()


def test_untrained_and_smoothed_maps_never_replace_the_plain_trained_one(dataset, tmp_path):
    """They once shared the plain field: pushing an untrained map silently replaced the trained one."""
    sample = dataset.first()
    plain = make_heatmap(SIZE, seed=0)
    eigen = with_identity(make_heatmap(SIZE, seed=2), eigen_smooth=True)
    aug = with_identity(make_heatmap(SIZE, seed=4), aug_smooth=True)
    trained = make_result(SIZE, [plain, eigen, aug])
    plain_untrained = with_identity(plain, pretrained=False, weights="UNTRAINED")
    untrained = dataclasses.replace(make_result(SIZE, [plain_untrained]), pretrained=False, weights="UNTRAINED")
    fields = store.push_heatmaps(dataset, sample.id, trained, heatmap_dir=tmp_path)
    [field_untrained] = store.push_heatmaps(dataset, sample.id, untrained, heatmap_dir=tmp_path)
    base = field_name("resnet50", "gradcam", "layer4", "tabby cat")
    assert fields == [base, base + "_eig", base + "_aug"] and field_untrained == base + "_untr"
    assert [h.field for h in (plain, eigen, aug)] == fields  # what the UI checks first
    assert plain_untrained.field == field_untrained
    sample.reload()
    assert sample[base].pretrained is True and sample[field_untrained].pretrained is False
    assert sample[base + "_eig"].eigen_smooth and sample[base + "_aug"].aug_smooth
    assert sample[base].blank is False  # a map that is zero everywhere says so on its label
    assert dataset.get_field(base + "_untr").info["cam_explorer"]["variant"] == "untrained"


def test_a_blank_map_is_marked_on_its_label(dataset, tmp_path):
    h = dataclasses.replace(make_heatmap(SIZE), map=np.zeros(SIZE, np.float32), raw_range=(0.0, 0.0))
    [field] = store.push_heatmaps(dataset, dataset.first().id, make_result(SIZE, [h]), heatmap_dir=tmp_path)
    label = fo.load_dataset(dataset.name).first()[field]
    assert label.blank is True and label.raw_max == 0.0


def test_a_chosen_weights_file_gets_its_own_fields(dataset, tmp_path):
    """A fine-tuned checkpoint's maps once replaced the stock model's: the file's stem now names
    its fields, as it does the batch's."""
    sample = dataset.first()
    stock = make_result(SIZE, [make_heatmap(SIZE)])
    tuned_map = with_identity(make_heatmap(SIZE), weights="file finetuned-v2.pth", weights_tag="finetuned-v2")
    tuned = make_result(SIZE, [tuned_map], weights="file finetuned-v2.pth")
    [plain] = store.push_heatmaps(dataset, sample.id, stock, heatmap_dir=tmp_path)
    [mine] = store.push_heatmaps(dataset, sample.id, tuned, heatmap_dir=tmp_path)
    assert mine == plain + "_finetuned_v2" and tuned.heatmaps[0].field == mine
    sample.reload()
    assert sample[plain].weights == "ImageNet (torchvision)" and sample[mine].weights == "file finetuned-v2.pth"


def test_the_info_registry_forgets_fields_deleted_outside_cam_explorer(dataset, tmp_path):
    sample = dataset.first()
    [gone] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE)]), heatmap_dir=tmp_path)
    dataset.delete_sample_field(gone)
    [kept] = store.push_heatmaps(dataset, sample.id, make_result(SIZE, [make_heatmap(SIZE, "layercam")]),
                                 heatmap_dir=tmp_path)
    fresh = fo.load_dataset(dataset.name)
    assert list(fresh.info[store.MARK]["fields"]) == [kept]
    # and the App's CAM sidebar group lists only the field still there
    assert next(g.paths for g in fresh.app_config.sidebar_groups if g.name == "CAM heatmaps") == [kept]
