"""Compare and Findings pages in-process (AppTest): grid wiring, the studies, scores, findings list."""
from __future__ import annotations

import pytest
from app_support import APP, TIMEOUT, run, start
from fiftyone import ViewField as F
from streamlit.testing.v1 import AppTest

from ui import sidebar_look

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


def _image_captions(at: AppTest) -> list[str]:
    """The captions of the images on the page (AppTest has no image element: read the protos)."""
    out = []

    def walk(node):
        if type(node).__name__ == "Image" or getattr(node, "type", None) == "imgs":
            out.extend(img.caption for img in node.proto.imgs if img.caption)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)  # every root block: a dialog is in one of its own
    return out


def test_layer_progression_study_opens_a_person_and_offers_untrained_weights(monkeypatch, tmp_path):
    """#17 item 3: the study looks for a sample whose labels name 'person' in the sidebar's view
    (not the cat that is open), and where DeepLabV3 has no weights, one button switches to
    untrained ones."""
    from app_support import current_sample, open_sample

    from camcore import demo_data

    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dataset = demo_data.ensure_demo_dataset()
    cat = dataset.match(F("filepath").ends_with("chelsea.png")).first().id
    at = _open("pages/compare.py")
    open_sample(at, cat)
    _run(at)
    assert current_sample(at) == cat
    at.button(key="study_layer_progression").click()
    _run(at)
    assert at.sidebar.selectbox(key="model").value == "deeplabv3"
    opened = current_sample(at)
    assert opened != cat and dataset[opened].ground_truth.label == "person", dataset[opened].filepath
    assert any("Opened a sample whose labels name 'person'" in i.value for i in at.info), [i.value for i in at.info]
    # offline: no DeepLabV3 weights, a clear message and one button out
    assert any("No pretrained weights" in e.value for e in at.error), [e.value for e in at.error]
    # the smallest input in the same run as the click: the study is computed once, at 256 (a run
    # at the CPU default of 320 first, then again at 256, cost 28 s of CPU instead of 11)
    at.sidebar.select_slider(key="input_size").set_value(256)
    at.button(key="use_untrained").click()
    _run(at)
    assert at.sidebar.selectbox(key="weights_choice").value == sidebar_look.WEIGHTS_UNTRAINED
    assert at.sidebar.select_slider(key="input_size").value == 256
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key="cmp_layers_deeplabv3").value == ["layer1", "layer2", "layer3", "layer4"]
    assert at.multiselect(key="cmp_methods").value == ["gradcam"]
    assert any("UNTRAINED" in w.value for w in at.warning)
    # DeepLabV3's scores on a CPU take long: those past the budget wait for their go
    for go in [b for b in at.button if b.key == "cmp_scores_go_button"]:
        go.click()
        _run(at)
    assert len(_grid_captions(at)) == 4
    made = [c for c in _image_captions(at) if c.startswith("Grad-CAM ·")]
    assert len(made) == 4, _image_captions(at)
    for layer, caption in zip(("layer1", "layer2", "layer3", "layer4"), made):
        assert f"· {layer} · no smoothing · UNTRAINED weights · target person" in caption, caption

    # Again, the person open now: the study stays on it and says so.
    at.button(key="study_layer_progression").click()
    _run(at)
    assert current_sample(at) == opened
    assert any("The open sample's labels name 'person'" in i.value for i in at.info), [i.value for i in at.info]
    assert at.sidebar.selectbox(key="weights_choice").value == sidebar_look.WEIGHTS_UNTRAINED  # kept


def test_a_study_where_no_sample_names_its_class_says_so_and_stays(monkeypatch, tmp_path):
    from app_support import current_sample

    from camcore import demo_data

    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dataset = demo_data.ensure_demo_dataset()
    cat = dataset.match(F("filepath").ends_with("chelsea.png")).first().id
    at = _open("pages/compare.py")
    at.sidebar.text_input(key="view_filename").input("chelsea")  # a view without any person
    _run(at)
    assert current_sample(at) == cat
    at.button(key="study_layer_progression").click()
    _run(at)
    assert current_sample(at) == cat
    assert any("No sample in the sidebar's view has a label naming 'person'" in w.value for w in at.warning), \
        [w.value for w in at.warning]


def test_all_methods_study_keeps_untrained_weights_and_shows_the_smoothing_it_computed(monkeypatch, tmp_path):
    """#17 items 1 and 3: an explicit untrained choice survives the study (no offline failure); the
    eigen_smooth and aug_smooth switches show what the grid computed, and every map says so."""
    from ui import compare_studies

    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # Two fast methods instead of the article's eight (Score-CAM and Ablation-CAM with aug_smooth take
    # minutes on a small CPU): the wiring is the same.
    monkeypatch.setitem(compare_studies.STUDIES["all_methods"], "methods", ["gradcam", "gradcam++"])
    at = _open("pages/compare.py")
    at.sidebar.selectbox(key="weights_choice").set_value(sidebar_look.WEIGHTS_UNTRAINED)
    _run(at)
    assert at.toggle(key="cmp_eigen").value is False and at.toggle(key="cmp_aug").value is False
    at.button(key="study_all_methods").click()
    _run(at)
    assert at.sidebar.selectbox(key="model").value == "deit_tiny"
    assert at.sidebar.selectbox(key="weights_choice").value == sidebar_look.WEIGHTS_UNTRAINED
    assert not at.error, [e.value for e in at.error]
    assert at.toggle(key="cmp_eigen").value is True and at.toggle(key="cmp_aug").value is True
    assert at.multiselect(key="cmp_methods").value == ["gradcam", "gradcam++"]
    made = [c for c in _image_captions(at) if "block11" in c]
    assert len(made) == 2, _image_captions(at)
    assert all("aug + eigen smoothing · UNTRAINED weights · target" in c for c in made), made
    assert any("smoothing: aug + eigen" in c.value for c in at.caption), [c.value for c in at.caption]


def test_scores_are_relative_to_the_original_score_and_explained():
    """#17 item 9: "keep Δ -12% of the score", comparable across models, with a tooltip."""
    import re

    at = _open("pages/compare.py")
    captions = [c for c in at.caption if "keep Δ" in c.value]
    assert len(captions) == 1
    assert re.fullmatch(r"keep Δ [+-]\d+% · remove Δ [+-]\d+% of the score", captions[0].value), captions[0].value
    assert "share of the score on the unchanged image" in captions[0].proto.help


def test_relative_change_helper():
    from camcore import metrics

    assert metrics.relative_change(-265.774, 2215.0) == pytest.approx(-0.12, abs=1e-3)
    assert metrics.relative_change(1.0, -4.0) == pytest.approx(0.25)  # the original's magnitude
    assert metrics.relative_change(1.0, 0.0) is None
    assert metrics.relative_change(float("nan"), 1.0) is None
    f = metrics.Faithfulness(original_score=10.0, keep_change=-1.2, remove_change=-8.5)
    assert (f.keep_relative, f.remove_relative) == (pytest.approx(-0.12), pytest.approx(-0.85))


def test_grid_rows_wrap_and_a_map_opens_full_size(monkeypatch):
    """#17 item 9: at most CELLS_PER_LINE maps side by side (more wrap to the next line), one map
    alone does not fill the page, and an Enlarge button per map opens it full size in a dialog."""
    from ui import compare_grid

    # every cell's scores at once, whatever the machine's load (past 5 s they wait for a go)
    monkeypatch.setattr(compare_grid, "SCORES_AUTO_SECONDS", 1e9)
    assert compare_grid._lines(list("abcdefgh")) == ([list("abcd"), list("efgh")], 4)
    assert compare_grid._lines(list("abcde")) == ([list("abcd"), list("e")], 4)
    assert compare_grid._lines(["a"]) == ([["a"]], 2)
    at = _open("pages/compare.py")
    for m in ("gradcam++", "xgradcam", "layercam", "eigencam"):
        at.multiselect(key="cmp_methods").select(m)
    _run(at)
    assert len(_grid_captions(at)) == 5
    assert len([b for b in at.button if b.key and b.key.startswith("enlarge_")]) == 5
    assert not [c for c in _image_captions(at) if "weights\\:" in c]  # no dialog yet
    at.button(key="enlarge_eigencam_head").click()
    _run(at)
    big = [c for c in _image_captions(at) if "weights\\:" in c]  # the full weights label (escaped)
    assert len(big) == 1 and big[0].startswith("Eigen-CAM · head"), _image_captions(at)


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
    # the link back to the explorer comes before the wide note: on screen at 1280 px
    columns = list(at.dataframe[0].value.columns)
    assert columns.index("url") < columns.index("note"), columns


def test_quickstart_button_offline_says_why_and_keeps_the_demo(monkeypatch):
    from camcore import demo_data

    monkeypatch.setattr(demo_data, "_reachable", lambda host, timeout=3.0: False)  # this process is the app
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    at.sidebar.button(key="load_quickstart").click()
    _run(at)
    assert any("needs the internet" in e.value for e in at.sidebar.error), [e.value for e in at.sidebar.error]
    assert at.sidebar.selectbox(key="dataset").value == "cam-explorer-demo"

def _cat_mask_dataset(prefix: str):
    """chelsea.png and coffee.png of the demo with a ground-truth Segmentation `gt` whose middle
    is "cat" (persistent: the app loads it by name)."""
    import fiftyone as fo
    import numpy as np
    from fo_helpers import unique_name

    from camcore import demo_data

    demo = demo_data.ensure_demo_dataset()
    ds = fo.Dataset(unique_name(prefix), persistent=True)
    samples = []
    for s in demo:
        if s.filename in ("chelsea.png", "coffee.png"):
            h, w = s.metadata.height, s.metadata.width
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1  # "cat" in the middle
            samples.append(fo.Sample(filepath=s.filepath, gt=fo.Segmentation(mask=mask)))
    ds.add_samples(samples)
    ds.mask_targets = {"gt": {0: "background", 1: "cat"}}
    ds.save()
    return ds


def test_ranking_uses_a_ground_truth_segmentation_field():
    ds = _cat_mask_dataset("rank-gt")
    try:
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
    from fo_helpers import unique_name

    from camcore import demo_data

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
    assert at.session_state["road_open"] is True  # the expander stays open with its curve
    at.multiselect(key="cmp_methods").select("gradcam++")
    _run(at)
    at.selectbox(key="road_choice").set_value(("gradcam++", "head"))
    _run(at)  # another heatmap: the old curve is not shown as its own
    assert not [c.value for c in at.caption if c.value.startswith("ROAD combined")]


def test_a_study_button_is_the_go_for_its_slow_maps_and_shows_its_time(monkeypatch, tmp_path):
    """Issue 23 bug 6: the DeiT study asked for a second go ("Run all 2 (~22 s)") after its own
    button was clicked. The click runs every map of the study, slow ones included, and the button
    then carries the time the study took."""
    from ui import compare_studies, compute

    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(compute, "AUTO_SECONDS", 0.0)  # every slow map waits for a go
    compare_studies._study_seconds.clear()  # process-wide: another test's study run would show its time
    # a slow method (waits for a go) that takes ~1 s on DeiT; Score-CAM's 192 forwards took ~7 s of CPU
    monkeypatch.setitem(compare_studies.STUDIES["all_methods"], "methods", ["gradcam", "kpcacam"])
    monkeypatch.setitem(compare_studies.STUDIES["all_methods"], "aug", False)
    monkeypatch.setitem(compare_studies.STUDIES["all_methods"], "eigen", False)
    at = _open("pages/compare.py")
    at.sidebar.selectbox(key="weights_choice").set_value(sidebar_look.WEIGHTS_UNTRAINED)
    _run(at)
    label = at.button(key="study_all_methods").label
    assert "~" not in label  # not run here yet: no time to show
    at.button(key="study_all_methods").click()
    _run(at)
    assert not at.error, [e.value for e in at.error]
    assert not [b.label for b in at.button if b.label.startswith("Run ")], [b.label for b in at.button]
    made = [c for c in _image_captions(at) if "block11" in c]
    assert len(made) == 2, _image_captions(at)
    _run(at)  # the button is drawn before the study runs: its time shows from the next run on
    assert at.button(key="study_all_methods").label.startswith(label + " · ~")


def test_slow_faithfulness_scores_wait_for_a_go_with_their_time(monkeypatch):
    """Issue 23 design 3: Compare cost ~100 s per ▶ with DeepLabV3, 85 of them faithfulness scores
    computed unasked. The maps come first; scores that would take long wait for a button that
    says what they cost, and one click computes them."""
    from ui import compare_grid

    monkeypatch.setattr(compare_grid, "SCORES_AUTO_SECONDS", 0.0)  # as if every score took long
    at = _open("pages/compare.py")
    assert len(_image_captions(at)) >= 1  # the map is drawn
    assert not _grid_captions(at)  # ... and no score was computed unasked
    go = [b for b in at.button if b.key == "cmp_scores_go_button"]
    assert go and go[0].label.startswith("Compute scores (~"), [b.label for b in at.button]
    go[0].click()
    _run(at)
    assert len(_grid_captions(at)) == 1  # computed on request
    _run(at)
    assert len(_grid_captions(at)) == 1  # and kept (memoised), with no button left
    assert not [b for b in at.button if b.key == "cmp_scores_go_button"]


def test_a_ranking_stopped_by_a_click_is_said_and_no_older_one_is_shown(monkeypatch):
    """Issue 23 bug 5: ▶ during a ranking threw it away without a word and the page kept showing
    the previous ranking as if it were this one's."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from ui import compute

    ds = _cat_mask_dataset("rank-stop")
    try:
        at = _open("pages/compare.py")
        at.sidebar.selectbox(key="dataset").set_value(ds.name)
        _run(at)
        at.button(key="rank_go").click()
        _run(at)
        assert any(c.value.startswith("Ranked for **") for c in at.caption)  # a first ranking, shown

        def stopped(*args, **kwargs):  # what a click during the ranking does to the script
            raise StopException()

        monkeypatch.setattr(compute, "rank", stopped)
        at.button(key="rank_go").click()
        at.run(timeout=240)
        monkeypatch.undo()
        _run(at)  # the run the click asked for
        assert any("The ranking was stopped before it finished" in w.value for w in at.warning), \
            [w.value for w in at.warning]
        assert not any(c.value.startswith("Ranked for **") for c in at.caption)  # the old one is not shown
    finally:
        ds.delete()


def test_compare_with_a_detector_draws_its_box_and_offers_renormalising_inside_it():
    """Issue 24 item 5: Compare takes a box like Explore: the picker, the maps of the box (named
    under each map), and 'Renormalise inside the box'."""
    at = _open("pages/compare.py")
    at.sidebar.selectbox(key="model").set_value("ssdlite320_mobilenet_v3_large")
    _run(at)
    at.sidebar.selectbox(key="weights_choice").set_value(sidebar_look.WEIGHTS_UNTRAINED)
    _run(at)
    at.slider(key="cmp_box_threshold").set_value(0.0)  # untrained SSDlite scores its boxes low
    _run(at)
    assert at.selectbox(key="cmp_box").value == "top"
    # item 4: the methods that do not fit a detector are left out, and the picker says why
    assert "FullGrad, Shapley-CAM (works on classification / segmentation models only)" in \
        at.multiselect(key="cmp_methods").help
    made = [c for c in _image_captions(at) if "det0" in c]
    assert len(made) == 1, _image_captions(at)
    at.toggle(key="cmp_box_renormalise").set_value(True)
    _run(at, allow_errors=False)
    assert at.toggle(key="cmp_box_renormalise").value is True
