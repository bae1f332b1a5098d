"""Compare and Findings pages in-process (AppTest): grid wiring, the studies, scores, findings list."""
from __future__ import annotations

import pytest
from app_support import APP, TIMEOUT, run, start
from streamlit.testing.v1 import AppTest

from ui import sidebar

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::RuntimeWarning")]

_run, _open = run, start


def _grid_captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption if "keep Δ" in c.value]


def test_compare_grid_scores_every_cell_and_keeps_choices():
    at = _open("pages/compare.py")
    assert at.multiselect(key="cmp_methods").value == ["gradcam"]
    assert at.multiselect(key="cmp_layers_efficientnet_lite0").value == ["head"]
    assert len(_grid_captions(at)) == 1
    at.multiselect(key="cmp_methods").select("gradcam++")
    at.multiselect(key="cmp_layers_efficientnet_lite0").select("stage5")
    _run(at)
    assert len(_grid_captions(at)) == 4  # 2 layers x 2 methods, each with its faithfulness line
    at.toggle(key="cmp_scores").set_value(False)
    _run(at)
    assert not _grid_captions(at)
    assert at.multiselect(key="cmp_methods").value == ["gradcam", "gradcam++"]


def test_compare_choices_survive_a_visit_to_another_page():
    """Streamlit forgets the state of widgets a run did not draw: a visit to Explore (or a study
    whose model had no weights yet) reset Compare's rows, columns, smoothing and threshold."""
    at = _open("pages/compare.py")
    at.multiselect(key="cmp_methods").select("gradcam++")
    at.multiselect(key="cmp_layers_efficientnet_lite0").select("stage5")
    at.toggle(key="cmp_eigen").set_value(True)
    at.slider(key="cmp_threshold").set_value(0.9)
    _run(at)
    at.switch_page("pages/explore.py")
    _run(at)
    at.switch_page("pages/compare.py")
    _run(at)
    assert at.multiselect(key="cmp_methods").value == ["gradcam", "gradcam++"]
    assert at.multiselect(key="cmp_layers_efficientnet_lite0").value == ["head", "stage5"]
    assert at.toggle(key="cmp_eigen").value is True and at.slider(key="cmp_threshold").value == 0.9


def test_layer_progression_study_sets_model_layers_and_target(monkeypatch, tmp_path):
    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = _open("pages/compare.py")
    at.button(key="study_layer_progression").click()
    _run(at)
    assert at.sidebar.selectbox(key="model").value == "deeplabv3"
    # offline: no DeepLabV3 weights, a clear message and a way out
    assert any("No pretrained weights" in e.value for e in at.error), [e.value for e in at.error]
    at.sidebar.selectbox(key="weights_choice").set_value(sidebar.WEIGHTS_UNTRAINED)
    at.sidebar.select_slider(key="input_size").set_value(256)
    _run(at)
    assert at.multiselect(key="cmp_layers_deeplabv3").value == ["layer1", "layer2", "layer3", "layer4"]
    assert at.multiselect(key="cmp_methods").value == ["gradcam"]
    assert any("UNTRAINED" in w.value for w in at.warning)
    assert len(_grid_captions(at)) == 4


def test_findings_page_lists_a_recorded_finding():
    from camcore import demo_data, store

    dataset = demo_data.ensure_demo_dataset()
    sample = store.get_sample(dataset, "rocket.jpg")
    store.add_finding(dataset, sample.id, "spurious edges", "looks at the launch tower")
    at = _open("pages/findings.py")
    assert any(m.value.startswith("#### Findings in cam-explorer-demo") for m in at.markdown)
    assert any("rocket.jpg" in c.value and "spurious edges" in c.value for c in at.caption), \
        [c.value for c in at.caption]
    assert "spurious edges" in at.multiselect(key="findings_filter").value


def test_quickstart_button_offline_says_why_and_keeps_the_demo(monkeypatch):
    from camcore import demo_data

    monkeypatch.setattr(demo_data, "_reachable", lambda host, timeout=3.0: False)  # this process is the app
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.sidebar.button(key="load_quickstart").click()
    _run(at)
    assert any("needs the internet" in e.value for e in at.sidebar.error), [e.value for e in at.sidebar.error]
    assert at.sidebar.selectbox(key="dataset").value == "cam-explorer-demo"


def test_ranking_uses_a_ground_truth_segmentation_field():
    import fiftyone as fo
    import numpy as np

    from camcore import demo_data
    from fo_helpers import unique_name

    demo = demo_data.ensure_demo_dataset()
    chosen = [s for s in demo if s.filename in ("chelsea.png", "coffee.png")]
    ds = fo.Dataset(unique_name("rank-gt"), persistent=True)
    try:
        samples = []
        for s in chosen:
            h, w = s.metadata.height, s.metadata.width
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1  # "cat" in the middle
            samples.append(fo.Sample(filepath=s.filepath, gt=fo.Segmentation(mask=mask)))
        ds.add_samples(samples)
        ds.mask_targets = {"gt": {0: "background", 1: "cat"}}
        ds.save()
        at = _open("pages/compare.py")
        at.sidebar.selectbox(key="dataset").set_value(ds.name)
        _run(at)
        source = at.selectbox(key="rank_object_efficientnet_lite0")
        assert source.options == ["(no object labels)", "gt"] and source.value == "gt"
        assert at.selectbox(key="rank_object_label_gt").value == "cat"  # not "background"
        at.selectbox(key="rank_object_label_gt").set_value("cat")
        at.button(key="rank_go").click()
        _run(at)
        ranked = [c.value for c in at.caption if "on the object" in c.value and "(label mask)" in c.value]
        assert len(ranked) == 2, ranked
        assert any(c.value.startswith("Ranked for **") for c in at.caption)
        # The flag follows the threshold slider, without ranking again.
        at.slider(key="cmp_threshold").set_value(0.99)
        _run(at)
        flagged = [c.value for c in at.caption if "(label mask)" in c.value and "background-dominated" in c.value]
        assert len(flagged) == 2, [c.value for c in at.caption]
        # Another class: the rows of the old ranking are not shown as this one's.
        at.selectbox(key="rank_class_efficientnet_lite0").set_value("jersey")
        _run(at)
        assert not [c.value for c in at.caption if "on the object" in c.value and "(label mask)" in c.value]
        assert any("The last ranking was for" in i.value for i in at.info), [i.value for i in at.info]
    finally:
        ds.delete()


def test_ranking_asks_for_the_object_label_when_none_names_the_class():
    """No label names the class: no unrelated default ("cat" boxes for a "jersey" target)."""
    import fiftyone as fo

    from camcore import demo_data
    from fo_helpers import unique_name

    demo = demo_data.ensure_demo_dataset()
    chosen = [s for s in demo if s.filename in ("coffee.png", "rocket.jpg")]
    ds = fo.Dataset(unique_name("rank-nomatch"), persistent=True)
    try:
        box = fo.Detections(detections=[fo.Detection(label="zebra", bounding_box=[0.1, 0.1, 0.5, 0.5]),
                                        fo.Detection(label="kite", bounding_box=[0.2, 0.2, 0.3, 0.3])])
        ds.add_samples([fo.Sample(filepath=s.filepath, gt=box) for s in chosen])
        at = _open("pages/compare.py")
        at.sidebar.selectbox(key="dataset").set_value(ds.name)
        _run(at)
        assert at.selectbox(key="rank_object_efficientnet_lite0").value == "gt"
        label = at.selectbox(key="rank_object_label_gt")
        assert label.value is None, label.value
        assert at.button(key="rank_go").disabled
        assert any("choose under 'Object label'" in i.value for i in at.info), [i.value for i in at.info]
        label.set_value("kite")
        _run(at)
        assert at.selectbox(key="rank_object_label_gt").value == "kite"
        assert not at.button(key="rank_go").disabled
    finally:
        ds.delete()


def test_road_curve_stays_while_other_widgets_rerun_the_page():
    at = _open("pages/compare.py")
    at.button(key="road_go").click()
    _run(at)
    combined = [c.value for c in at.caption if c.value.startswith("ROAD combined")]
    assert len(combined) == 1, [c.value for c in at.caption]
    at.slider(key="cmp_alpha").set_value(0.8)  # any other widget reruns the page
    _run(at)
    assert [c.value for c in at.caption if c.value.startswith("ROAD combined")] == combined
    at.multiselect(key="cmp_methods").select("gradcam++")
    _run(at)
    at.selectbox(key="road_choice").set_value(("gradcam++", "head"))
    _run(at)  # another heatmap: the old curve is not shown as its own
    assert not [c.value for c in at.caption if c.value.startswith("ROAD combined")]
