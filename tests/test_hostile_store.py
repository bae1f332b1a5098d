"""Hardening, hostile input through the store: an EXIF-rotated JPEG end to end, odd dataset
names. (Video datasets: test_store.py::test_video_dataset_is_refused; field collisions:
test_store_push.py::test_foreign_field_* and test_names_that_sanitise_alike_*.)"""
from __future__ import annotations

import cv2
import fiftyone as fo
import numpy as np
import pytest
from PIL import Image

from camcore import store
from camcore.errors import ImageError
from camcore.images import load_image
from fo_helpers import make_heatmap, make_result, unique_name, write_images


def test_exif_rotated_jpeg_heatmap_has_the_upright_shape(tmp_path):
    stored = np.full((20, 40, 3), 255, np.uint8)  # 40 wide, 20 high as stored
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed (by the App's browser, and by us) rotated: 20 wide, 40 high
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    ds = fo.Dataset(unique_name("exif"))
    try:
        ds.add_sample(fo.Sample(filepath=str(path)))
        ds.compute_metadata()
        sample = ds.first()
        image = load_image(sample.filepath)
        assert image.size == (40, 20)
        heatmap = make_heatmap(image.size)
        heatmap.map[:10, :] = 1.0  # mark the upright top
        [field] = store.push_heatmaps(ds, sample.id, make_result(image.size, [heatmap]), heatmap_dir=tmp_path / "maps")
        ds.reload()
        label = ds.first()[field]
        png = cv2.imread(label.map_path, cv2.IMREAD_UNCHANGED)
        assert png.shape == (40, 20), "the heatmap must have the upright (displayed) shape"
        assert png[:10].min() == 65535
        back = store.read_heatmap(ds, sample.id, field)
        assert back.shape == (40, 20)
        # A map in the stored (unrotated) orientation would not line up with the App: refused.
        sideways = make_heatmap((20, 40), method="layercam")
        with pytest.raises(ImageError, match="as the App shows it"):
            store.push_heatmaps(ds, sample.id, make_result((20, 40), [sideways]), heatmap_dir=tmp_path / "maps")
    finally:
        ds.delete()


@pytest.mark.parametrize("name", ["with spaces  and  tabs\t", "ünïcödé 猫 データ", "a/b\\c..d", "../../etc", "dots.and-dashes"])
def test_odd_dataset_names_push_inside_the_heatmap_dir(tmp_path, name):
    files = write_images(tmp_path / "img", ["a.png"], size=(24, 32))
    ds = fo.Dataset(f"{unique_name()} {name}")
    try:
        ds.add_sample(fo.Sample(filepath=files[0]))
        ds.compute_metadata()
        root = tmp_path / "maps"
        [field] = store.push_heatmaps(ds, ds.first().id, make_result((24, 32), [make_heatmap((24, 32))]),
                                      heatmap_dir=root)
        ds.reload()
        written = (tmp_path / "maps").resolve()
        path = ds.first()[field].map_path
        assert str(path).startswith(str(written)), f"{path} escapes {written}"
        assert [p for p in root.rglob("*.png")] and all(p.resolve().is_relative_to(written) for p in root.rglob("*"))
        assert store.read_heatmap(ds, ds.first().id, field).shape == (24, 32)
    finally:
        ds.delete()
