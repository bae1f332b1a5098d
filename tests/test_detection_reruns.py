"""Issue 24 (det32): no work that grows with the view on a rerun of the detection paths. A
Streamlit rerun (any widget touched) must not aggregate over the view again for what it already
knows; the click that launches a batch reads the view afresh. Real FiftyOne (the suite's own
mongod), SSDlite untrained (no weights needed)."""
from __future__ import annotations

import fiftyone as fo
import fiftyone.core.collections as focol
import numpy as np
import pytest
from fo_helpers import unique_name
from PIL import Image

SSD = "ssdlite320_mobilenet_v3_large"


class AggregationSpy:
    """Every FiftyOne aggregation (count, values, distinct, ...) that mentions a field, counted
    where it happens: SampleCollection.aggregate, which all of them go through."""

    def __init__(self, monkeypatch, field: str) -> None:
        self.field, self.seen = field, []
        original = focol.SampleCollection.aggregate
        spy = self

        def aggregate(collection, aggregations, *args, **kwargs):
            many = aggregations if isinstance(aggregations, (list, tuple)) else [aggregations]
            spy.seen += [repr(vars(a)) for a in many if spy.field in repr(vars(a))]
            return original(collection, aggregations, *args, **kwargs)

        monkeypatch.setattr(focol.SampleCollection, "aggregate", aggregate)

    def take(self) -> int:
        """How many since the last take."""
        n, self.seen = len(self.seen), []
        return n


def _image(path) -> str:
    rgb = (np.random.default_rng(0).random((96, 128, 3)) * 60).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return str(path)


def _boxes(n: int) -> fo.Detections:
    return fo.Detections(detections=[fo.Detection(label="kite", bounding_box=[0.1 * i, 0.1, 0.1, 0.2])
                                     for i in range(n)])


@pytest.mark.slow
def test_the_batch_pages_field_rule_aggregates_once_not_on_every_rerun(tmp_path, monkeypatch):
    """The Batch page with a detector and `field:ground_truth` counted the field's boxes over the
    whole view (two aggregations: its labels, the most boxes a sample holds) on every rerun, any
    widget touched. Now once per view and rule, and again at the Run click (a sample added since
    then is counted: the run is never planned on stale counts)."""
    from app_support import APP, TIMEOUT, run
    from streamlit.testing.v1 import AppTest

    ds = fo.Dataset(unique_name("det32-reruns"), persistent=True)  # the app lists persistent datasets
    ds.add_samples([fo.Sample(filepath=_image(tmp_path / f"{i}.png"), ground_truth=_boxes(1 + i)) for i in range(2)])
    spy = AggregationSpy(monkeypatch, "ground_truth")
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        for key, value in {"dataset": ds.name, "model": SSD, "weights": "untrained"}.items():
            at.query_params[key] = value
        at.switch_page("pages/batch.py")
        run(at, allow_errors=False)
        at.multiselect(key="batch_methods").set_value(["eigencam"])
        at.text_input(key="batch_boxes").input("field:ground_truth@0")
        run(at, allow_errors=False)
        assert spy.take() >= 1  # the rule is expanded: the field's boxes counted over the view

        def fields() -> int:
            captions = [c.value for c in at.caption if c.value.startswith("Fields")]
            return captions[0].count("`cam_")  # the plan's (a finished run's report says its fields too)

        assert fields() == 2
        # which field is whose box, and which fields a rule can name (the page's screenshot, det32)
        [plan] = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("Fields")]  # unescaped
        assert plan.startswith("Fields, per box: field:ground") and ":1: `cam_" in plan, plan
        assert any(c.value.replace("\\", "").startswith("Detections fields: field:ground") for c in at.caption)
        for touch in range(3):  # other widgets: nothing about the field is read again
            at.toggle(key="batch_eigen_smooth").set_value(touch % 2 == 0)
            run(at, allow_errors=False)
            assert spy.take() == 0, touch
        assert fields() == 2

        at.text_input(key="batch_boxes").input("field:ground_truth:kite@0")  # another rule: counted
        run(at, allow_errors=False)
        assert spy.take() >= 1 and fields() == 2

        ds.add_sample(fo.Sample(filepath=_image(tmp_path / "late.png"), ground_truth=_boxes(3)))
        at.toggle(key="batch_eigen_smooth").set_value(False)
        run(at, allow_errors=False)
        assert fields() == 2  # a rerun keeps what it counted (the Run click recounts)
        at.button(key="batch_start").click()
        run(at, allow_errors=False)
        assert fields() == 3  # counted afresh at the click: the late sample's third box has its field
        assert any("computed" in s.value for s in at.success), [s.value for s in at.success]

        # a refusal is not kept: with no Run button to click, the next rerun reads the view again
        at.text_input(key="batch_boxes").input("field:ground_truth:dog@0")
        run(at)
        assert [e.value for e in at.error if "No sample of the view has 'dog' boxes" in e.value], at.error
        ds.add_sample(fo.Sample(filepath=_image(tmp_path / "dog.png"), ground_truth=fo.Detections(
            detections=[fo.Detection(label="dog", bounding_box=[0.1, 0.1, 0.2, 0.2])])))
        at.toggle(key="batch_eigen_smooth").set_value(True)
        run(at, allow_errors=False)
        assert fields() == 1
    finally:
        ds.delete()


class EveryAggregation:
    """Every FiftyOne aggregation, by its type: Count, Distinct, Max, Values..."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[str] = []
        original = focol.SampleCollection.aggregate
        spy = self

        def aggregate(collection, aggregations, *args, **kwargs):
            many = aggregations if isinstance(aggregations, (list, tuple)) else [aggregations]
            spy.seen += [type(a).__name__ for a in many]
            return original(collection, aggregations, *args, **kwargs)

        monkeypatch.setattr(focol.SampleCollection, "aggregate", aggregate)

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


def test_the_plugins_form_reads_the_view_once_not_at_every_refresh(tmp_path, monkeypatch):
    """The plugin's compute_cams form is dynamic: FiftyOne asks for it again at every change of a
    field. Each time it counted the view twice and, for `field:ground_truth`, read the field's
    labels and most boxes over the whole view: four aggregations a refresh. Now the form keeps what
    it read of a view and a rule for a short while (FORM_FACTS_SECONDS); the run reads afresh."""
    import json
    from pathlib import Path

    import fiftyone.operators as foo
    from fiftyone import ViewField as F

    plugins = str(Path(__file__).resolve().parents[1] / "plugins")
    monkeypatch.setattr(fo.config, "plugins_dir", plugins)
    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", plugins)
    ds = fo.Dataset(unique_name("det32-form"))
    ds.add_samples([fo.Sample(filepath=_image(tmp_path / f"{i}.png"), ground_truth=_boxes(1 + i)) for i in range(3)])
    stages = json.loads(json.dumps(ds.match(F("ground_truth.detections").length() > 1)._serialize(), default=str))
    spy = EveryAggregation(monkeypatch)
    uri = "@cam-explorer/cam/compute_cams"
    base = {"model": SSD, "weights": "untrained", "methods": ["eigencam"], "layers": ["fpn"],
            "box": "field:ground_truth@0"}
    try:
        forms = []
        for smooth in (False, True, False):  # the user clicks eigen_smooth on and off
            ctx = foo.ExecutionContext(request_params={"dataset_name": ds.name, "view": stages,
                                                       "params": {**base, "eigen_smooth": smooth}})
            # looked up again each time: FiftyOne's App server imports the plugin's module anew at
            # each request (its plugins cache is off by default), so nothing kept there survives
            forms.append(json.dumps(foo.get_operator(uri).resolve_input(ctx).to_json()))
            if len(forms) == 1:
                assert spy.take(), "the first form reads the view"
            else:
                assert spy.take() == [], len(forms)
        assert all("Cannot compute" not in f and "the current view (2 samples)" in f for f in forms), forms[0][-600:]
        ctx = foo.ExecutionContext(request_params={"dataset_name": ds.name, "view": stages,
                                                   "params": {**base, "box": "field:ground_truth:kite@0"}})
        assert "Cannot compute" not in json.dumps(foo.get_operator(uri).resolve_input(ctx).to_json())
        assert spy.take(), "another rule is read"
    finally:
        ds.delete()


@pytest.mark.slow
def test_compares_ranking_reads_a_box_field_at_the_rank_click_not_on_every_rerun(monkeypatch):
    """Compare's ranking (a classifier, the object from a Detections field) read the field's labels
    over the whole dataset and the boxes of every sample to rank (up to the whole view) on every
    rerun of the page, any widget touched. Now the labels come from the app's per-dataset cache and
    the boxes are read at the Rank click, which is the only run that uses them."""
    from app_support import APP, TIMEOUT, run
    from streamlit.testing.v1 import AppTest

    from camcore import demo_data

    demo = demo_data.ensure_demo_dataset()
    chosen = [s for s in demo if s.filename in ("coffee.png", "chelsea.png")]
    ds = fo.Dataset(unique_name("det32-rank"), persistent=True)
    box = fo.Detections(detections=[fo.Detection(label="cat", bounding_box=[0.1, 0.1, 0.5, 0.5])])
    ds.add_samples([fo.Sample(filepath=s.filepath, objboxes=box) for s in chosen])
    spy = AggregationSpy(monkeypatch, "objboxes")
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.query_params["dataset"] = ds.name
        at.switch_page("pages/compare.py")
        run(at)
        assert at.selectbox(key="rank_object_efficientnet_lite0").value == "objboxes"
        at.selectbox(key="rank_object_label_objboxes").set_value("cat")
        run(at)
        spy.take()
        for value in (0.3, 0.6, 0.4):  # other widgets: the box field is not read again
            at.slider(key="cmp_threshold").set_value(value)
            run(at)
            assert spy.take() == 0, value
        at.button(key="rank_go").click()
        run(at)
        assert spy.take() >= 1  # the click reads the boxes it ranks against
        ranked = [c.value for c in at.caption if "on the object (label boxes)" in c.value
                  and not c.value.startswith("Ranked for")]
        assert len(ranked) == 2, [c.value for c in at.caption]
    finally:
        ds.delete()
