"""Hardening, hostile input through the store: an EXIF-rotated JPEG end to end, odd dataset
names. (Video datasets: test_store.py::test_video_dataset_is_refused; field collisions:
test_store_push.py::test_foreign_field_* and test_names_that_sanitise_alike_*.)"""
from __future__ import annotations

from pathlib import Path

import cv2
import fiftyone as fo
import numpy as np
import pytest
from fo_helpers import make_heatmap, make_result, unique_name, write_images
from PIL import Image

from camcore import store
from camcore.errors import ImageError
from camcore.images import load_image
from camcore.store import heatmaps


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


# "{u}" is a unique part (dataset names are unique); where it sits, the name starts as written.
ODD_NAMES = ["{u} with spaces  and  tabs\t", "{u} ünïcödé 猫 データ", "{u} a/b\\c..d", "{u} ../../etc",
             "{u} dots.and-dashes", "../{u}", "../../../../etc/{u}", "/{u}", "/etc/{u}", "/..{u}/../..",
             "..\\..\\{u}", "~/{u}", "..{u}"]


@pytest.mark.parametrize("template", ODD_NAMES)
def test_odd_dataset_names_push_inside_the_heatmap_dir(tmp_path, template):
    name = template.format(u=unique_name())
    root = tmp_path / "maps"
    # Checked before pushing: a regression must fail here, not write outside the root.
    planned = store.heatmap_path(name, "cam_x", "0" * 24, heatmap_dir=root)
    assert planned.resolve().is_relative_to(root.resolve()), planned
    files = write_images(tmp_path / "img", ["a.png"], size=(24, 32))
    ds = fo.Dataset(name)
    try:
        ds.add_sample(fo.Sample(filepath=files[0]))
        ds.compute_metadata()
        [field] = store.push_heatmaps(ds, ds.first().id, make_result((24, 32), [make_heatmap((24, 32))]),
                                      heatmap_dir=root)
        ds.reload()
        written = root.resolve()
        path = Path(ds.first()[field].map_path)
        assert path.resolve().is_relative_to(written), f"{path} escapes {written}"
        assert [p for p in root.rglob("*.png")]
        assert all(p.resolve().is_relative_to(written) for p in root.rglob("*"))
        images = (tmp_path / "img").resolve()
        assert not [p for p in tmp_path.rglob("*.png") if not p.resolve().is_relative_to(written)
                    and not p.resolve().is_relative_to(images)], "a PNG outside the root"
        assert store.read_heatmap(ds, ds.first().id, field).shape == (24, 32)
    finally:
        ds.delete()


@pytest.mark.parametrize("name", ["..", ".", "/", "../..", "", " ", "~", "../x", "/etc/passwd", "..\\..",
                                  "a/../../b", "\x00", "-rf"])
def test_dataset_folder_names_stay_one_folder_inside_the_root(tmp_path, name):
    """Names FiftyOne itself refuses ("..", "/") too: the folder is one plain path component."""
    part = heatmaps._dataset_dirname(name)
    assert part not in ("", ".", "..") and "/" not in part and "\\" not in part and "\x00" not in part, part
    path = store.heatmap_path(name, "cam_f", "0" * 24, heatmap_dir=tmp_path)
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert path.parent.parent.parent == tmp_path.resolve()
