"""The app in-process with streamlit.testing.v1.AppTest: widgets and messages, not pixels.

Runs app.py (the router + shared sidebar) and the Explore page against the embedded demo
dataset in the test MongoDB (see conftest.py). Models run on the CPU, hence the long timeout.
"""
from __future__ import annotations

import os

import pytest
from app_support import APP, TIMEOUT, run
from streamlit.testing.v1 import AppTest

from ui import sidebar

# numpy overflow and friends in the page are bugs: make them fail the run (they surface as st.error)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::RuntimeWarning")]

_run = run


def _sample_ids_by_name(at: AppTest) -> dict[str, str]:
    import fiftyone as fo

    dataset = fo.load_dataset(at.sidebar.selectbox(key="dataset").value)
    ids, paths = dataset.values(["id", "filepath"])
    return {os.path.basename(p): i for i, p in zip(ids, paths, strict=True)}


def _heatmap_captions(at: AppTest) -> list[str]:
    """Captions of the overlay images (method · layer · target · weights), not the input image."""
    return [c for img in at.image for c in img.captions if " · " in c]


@pytest.fixture
def app() -> AppTest:
    return _run(AppTest.from_file(APP, default_timeout=TIMEOUT))


def test_default_run_shows_the_demo_sample_with_an_overlay(app):
    at = app
    assert at.sidebar.selectbox(key="dataset").value == "cam-explorer-demo"
    sample = at.sidebar.selectbox(key="sample_id")
    assert sample.value in _sample_ids_by_name(at).values()
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    assert at.sidebar.selectbox(key="weights_choice").value == sidebar.WEIGHTS_AUTO
    assert at.multiselect(key="methods").value == ["gradcam"]
    assert not at.error, [e.value for e in at.error]
    assert not [w.value for w in at.warning if "UNTRAINED" in w.value]  # real (packaged) weights
    captions = _heatmap_captions(at)
    assert captions and captions[0].startswith("Grad-CAM · head · "), captions
    assert at.button(key="push").label.startswith("Push 1 heatmap")
    # the page header names the chosen sample's file
    names = {v: k for k, v in _sample_ids_by_name(at).items()}
    assert any(names[sample.value] in m.value for m in at.markdown)


def test_sample_and_method_changes_rerun_and_keep_state(app):
    at = app
    names = _sample_ids_by_name(at)
    at.multiselect(key="methods").select("eigencam")
    _run(at)
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]
    captions = _heatmap_captions(at)
    assert any(c.startswith("Grad-CAM · head") for c in captions), captions
    assert any(c.startswith("Eigen-CAM · head") for c in captions), captions
    assert at.button(key="push").label.startswith("Push 2 heatmap")

    at.sidebar.selectbox(key="sample_id").set_value(names["chelsea.png"])
    _run(at)
    assert at.sidebar.selectbox(key="sample_id").value == names["chelsea.png"]
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]  # survived the sample change
    assert any("chelsea.png" in m.value for m in at.markdown)
    # a pretrained model calls this photo a cat; the auto target names the top-1 class
    assert any(w in _heatmap_captions(at)[0] for w in ("cat", "tabby")), _heatmap_captions(at)

    order = list(at.sidebar.selectbox(key="sample_id").options)
    at.sidebar.button(key="next_sample").click()
    _run(at)
    now = at.sidebar.selectbox(key="sample_id")
    assert now.format_func(now.value) == order[order.index("chelsea.png") + 1]
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]
    assert len({c.split(" · ")[0] for c in _heatmap_captions(at)}) == 2

    at.button(key=f"thumb_{names['coffee.png']}").click()  # the thumbnail strip opens a sample too
    _run(at)
    assert at.sidebar.selectbox(key="sample_id").value == names["coffee.png"]
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]


def test_deeplab_offline_explains_weights_then_untrained_works(app, monkeypatch, tmp_path):
    # offline and an empty torch hub cache, also on a machine that has (or could fetch) the weights
    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = app
    names = _sample_ids_by_name(at)
    at.sidebar.selectbox(key="sample_id").set_value(names["astronaut.png"])
    at.sidebar.selectbox(key="model").set_value("deeplabv3")
    _run(at)
    at.sidebar.select_slider(key="input_size").set_value(256)
    _run(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    msg = errors[0]
    assert "No pretrained weights" in msg and "To provide them" in msg, msg
    assert "deeplabv3_resnet50_coco" in msg and ("weights" in msg.lower()), msg  # says which file, where
    assert "untrained (random weights)" in " ".join(i.value for i in at.info)
    assert not _heatmap_captions(at)

    at.sidebar.selectbox(key="weights_choice").set_value(sidebar.WEIGHTS_UNTRAINED)
    _run(at)
    assert not at.error, [e.value for e in at.error]
    assert any("UNTRAINED" in w.value for w in at.warning), [w.value for w in at.warning]
    captions = _heatmap_captions(at)
    assert captions and captions[0].startswith("Grad-CAM · layer4 · "), captions
    assert "UNTRAINED" in captions[0]  # the weights label travels with every heatmap
    assert at.sidebar.select_slider(key="input_size").value == 256
    assert any("input 256×" in c.value or "×256" in c.value for c in at.caption), [c.value for c in at.caption]
