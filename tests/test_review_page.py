"""pages/review.py in-process (AppTest): the queue worst first, next/previous and the position in
the URL, a finding recorded, a missing map and a stale one (other weights) offered to compute."""
from __future__ import annotations

import shutil

import fiftyone as fo
import pytest
from app_support import APP, TIMEOUT, run
from audit_support import IDENTITY, audited_dataset
from cam_support import skimage_data
from fo_helpers import unique_name
from streamlit.testing.v1 import AppTest

from camcore import batch
from camcore.batch import BatchOptions
from camcore.measures import MeasureOptions
from camcore.store import audit

pytestmark = [pytest.mark.slow]


def _review(ds, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["dataset"] = ds.name
    for k, v in params.items():
        at.query_params[k] = v
    run(at)
    at.switch_page("pages/review.py")
    return run(at, allow_errors=False)


def _headline(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Reviewed"))


@pytest.fixture
def audited(tmp_path):
    ds, fields = audited_dataset(tmp_path, n=12)
    ds.persistent = True
    yield ds, fields
    ds.delete()


def test_queue_worst_first_steps_records_and_keeps_its_place_in_the_url(audited):
    ds, fields = audited
    at = _review(ds, reviewed="2")
    assert _headline(at).startswith("**Reviewed 2 of 12**")
    assert "`j` next sample" in _headline(at) and "`f` record the finding" in _headline(at)
    assert at.query_params["reviewed"] == "2"
    at.button(key="review_next").click()
    run(at, allow_errors=False)
    assert _headline(at).startswith("**Reviewed 3 of 12**") and at.query_params["reviewed"] == "3"
    (run_,) = audit.runs(ds)
    third, _path = audit.worst_first(ds, run_, 2, 1)[0]
    shares = sorted(ds.values(fields["share"]))
    explained = ds[third][IDENTITY.field_name].target  # what the map is about, first
    assert any(t.value.startswith(f"the map explains: {explained}\nshare on the object: {shares[2]:.3f}\n")
               for t in at.text)
    assert any("measured with: share on the explained class's object in objects · background-dominated below "
               "0.5 · faithfulness on" in t.value for t in at.text)
    at.selectbox(key="review_tag").set_value("background bias")
    at.text_input(key="review_note").input("looks at the sofa")
    at.button(key="review_record").click()
    run(at, allow_errors=False)
    ds.reload()
    assert "cam:background-bias" in ds[third].tags
    assert ds[third]["cam_findings"].classifications[-1].note == "looks at the sofa"


def test_a_links_run_opens_that_runs_queue_at_its_place(audited):
    """A shared link /review?run=<field>&reviewed=3 is the third sample of THAT run's queue (the
    URL's run= was written but not read: the first run alphabetically opened, at the link's place
    in another queue); a run the dataset does not have is said in one line."""
    import dataclasses

    from audit_support import add_run

    ds, _fields = audited
    later = dataclasses.replace(IDENTITY, pretrained=False)  # an untrained twin: its name sorts after
    later_fields = add_run(ds, later, seed=7)
    assert audit.runs(ds)[0].heatmap == IDENTITY.field_name  # the default is the other run
    at = _review(ds, run=later.field_name, reviewed="3")
    assert at.selectbox(key="audit_run").value == later.field_name
    assert _headline(at).startswith("**Reviewed 3 of 12**")
    assert at.query_params["run"] == later.field_name and at.query_params["reviewed"] == "3"
    third_share = sorted(ds.values(later_fields["share"]))[2]
    assert any(f"share on the object: {third_share:.3f}" in t.value for t in at.text)
    at = _review(ds, run="cam_no_such_run")
    (line,) = [w.value.replace("\\", "") for w in at.warning]
    assert line == f"No heatmap run cam_no_such_run with stored measures in this dataset: showing {IDENTITY.field_name}."


def test_a_new_narrowing_starts_its_queue_at_the_worst(audited):
    """Reviewed 5 of 12, then the view narrowed (a click on the Audit page): the new queue starts at
    its first, worst sample (it kept the old place: "Reviewed 4 of 4" skipped the 3 worst)."""
    ds, _fields = audited
    at = _review(ds, reviewed="5")
    assert _headline(at).startswith("**Reviewed 5 of 12**")
    (run_,) = audit.runs(ds)
    at.session_state["view_narrow"] = audit.class_narrow(run_, "cup")
    run(at, allow_errors=False)
    assert _headline(at).startswith("**Reviewed 1 of 4**") and at.query_params["reviewed"] == "1"
    at.button(key="review_next").click()  # the same queue: its place is kept
    run(at, allow_errors=False)
    assert _headline(at).startswith("**Reviewed 2 of 4**")


def test_a_missing_map_says_so_and_offers_to_compute(audited):
    ds, fields = audited
    (run_,) = audit.runs(ds)
    worst, _ = audit.worst_first(ds, run_, 0, 1)[0]
    ds.select(worst).set_field(IDENTITY.field_name, None).save()
    at = _review(ds)
    assert any(w.value.startswith("No stored heatmap for this sample") for w in at.warning)
    assert at.button(key="review_compute")


def test_a_stale_map_says_which_weights_made_it_and_computing_it_clears_that(tmp_path):
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(skimage_data(name), tmp_path / name)
    ds = fo.Dataset(unique_name("stale"), persistent=True)
    ds.add_samples([fo.Sample(filepath=str(tmp_path / n)) for n in ("chelsea.png", "coffee.png")])
    try:
        batch.run_batch(ds, BatchOptions("efficientnet_lite0", methods=["gradcam"], layers=["head"],
                                         measures=MeasureOptions(faithfulness=False)))
        field = IDENTITY.field_name
        ds.set_field(f"{field}.weights", "an older checkpoint").save()
        ds.set_field(f"{field}.weights_sha256", "0" * 64).save()
        at = _review(ds)
        (line,) = [w.value for w in at.warning]
        assert line.startswith("The stored heatmap is stale\\: made with an older checkpoint")
        at.button(key="review_compute").click()
        run(at, allow_errors=False)
        assert any("Computed the map and its measures again" in i.value for i in at.info), [i.value for i in [*at.info, *at.warning, *at.error, *at.success]]
        assert not at.warning
        assert set(ds.values(f"{field}.weights")) != {"an older checkpoint"}
    finally:
        ds.delete()


def test_a_weights_files_map_is_stale_when_the_file_changed_not_when_the_sidebar_shows_other_weights(tmp_path):
    """A run made with a weights file (field ..._ft): with the sidebar on the model's own weights its
    maps are not "stale" (they were judged against the sidebar's weights, and Compute refused: "the
    sidebar's weights would write another field"); once a checkpoint is saved over ft.pth they are,
    and Compute it now remakes them with the file as it is now, whatever the sidebar shows."""
    import torch

    from camcore import weights
    from camcore.models import load_model

    shutil.copy(skimage_data("chelsea.png"), tmp_path / "chelsea.png")
    folder = weights.weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ft.pth"
    state = load_model("efficientnet_lite0").module.state_dict()
    torch.save(state, path)
    ds = fo.Dataset(unique_name("stale-file"), persistent=True)
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "chelsea.png")))
    try:
        batch.run_batch(ds, BatchOptions("efficientnet_lite0", weights=str(path), methods=["gradcam"],
                                         layers=["head"], measures=MeasureOptions(faithfulness=False)))
        (run_,) = audit.runs(ds)
        assert run_.heatmap.endswith("_ft")
        at = _review(ds)  # the sidebar: the model's own weights
        assert not at.warning, [w.value for w in at.warning]
        torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, path)
        at = _review(ds)
        (line,) = [w.value.replace("\\", "") for w in at.warning]
        assert line.startswith("The stored heatmap is stale: made with file ft.pth as it was then (sha256 "), line
        at.button(key="review_compute").click()
        run(at, allow_errors=False)
        assert any("Computed the map and its measures again" in i.value for i in at.info), [i.value for i in at.info]
        assert not at.warning
        ds.reload()
        assert ds.first()[run_.heatmap].weights_sha256 == weights.file_sha256(path)
        path.unlink()  # its weights file gone: nothing to compare with, not "stale" against other weights
        at = _review(ds)
        assert not at.warning, [w.value for w in at.warning]
    finally:
        ds.delete()
        path.unlink(missing_ok=True)


def test_mixed_settings_are_refused_in_one_line_and_nothing_can_be_recorded(audited):
    """Worst first over shares measured with different settings (another object, another
    threshold) would rank unlike numbers together: one line, no queue, no Record button."""
    ds, fields = audited
    ds.take(3, seed=0).set_field(fields["about"], "t=0.3;obj=model;f=0").save()
    at = _review(ds)
    (line,) = [w.value.replace("\\", "") for w in at.warning]  # as shown: markdown escapes dropped
    assert line.startswith("Measures made with different settings are mixed in this view (9 samples with ")
    assert "\n" not in line
    assert not [b for b in at.button if b.key == "review_record"]
    assert not [m for m in at.markdown if m.value.startswith("**Reviewed")]


def test_computing_with_an_object_field_of_the_wrong_type_says_one_line_and_keeps_the_sample(tmp_path):
    """The measures were made on the `objects` boxes; since then `objects` became a text field.
    Compute it now: one line, nothing written, and the sample (its image) still on the page."""
    shutil.copy(skimage_data("chelsea.png"), tmp_path / "chelsea.png")
    box = fo.Detection(label="cat", bounding_box=[0.2, 0.2, 0.6, 0.7])
    ds = fo.Dataset(unique_name("wrongtype"), persistent=True)
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "chelsea.png"), objects=fo.Detections(detections=[box])))
    try:
        batch.run_batch(ds, BatchOptions("efficientnet_lite0", methods=["gradcam"], layers=["head"],
                                         measures=MeasureOptions(object_field="objects", faithfulness=False)))
        ds.set_field(IDENTITY.field_name, None).save()  # the map is missing: Compute it now is offered
        ds.delete_sample_field("objects")
        ds.add_sample_field("objects", fo.StringField)
        ds.set_values("objects", ["a note"])
        at = _review(ds)
        at.button(key="review_compute").click()
        run(at, allow_errors=False)
        (line,) = [i.value.replace("\\", "") for i in at.info]
        assert line.startswith("Could not compute it: the object field must hold Segmentation masks or Detections")
        assert not at.error and not at.exception
        assert at.button(key="review_compute")  # the sample is still there, with its offer
        assert ds.values(IDENTITY.field_name) == [None]  # nothing written
    finally:
        ds.delete()


def test_the_note_is_emptied_on_another_sample_the_tag_stays(audited):
    """A note typed for one sample was still in the box on the next one (Next/J, Prev/K, or after
    Record/F then Next), so the next finding went in with the previous sample's note."""
    ds, _fields = audited
    (run_,) = audit.runs(ds)
    at = _review(ds)
    at.selectbox(key="review_tag").set_value("background bias")
    at.text_input(key="review_note").input("looks at the sofa")
    at.button(key="review_next").click()
    run(at, allow_errors=False)
    assert _headline(at).startswith("**Reviewed 2 of 12**")
    assert at.text_input(key="review_note").value == ""
    assert at.selectbox(key="review_tag").value == "background bias"  # the tag may stay
    at.text_input(key="review_note").input("second sample's note")
    at.button(key="review_prev").click()
    run(at, allow_errors=False)
    assert at.text_input(key="review_note").value == ""
    at.text_input(key="review_note").input("first sample's note")
    at.button(key="review_record").click()
    run(at, allow_errors=False)
    at.button(key="review_next").click()
    run(at, allow_errors=False)
    assert at.text_input(key="review_note").value == ""
    at.button(key="review_record").click()  # the second sample's finding: no note from the first
    run(at, allow_errors=False)
    ds.reload()
    first, second = (sid for sid, _p in audit.worst_first(ds, run_, 0, 2))
    assert [f.note for f in ds[first]["cam_findings"].classifications] == ["first sample's note"]
    assert [f.note for f in ds[second]["cam_findings"].classifications] in ([""], [None])
