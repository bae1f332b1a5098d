"""demo_data: the offline demo dataset, and quickstart failing fast when offline (real MongoDB)."""
from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import fiftyone as fo
import pytest
from PIL import Image

from camcore import demo_data, paths
from camcore.errors import StoreError

EXPECTED_LABELS = {"person", "cat", "cup", "rocket", "motorcycle", "horse"}


@pytest.fixture
def demo():
    if fo.dataset_exists(demo_data.DEMO_DATASET_NAME):  # each test starts from nothing
        fo.load_dataset(demo_data.DEMO_DATASET_NAME).delete()
    yield demo_data.ensure_demo_dataset()


def test_demo_is_built_from_package_images(demo):
    assert demo.name == "cam-explorer-demo" and demo.persistent and demo.media_type == "image"
    assert len(demo) == len(demo_data.DEMO_IMAGES)
    assert set(demo.distinct("ground_truth.label")) == EXPECTED_LABELS
    media = paths.demo_media_dir()
    for sample in demo:
        assert Path(sample.filepath).parent == media and os.path.isfile(sample.filepath)
        assert sample.tags and sample.ground_truth.label
        with Image.open(sample.filepath) as im:
            assert im.mode == "RGB" and im.format in ("PNG", "JPEG")
            assert (im.height, im.width) == (sample.metadata.height, sample.metadata.width)
    by_name = {Path(s.filepath).name: s.ground_truth.label for s in demo}
    assert by_name["chelsea.png"] == "cat" and by_name["coffee.png"] == "cup"
    assert by_name["grace_hopper.jpg"] == "person" and by_name["astronaut.png"] == "person"
    with Image.open(media / "horse.png") as im:  # RGBA silhouette flattened onto white
        assert im.getpixel((0, 0)) == (255, 255, 255)


def test_demo_is_persistent_and_reused(demo, fork_server):
    ids = sorted(demo.values("id"))
    again = demo_data.ensure_demo_dataset()
    assert sorted(again.values("id")) == ids  # not rebuilt
    code = textwrap.dedent("""
        import fiftyone as fo
        from camcore import demo_data
        ds = demo_data.ensure_demo_dataset()
        print(",".join(sorted(ds.values("id"))))
    """)
    proc = fork_server.run(code, [], dict(os.environ))  # another process (forked: conftest) finds it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].split(",") == ids


def test_deleted_media_file_is_restored_keeping_the_samples(demo):
    ids = sorted(demo.values("id"))
    victim = Path(demo.first().filepath)
    victim.unlink()
    again = demo_data.ensure_demo_dataset()
    assert victim.is_file()
    with Image.open(victim) as im:
        im.load()
    assert sorted(again.values("id")) == ids


def test_deleted_demo_sample_is_added_back_keeping_the_others(demo):
    victim = demo.first()
    kept = set(demo.values("id")) - {victim.id}
    demo.delete_samples(victim)
    again = demo_data.ensure_demo_dataset()
    assert len(again) == len(demo_data.DEMO_IMAGES)
    assert kept < set(again.values("id"))  # repaired in place, not rebuilt
    assert victim.filepath in again.values("filepath")
    assert all(os.path.isfile(p) for p in again.values("filepath"))


def test_demo_sample_pointing_at_another_file_is_re_pointed(demo, tmp_path):
    moved = tmp_path / "elsewhere.png"
    Image.new("RGB", (4, 4)).save(moved)
    sample = demo.first()
    expected_path, sid = sample.filepath, sample.id
    sample.filepath = str(moved)
    sample.save()
    again = demo_data.ensure_demo_dataset()
    assert again[sid].filepath == expected_path and str(moved) not in again.values("filepath")
    assert again[sid].metadata.width != 4  # metadata recomputed for the real image
    assert len(again) == len(demo_data.DEMO_IMAGES)


def test_users_own_samples_and_fields_survive_demo_data(demo, tmp_path):
    """`demo-data` once deleted the whole dataset when it held anything but the 8 stock
    samples: a user's sample, heatmaps and findings were lost without a word."""
    own = tmp_path / "mine.png"
    Image.new("RGB", (32, 24), (9, 9, 9)).save(own)
    mine = fo.Sample(filepath=str(own), note="keep me")
    demo.add_sample(mine)
    ids = set(demo.values("id"))
    again = demo_data.ensure_demo_dataset()
    assert set(again.values("id")) == ids and again[mine.id].note == "keep me"


def test_another_home_re_points_the_demo_instead_of_rebuilding(demo, tmp_path, monkeypatch):
    ids = set(demo.values("id"))
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path / "other-home"))
    again = demo_data.ensure_demo_dataset()
    assert set(again.values("id")) == ids
    assert all(p.startswith(str(tmp_path / "other-home")) and os.path.isfile(p) for p in again.values("filepath"))


def test_a_foreign_dataset_with_the_demo_name_is_never_touched(tmp_path):
    if fo.dataset_exists(demo_data.DEMO_DATASET_NAME):
        fo.load_dataset(demo_data.DEMO_DATASET_NAME).delete()
    theirs = fo.Dataset(demo_data.DEMO_DATASET_NAME, persistent=True)
    own = tmp_path / "theirs.png"
    Image.new("RGB", (16, 16)).save(own)
    theirs.add_sample(fo.Sample(filepath=str(own)))
    try:
        with pytest.raises(StoreError, match="did not build"):
            demo_data.ensure_demo_dataset()
        assert fo.load_dataset(demo_data.DEMO_DATASET_NAME).values("filepath") == [str(own)]
    finally:
        fo.load_dataset(demo_data.DEMO_DATASET_NAME).delete()


def test_a_build_that_died_before_its_info_is_finished(demo):
    info = dict(demo.info)
    info.pop("cam_explorer_demo")
    demo.info = info
    demo.save()
    demo.delete_samples(demo.skip(4))
    again = demo_data.ensure_demo_dataset()
    assert len(again) == len(demo_data.DEMO_IMAGES) and "cam_explorer_demo" in again.info


def test_quickstart_fails_fast_when_its_host_is_unreachable(monkeypatch):
    with socket_closed_port() as port:
        monkeypatch.setattr(demo_data, "_QUICKSTART_HOST", ("127.0.0.1", port))
        start = time.monotonic()
        with pytest.raises(StoreError, match="internet"):
            demo_data.load_quickstart()
        assert time.monotonic() - start < 10


def socket_closed_port():
    """A loopback port nobody listens on (bound, never listening, so connects are refused)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def ctx():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        try:
            yield s.getsockname()[1]
        finally:
            s.close()

    return ctx()


def test_heatmaps_pushed_onto_the_demo_survive_ensure(demo):
    from camcore import store
    from fo_helpers import make_heatmap, make_result

    sample = store.get_sample(demo, "coffee.png")
    size = (sample.metadata.height, sample.metadata.width)
    [field] = store.push_heatmaps(demo, sample.id, make_result(size, [make_heatmap(size)]))
    again = demo_data.ensure_demo_dataset()
    assert again[sample.id][field] is not None and field in store.heatmap_fields(again)


def test_demo_has_one_object_box_per_sample_for_bias_checks(demo):
    from camcore import store

    for sample in demo:
        (det,) = sample.objects.detections
        assert det.label == sample.ground_truth.label
        x, y, w, h = det.bounding_box
        assert 0 <= x < x + w <= 1 and 0 <= y < y + h <= 1 and w * h > 0.01
    assert "objects" in store.label_fields(demo)
    boxes = store.boxes_by_sample(demo, "objects", "person")
    assert len(boxes) == 3  # astronaut, grace_hopper, cameraman
