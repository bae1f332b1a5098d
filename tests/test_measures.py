"""Measures stored as fields beside a batch's heatmaps (camcore.measures, camcore.store.measures),
against a real mongod: equal to the app's one-sample values, resumable, bad input refused."""
from __future__ import annotations

import shutil

import fiftyone as fo
import pytest
from cam_support import skimage_data
from fo_helpers import coded_identity, unique_name

from camcore import batch, judge
from camcore.batch import BatchOptions
from camcore.engine import Explainer
from camcore.errors import StoreError
from camcore.identity import HeatmapIdentity, measure_of
from camcore.images import load_image
from camcore.measures import MeasureOptions
from camcore.models import get_spec, load_model
from camcore.store import measures as measure_store

MODEL = "efficientnet_lite0"
CAT_BOX = [0.25, 0.05, 0.5, 0.9]  # chelsea.png: the cat's head and body


def _identity() -> HeatmapIdentity:
    return coded_identity(model=MODEL, method="gradcam", layer=get_spec(MODEL).default_layer, target=batch.PREDICTED)


@pytest.fixture
def dataset(tmp_path):
    samples = []
    for i, name in enumerate(["chelsea.png", "coffee.png", "astronaut.png", "horse.png"]):
        path = tmp_path / f"{i}-{name}"
        shutil.copy(skimage_data(name), path)
        s = fo.Sample(filepath=str(path))
        s["ground_truth"] = fo.Detections(detections=[fo.Detection(label="cat", bounding_box=CAT_BOX)])
        s["note"] = "a string"
        samples.append(s)
    ds = fo.Dataset(unique_name("measures"))
    ds.add_samples(samples)
    yield ds
    ds.delete()


def _options(**kw) -> BatchOptions:
    return BatchOptions(MODEL, methods=["gradcam"], chunk=2,
                        measures=MeasureOptions(object_field="ground_truth", **kw))


def test_identity_names_measure_fields_from_the_heatmap_name():
    ident = _identity()
    fields = ident.measure_fields()
    assert fields["score"] == "camm_score_" + ident.field_name[len("cam_"):]  # it fits: whole
    assert fields["share"] == "camm_share_grad_head_effl"  # indexed: beside the App's index icon, cut
    # a name cut to fit the App's sidebar still reads as its measure; its map is in its info
    assert fields["remove"] == "camm_remove_grad_head_effl" and measure_of(fields["remove"])[0] == "remove"
    assert all(measure_of(f)[0] == m for m, f in fields.items())
    assert measure_of(ident.field_name) is None  # a heatmap field is never read as a measure


def test_stored_measures_equal_the_apps_one_sample_values(dataset):
    report = batch.run_batch(dataset, _options(faithfulness=True))
    assert (report.done, report.failed) == (4, [])
    fields = measure_store.measure_runs(dataset)[_identity().field_name]
    chelsea = dataset.match(fo.ViewField("filepath").ends_with("chelsea.png")).first()
    stored = {m: chelsea[f] for m, f in fields.items()}
    assert stored["about"] == "t=0.5;obj=ground_truth;f=1"
    # The app: Compare's ranking (share on the label boxes) and Compare's faithfulness, one sample.
    model = load_model(MODEL)
    layer = get_spec(MODEL).default_layer
    item = judge.SampleItem(chelsea.id, chelsea.filepath, (tuple(CAT_BOX),))
    ex = Explainer(model, load_image(chelsea.filepath), None, (layer,))
    row = judge.rank_by_share_inside(model, [item], "gradcam", layer, ex.target.name)[0]
    faith = ex.faithfulness("gradcam", layer)
    assert stored["share"] == pytest.approx(row.share_inside, abs=1e-3)
    assert stored["bg"] == row.background_dominated
    assert stored["keep"] == pytest.approx(faith.keep_relative, abs=1e-3)
    assert stored["remove"] == pytest.approx(faith.remove_relative, abs=1e-3)
    assert stored["score"] == pytest.approx(faith.original_score, rel=1e-3)
    assert stored["conf"] == pytest.approx(ex.prediction.top.score, rel=1e-3)
    # No box names the coffee's class: no share, no flag, but the scores are there.
    coffee = dataset.match(fo.ViewField("filepath").ends_with("coffee.png")).first()
    assert coffee[fields["share"]] is None and coffee[fields["bg"]] is None
    assert coffee[fields["keep"]] is not None


def test_the_targets_score_is_stored_without_faithfulness(dataset):
    """Issue 25 item 1 lists the target's score among the stored measures: it comes from the pass
    itself, so a default batch (faithfulness off) stores it too, equal to the app's one-sample value."""
    batch.run_batch(dataset.match(fo.ViewField("filepath").ends_with("chelsea.png")), _options(faithfulness=False))
    fields = measure_store.measure_runs(dataset)[_identity().field_name]
    chelsea = dataset.match(fo.ViewField("filepath").ends_with("chelsea.png")).first()
    assert chelsea[fields["keep"]] is None and chelsea[fields["remove"]] is None
    ex = Explainer(load_model(MODEL), load_image(chelsea.filepath), None, (get_spec(MODEL).default_layer,))
    assert chelsea[fields["score"]] == pytest.approx(ex.original_score, rel=1e-3)


def test_a_segmentation_fields_share_equals_the_apps_one_sample_value(tmp_path):
    """The object from a ground-truth Segmentation field (mask targets name its classes): the share
    stored is Compare's share inside the mask of the explained class's label ("cat" for Egyptian
    cat); with --object-label '*' every labelled pixel is the object."""
    import numpy as np

    path = str(tmp_path / "chelsea.png")
    shutil.copy(skimage_data("chelsea.png"), path)
    h, w = load_image(path).rgb.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    mask[int(0.05 * h):int(0.95 * h), int(0.25 * w):int(0.75 * w)] = 1
    mask[int(0.8 * h):, :int(0.2 * w)] = 2  # the sofa, bottom left
    ds = fo.Dataset(unique_name("seg-measures"))
    ds.add_sample(fo.Sample(filepath=path, seg=fo.Segmentation(mask=mask)))
    ds.mask_targets = {"seg": {1: "cat", 2: "sofa"}}
    ds.save()
    model, layer = load_model(MODEL), get_spec(MODEL).default_layer
    try:
        for label, obj in (("", mask == 1), ("*", mask > 0)):
            batch.run_batch(ds, BatchOptions(MODEL, methods=["gradcam"], layers=[layer],
                                             measures=MeasureOptions(object_field="seg", object_label=label)))
            fields = measure_store.measure_runs(ds)[_identity().field_name]
            sample = ds.first()
            ex = Explainer(model, load_image(path), None, (layer,))
            row = judge.rank_by_share_inside(model, [judge.SampleItem(sample.id, path, mask=obj)], "gradcam", layer,
                                             ex.target.name)[0]
            assert sample[fields["share"]] == pytest.approx(row.share_inside, abs=1e-3)
            assert sample[fields["bg"]] == row.background_dominated
        assert sample[fields["about"]] == "t=0.5;obj=seg[*];f=0"
    finally:
        ds.delete()


def test_resume_fills_only_the_missing_measures(dataset):
    batch.run_batch(dataset, _options(faithfulness=False))
    fields = measure_store.measure_runs(dataset)[_identity().field_name]
    before = dict(zip(*dataset.values(["id", fields["share"]]), strict=True))
    ids = dataset.values("id")[:2]
    dataset.select(ids).set_field(fields["about"], None).save()  # as if the run had died before its measures
    dataset.select(ids).set_field(fields["share"], None).save()
    report = batch.run_batch(dataset, _options(faithfulness=False))
    assert (report.done, report.skipped) == (2, 2)
    assert dict(zip(*dataset.values(["id", fields["share"]]), strict=True)) == pytest.approx(before)
    # Other settings (a threshold): every sample is measured again, nothing mixed.
    report = batch.run_batch(dataset, _options(faithfulness=False, threshold=0.9))
    assert report.done == 4
    assert set(dataset.values(fields["about"])) == {"t=0.9;obj=ground_truth;f=0"}


def test_a_measure_field_deleted_in_the_app_is_declared_and_filled_again(dataset):
    batch.run_batch(dataset, _options(faithfulness=False))
    fields = measure_store.measure_runs(dataset)[_identity().field_name]
    dataset.delete_sample_field(fields["about"])
    assert "about" not in measure_store.measure_runs(dataset)[_identity().field_name]
    report = batch.run_batch(dataset, _options(faithfulness=False))
    assert report.done == 4
    assert None not in dataset.values(fields["about"])


def test_a_share_field_deleted_or_renamed_in_the_app_is_filled_again_by_the_next_batch(dataset):
    """Not only `about`: with the share field deleted (then renamed), the next batch with the same
    settings measures again (it re-declared the field and skipped every sample: 0 done, shares None)."""
    batch.run_batch(dataset, _options(faithfulness=False))
    fields = measure_store.measure_runs(dataset)[_identity().field_name]
    before = dataset.values(fields["share"])
    assert any(v is not None for v in before)
    dataset.delete_sample_field(fields["share"])
    report = batch.run_batch(dataset, _options(faithfulness=False))
    assert report.done == 4
    assert dataset.values(fields["share"]) == pytest.approx(before)
    dataset.rename_sample_field(fields["bg"], "my_flag")  # renamed: the user's field now, no measure
    report = batch.run_batch(dataset, _options(faithfulness=False))
    assert report.done == 4
    assert dataset.values(fields["bg"]) == dataset.values("my_flag")
    assert batch.run_batch(dataset, _options(faithfulness=False)).done == 0  # measured: the resume skips


def test_an_object_field_of_the_wrong_type_fails_in_one_line_before_anything_is_written(dataset):
    with pytest.raises(StoreError, match="Segmentation masks or Detections boxes") as err:
        batch.run_batch(dataset, BatchOptions(MODEL, measures=MeasureOptions(object_field="note")))
    assert "\n" not in str(err.value)
    assert dataset.get_field(_identity().field_name) is None
    with pytest.raises(StoreError, match="no field 'nope'"):
        batch.run_batch(dataset, BatchOptions(MODEL, measures=MeasureOptions(object_field="nope")))


def test_cli_batch_measures_bad_object_field_is_one_line_and_writes_nothing(dataset, capsys):
    # cli.main in this process: a real `python -m camcore batch` runs in test_batch.py
    # (test_cli_batch_json) and test_cli.py proves a process adds nothing to stderr; a process start
    # here cost ~6.5 s of CPU (issue 26 item 7)
    from camcore import cli

    capsys.readouterr()
    code = cli.main(["batch", "--dataset", dataset.name, "--measures", "--object-field", "note"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert lines == ["error: the object field must hold Segmentation masks or Detections boxes, not StringField"]
    dataset.reload()
    assert dataset.get_field(_identity().field_name) is None
    assert cli.main(["batch", "--dataset", dataset.name, "--object-field", "ground_truth"]) == 2
    assert "go with --measures" in capsys.readouterr().err


def test_cli_batch_measures_leave_faithfulness_off_unless_asked(dataset, capsys):
    """Issue 25 cost goal (<= 1.3x a batch): keep/remove cost 2.8x, so a plain --measures skips them;
    --faithfulness stores them; both switches together are one usage line."""
    from camcore import cli

    # in this process, as above: the stored fields are what this test reads
    argv = ["batch", "--dataset", dataset.name, "--measures", "--object-field", "ground_truth",
            "--filename-contains", "chelsea"]
    capsys.readouterr()
    assert cli.main(argv) == 0, capsys.readouterr().err
    dataset.reload()
    fields = measure_store.measure_runs(dataset)[_identity().field_name]
    assert set(dataset.distinct(fields["about"])) == {"t=0.5;obj=ground_truth;f=0"}
    assert dataset.distinct(fields["keep"]) == [] and dataset.distinct(fields["remove"]) == []
    assert len(dataset.distinct(fields["share"])) == 1
    capsys.readouterr()
    assert cli.main([*argv, "--faithfulness", "--no-faithfulness"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_cli_batch_measures_of_a_classifier_without_an_object_field_say_no_share_is_stored(dataset, capsys):
    """A classifier has no mask or box of its own: `batch --measures` with no --object-field stores no
    share, and says so (it said nothing; the Audit page then had no chart to draw)."""
    from camcore import cli

    capsys.readouterr()
    assert cli.main(["batch", "--dataset", dataset.name, "--measures", "--filename-contains", "chelsea"]) == 0
    err = capsys.readouterr().err
    assert "note: a classifier has no mask or box of its own: with no --object-field no share" in err
    capsys.readouterr()
    assert cli.main(["batch", "--dataset", dataset.name, "--measures", "--object-field", "ground_truth",
                     "--filename-contains", "chelsea"]) == 0
    assert "note: a classifier" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_detectors_share_is_on_the_box_it_explains_when_no_object_field_is_given(tmp_path):
    """With no object field, a detector's own box is the object (as a segmenter's own mask): the
    stored share is the heatmap's mass inside the explained box, and its confidence is that box's
    score (the Audit page's scatter plot)."""
    import numpy as np

    from camcore import metrics
    from camcore.store import read_heatmap

    rng = np.random.default_rng(0)
    rgb = (rng.random((96, 128, 3)) * 60).astype(np.uint8)
    rgb[20:60, 30:90] = (220, 40, 40)
    from PIL import Image

    Image.fromarray(rgb).save(tmp_path / "a.png")
    ds = fo.Dataset(unique_name("det-measures"))
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "a.png")))
    model = "ssdlite320_mobilenet_v3_large"
    try:
        report = batch.run_batch(ds, BatchOptions(model, weights="untrained", methods=["eigencam"],
                                                  target_rule="top@0", heatmap_dir=str(tmp_path / "hm"),
                                                  measures=MeasureOptions(faithfulness=False)))
        assert (report.done, report.failed) == (1, [])
        ((heatmap, fields),) = measure_store.measure_runs(ds).items()
        sample = ds.first()
        label = sample[heatmap]
        x, y, w, h = label.box
        stored = read_heatmap(ds, sample.id, heatmap)
        inside = metrics.boxes_mask(stored.shape[:2], [[x, y, w, h]])
        assert sample[fields["share"]] == pytest.approx(metrics.mass_inside(stored, inside), abs=0.02)
        assert sample[fields["bg"]] == (sample[fields["share"]] < 0.5)
        assert sample[fields["conf"]] == pytest.approx(label.box_score)
        assert isinstance(sample[fields["score"]], float)  # the explained box's score target, from the pass
    finally:
        ds.delete()


@pytest.mark.slow
def test_a_trained_detectors_map_is_measured_on_the_box_it_explains():
    """The toy detector (trained on one shape per image): Eigen-CAM's mass is mostly inside the box
    it explains, and the measure says so (share, confidence = the box's score)."""
    from detector_support import image, loaded_detector

    from camcore import measures

    detector = loaded_detector()
    img, _box, _label = image(3)
    ex = Explainer(detector, img, "top", ("conv2",))
    h = ex.heatmap("eigencam", "conv2")
    mask, source = judge.object_mask(ex, judge.SampleItem("", ""))
    assert source == "explained box" and mask is not None
    x0, y0, x1, y1 = (int(round(v)) for v in ex.target.boxes[0])
    assert mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1].all() and mask.sum() < mask.size / 2
    got = measures.measure(ex, h, None, MeasureOptions())
    assert got["share"] > 0.5 and got["bg"] is False and got["conf"] == pytest.approx(ex.target.score)
