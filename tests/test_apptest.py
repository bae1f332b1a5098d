"""The app in-process with streamlit.testing.v1.AppTest: widgets and messages, not pixels.

Runs app.py (the router + shared sidebar) and the Explore page against the embedded demo
dataset in the test MongoDB (see conftest.py). Models run on the CPU, hence the long timeout.
"""
from __future__ import annotations

import os

import pytest
from app_support import APP, TIMEOUT, current_sample, open_sample, run
from streamlit.testing.v1 import AppTest

from ui import sidebar_look

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
    sample = current_sample(at)
    assert sample in _sample_ids_by_name(at).values()
    assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
    assert at.sidebar.selectbox(key="weights_choice").value == sidebar_look.WEIGHTS_AUTO
    assert at.multiselect(key="methods").value == ["gradcam"]
    assert not at.error, [e.value for e in at.error]
    assert not [w.value for w in at.warning if "UNTRAINED" in w.value]  # real (packaged) weights
    captions = _heatmap_captions(at)
    assert captions and captions[0].startswith("Grad-CAM · head · "), captions
    assert at.button(key="push").label.startswith("Push 1 heatmap")
    # the page header names the chosen sample's file
    names = {v: k for k, v in _sample_ids_by_name(at).items()}
    assert any(names[sample] in m.value for m in at.markdown)
    assert any(sample in t.value for t in at.main.text)  # the id, as text


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

    open_sample(at, names["chelsea.png"])
    _run(at)
    assert current_sample(at) == names["chelsea.png"]
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]  # survived the sample change
    assert any("chelsea.png" in m.value for m in at.markdown)
    # a pretrained model calls this photo a cat; the auto target names the top-1 class
    assert any(w in _heatmap_captions(at)[0] for w in ("cat", "tabby")), _heatmap_captions(at)

    import fiftyone as fo

    order = fo.load_dataset(at.sidebar.selectbox(key="dataset").value).values("id")
    at.sidebar.button(key="next_sample").click()
    _run(at)
    assert current_sample(at) == order[order.index(names["chelsea.png"]) + 1]
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]
    assert len({c.split(" · ")[0] for c in _heatmap_captions(at)}) == 2

    at.button(key=f"thumb_{names['coffee.png']}").click()  # the thumbnail strip opens a sample too
    _run(at)
    assert current_sample(at) == names["coffee.png"]
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]


def test_deeplab_offline_explains_weights_then_untrained_works(app, monkeypatch, tmp_path):
    # offline and an empty torch hub cache, also on a machine that has (or could fetch) the weights
    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = app
    names = _sample_ids_by_name(at)
    open_sample(at, names["astronaut.png"])
    at.sidebar.selectbox(key="model").set_value("deeplabv3")
    _run(at)
    at.sidebar.select_slider(key="input_size").set_value(256)
    _run(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    msg = errors[0].replace("\\", "")  # the markdown source: data strings are escaped (ui/text.py)
    assert "No pretrained weights" in msg and "To provide them" in msg, msg
    assert "deeplabv3_resnet50_coco" in msg and ("weights" in msg.lower()), msg  # says which file, where
    assert "untrained (random weights)" in " ".join(i.value for i in at.info)
    assert not _heatmap_captions(at)

    at.sidebar.selectbox(key="weights_choice").set_value(sidebar_look.WEIGHTS_UNTRAINED)
    _run(at)
    assert not at.error, [e.value for e in at.error]
    assert any("UNTRAINED" in w.value for w in at.warning), [w.value for w in at.warning]
    captions = _heatmap_captions(at)
    assert captions and captions[0].startswith("Grad-CAM · layer4 · "), captions
    assert "UNTRAINED" in captions[0]  # the weights label travels with every heatmap
    # the predicted mask and its class chips are random output too, and say so
    assert any("predicted mask · UNTRAINED" in c for img in at.image for c in img.captions)
    assert any("Classes found" in m.value and "UNTRAINED weights: random output" in m.value for m in at.markdown)
    assert at.sidebar.select_slider(key="input_size").value == 256
    assert any("input 256×" in c.value or "×256" in c.value for c in at.caption), [c.value for c in at.caption]


# -- QA pass: selection, labels and state that must follow what is on screen --------------------

def _texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_empty_view_or_empty_dataset_leaves_nothing_to_act_on(app):
    """An empty view must not leave the previous sample live: no page shows it or acts on it."""
    import fiftyone as fo

    from fo_helpers import unique_name

    at = app
    assert at.button(key="push")  # control: a sample is live
    at.sidebar.text_input(key="view_filename").input("zzz_nomatch")
    _run(at)
    assert any("No samples in this view" in w for w in _texts(at.sidebar.warning)), _texts(at.sidebar.warning)
    assert any("No samples in this view" in w for w in _texts(at.main.warning)), _texts(at.main.warning)
    assert not [b for b in at.button if b.key in ("push", "batch_start", "rank_go")]
    assert not at.image and not [m for m in at.main.markdown if m.value.startswith("####")]
    for page in ("pages/batch.py", "pages/compare.py"):
        at.switch_page(page)
        _run(at)
        assert not [b for b in at.button if b.key in ("push", "batch_start", "rank_go")], page
        assert any("No samples in this view" in w for w in _texts(at.main.warning)), page
    at.switch_page("pages/findings.py")  # findings are the dataset's: listed whatever the filter
    _run(at)
    assert any(m.value.startswith("#### Findings in cam-explorer-demo") for m in at.main.markdown), \
        [m.value for m in at.main.markdown]
    assert not at.exception and not at.error, _texts(at.error)
    at.switch_page("pages/explore.py")
    _run(at)

    empty = fo.Dataset(unique_name("qa-empty"), persistent=True)
    try:
        at.sidebar.text_input(key="view_filename").input("")
        _run(at)  # the sidebar lists the new dataset
        at.sidebar.selectbox(key="dataset").set_value(empty.name)
        _run(at)
        message = "This dataset has no samples: add images or pick another dataset"
        assert any(message in w for w in _texts(at.sidebar.warning)), _texts(at.sidebar.warning)
        assert any(message in w for w in _texts(at.main.warning)), _texts(at.main.warning)
        assert not [e for e in _texts(at.error) if "media" in e], _texts(at.error)
        assert not [b for b in at.button if b.key in ("push", "batch_start", "rank_go")]
        # the model and weights controls stay where they were
        assert at.sidebar.selectbox(key="model").value == "efficientnet_lite0"
        assert at.sidebar.selectbox(key="weights_choice").value == sidebar_look.WEIGHTS_AUTO
    finally:
        empty.delete()


def test_target_label_names_the_current_samples_top1(app):
    """The browser shows a selectbox's last-sent label: a new sample's top-1 must be sent again."""
    at = app
    names = _sample_ids_by_name(at)
    for filename, words in (("chelsea.png", ("cat", "tabby")), ("coffee.png", ("espresso", "cup"))):
        open_sample(at, names[filename])
        if current_sample(at) != names[filename]:  # picked from several matches: opens on the next run
            _run(at)
        box = at.selectbox(key="target_1000")  # the run that opened the sample sends its label
        label = box.format_func(box.value)
        assert label.startswith("auto (top-1: ") and any(w in label for w in words), label
        assert box.proto.set_value and box.proto.raw_value == label, (box.proto.set_value, box.proto.raw_value)
        target = [m.value for m in at.markdown if m.value.startswith("**Target:**")]
        assert target and label[len("auto (top-1: "):-1] in target[0], (label, target)


def test_saved_fields_note_belongs_to_its_sample_and_says_replaced(app):
    at = app
    names = _sample_ids_by_name(at)
    open_sample(at, names["rocket.jpg"])
    _run(at)
    at.button(key="push").click()
    _run(at)
    first = [s for s in _texts(at.success) if "fields:" in s]
    assert len(first) == 1 and "rocket.jpg" in first[0], first
    at.button(key="push").click()  # the same heatmap again: it replaces what is stored
    _run(at)
    again = [s for s in _texts(at.success) if "fields:" in s]
    assert len(again) == 1 and again[0].startswith("Replaced fields:") and "Saved fields" not in again[0], again
    at.sidebar.button(key="next_sample").click()
    _run(at)
    assert not [s for s in _texts(at.success) if "fields:" in s], _texts(at.success)
    at.sidebar.button(key="prev_sample").click()
    _run(at)
    assert not [s for s in _texts(at.success) if "fields:" in s], _texts(at.success)  # moved away: gone


def test_model_switch_keeps_methods_layers_and_weights_per_model(app, monkeypatch, tmp_path):
    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    at = app
    at.multiselect(key="methods").select("hirescam").select("fullgrad")  # fullgrad: no ViT version
    at.multiselect(key="layers_efficientnet_lite0").select("stage6")
    _run(at)
    at.sidebar.selectbox(key="model").set_value("deit_tiny")
    _run(at)  # no DeiT weights offline: a message, and the page's widgets are not drawn
    assert any("No pretrained weights" in e for e in _texts(at.error)), _texts(at.error)
    at.sidebar.selectbox(key="weights_choice").set_value(sidebar_look.WEIGHTS_UNTRAINED)
    _run(at)
    assert at.multiselect(key="methods").value == ["gradcam", "hirescam"]  # those that apply to DeiT
    at.sidebar.selectbox(key="model").set_value("efficientnet_lite0")
    _run(at)
    assert at.sidebar.selectbox(key="weights_choice").value == sidebar_look.WEIGHTS_AUTO  # never chosen here
    assert not [w for w in _texts(at.warning) if "UNTRAINED" in w]
    assert sorted(at.multiselect(key="methods").value) == ["fullgrad", "gradcam", "hirescam"]
    assert at.multiselect(key="layers_efficientnet_lite0").value == ["head", "stage6"]
    at.sidebar.selectbox(key="model").set_value("deit_tiny")
    _run(at)
    assert at.sidebar.selectbox(key="weights_choice").value == sidebar_look.WEIGHTS_UNTRAINED  # DeiT's own choice


def test_finding_other_without_a_name_and_a_missing_image_say_what_to_do(app, tmp_path):
    import shutil

    import fiftyone as fo

    from fo_helpers import unique_name

    at = app
    [finding] = [s for s in at.selectbox if s.label == "Finding"]
    finding.set_value("other…")
    [save] = [b for b in at.button if b.label == "Save finding"]
    save.click()
    _run(at)
    assert any("Type the finding's name in 'Other finding'" in e for e in _texts(at.error)), _texts(at.error)
    assert not [e for e in _texts(at.error) if "has no letters or digits" in e]

    gone = tmp_path / "gone.png"
    shutil.copy(fo.load_dataset("cam-explorer-demo").first().filepath, gone)
    ds = fo.Dataset(unique_name("qa-missing"), persistent=True)
    try:
        ds.add_sample(fo.Sample(filepath=str(gone)))
        gone.unlink()
        _run(at)  # the sidebar lists the new dataset
        at.sidebar.selectbox(key="dataset").set_value(ds.name)
        _run(at)
        assert any("Pick another sample, or fix the file path in the dataset" in e for e in _texts(at.error)), \
            _texts(at.error)
    finally:
        ds.delete()


def test_untrained_band_sits_above_the_image_in_the_app():
    import numpy as np

    from camcore import overlay

    rgb = np.full((200, 300, 3), 77, np.uint8)
    out = overlay.watermark_untrained(rgb, outside=True)
    band = out.shape[0] - rgb.shape[0]
    assert 0 < band <= 0.1 * rgb.shape[0]  # thin, and it hides nothing
    inner = out[band + 4:-4, 4:-4]  # inside the red frame
    assert (inner == 77).all()
    assert (out[: band // 3, :, 0] > 150).mean() > 0.5


def test_a_blank_map_is_said_not_shown_as_an_empty_overlay(app):
    """Untrained DeiT-tiny's Grad-CAM is zero everywhere: the overlay's caption and a warning say
    so, instead of an empty picture that reads as 'the model looks nowhere'."""
    at = app
    at.sidebar.selectbox(key="model").set_value("deit_tiny")
    _run(at)  # no DeiT weights offline: untrained is chosen next, explicitly
    at.sidebar.selectbox(key="weights_choice").set_value(sidebar_look.WEIGHTS_UNTRAINED)
    open_sample(at, _sample_ids_by_name(at)["chelsea.png"])
    _run(at)
    assert any("BLANK" in c for c in _heatmap_captions(at)), _heatmap_captions(at)
    assert any("Blank map" in w for w in _texts(at.warning)), _texts(at.warning)


# -- slow work waits for a go; the maps on screen stay; one FiftyOne App for every page ---------

def _link_buttons(at: AppTest) -> list:
    return [e.proto for e in at.get("link_button")]


def test_scorecam_on_a_large_layer_waits_for_a_go_and_the_maps_stay(app, monkeypatch):
    from ui import compute

    monkeypatch.setattr(compute, "AUTO_SECONDS", 1.0)  # 1,280 forwards take longer, on any device
    at = app
    at.multiselect(key="methods").select("scorecam")
    _run(at)
    # head has 1,280 channels: not started silently; a button says what it costs
    go = [b for b in at.button if b.key == "go_scorecam_head"]
    assert go and go[0].label.startswith("Run Score-CAM on head (~"), [b.label for b in at.button]
    assert any("1,280 forwards" in c.value for c in at.caption), [c.value for c in at.caption]
    captions = _heatmap_captions(at)
    assert captions and captions[0].startswith("Grad-CAM · head"), captions  # computed maps stay
    assert not any(c.startswith("Score-CAM") for c in captions), captions
    assert at.button(key="push").label.startswith("Push 1 heatmap")  # what is on screen
    assert not at.exception


SLOW = ("scorecam", "ablationcam", "kpcacam", "fullgrad", "shapleycam", "finercam")


def test_a_link_with_slow_methods_over_every_layer_computes_nothing_slow_before_a_click(monkeypatch):
    """Issue 22 item 6: every slow method has an estimate, and the page's automatic compute is a
    total budget (AUTO_SECONDS; 0 here: nothing slow at all), the rest behind its buttons and one
    "Run all N (~T)"."""
    from camcore import methods
    from ui import compute

    monkeypatch.setattr(compute, "AUTO_SECONDS", 0.0)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    layers = [layer.key for layer in methods_layers()]
    at.query_params.update({"methods": ",".join(("gradcam",) + SLOW), "layers": ",".join(layers)})
    _run(at)
    slow_labels = tuple(methods.METHODS[m].label for m in SLOW)
    assert not [c for c in _heatmap_captions(at) if c.startswith(slow_labels)], _heatmap_captions(at)
    assert any(c.startswith("Grad-CAM") for c in _heatmap_captions(at))  # the fast ones are on screen
    go = [b for b in at.button if (b.key or "").startswith("go_") and b.key != "go_all"]
    assert go and all(" (~" in b.label for b in go), [b.label for b in go]  # an estimate for every one
    assert {b.key.split("_")[1] for b in go} == set(SLOW), [b.key for b in go]
    assert [b for b in at.button if b.label.startswith(f"Run all {len(go)} (~")], [b.label for b in at.button]
    assert not at.exception


def methods_layers():
    from camcore.models import get_spec

    return get_spec("efficientnet_lite0").layers


def test_a_small_scorecam_runs_at_once_and_the_page_shows_it(app, monkeypatch):
    from ui import compute

    # within the page's budget, whatever this machine's load makes of 16 channels' estimate
    monkeypatch.setattr(compute, "AUTO_SECONDS", 120.0)
    at = app
    at.multiselect(key="layers_efficientnet_lite0").set_value(["stage0"])  # 16 channels: seconds
    at.multiselect(key="methods").select("scorecam")
    _run(at)
    assert not [b for b in at.button if (b.key or "").startswith("go_")]
    captions = _heatmap_captions(at)
    assert any(c.startswith("Score-CAM · stage0") for c in captions), captions
    assert at.button(key="push").label.startswith("Push 2 heatmap")


def test_open_in_app_follows_the_app_this_process_serves(app, monkeypatch):
    """An App launched from Findings (or anywhere in this process) is the one Explore opens."""
    from camcore import store

    at = app
    [link] = [b for b in _link_buttons(at) if b.label == "Open this sample in the FiftyOne App"]
    assert link.disabled  # no App yet

    class Running:  # an App serving another view (the sidebar reads its view and selection)
        server_port = 5987
        dataset = None
        view = None
        selected: list = []

    monkeypatch.setattr(store, "app_session", lambda: Running())
    _run(at)
    [link] = [b for b in _link_buttons(at) if b.label == "Open this sample in the FiftyOne App"]
    assert not link.disabled and link.url.startswith("http://localhost:5987/datasets/"), (link.disabled, link.url)


def test_the_go_button_runs_the_held_back_method(app, monkeypatch):
    from ui import compute

    monkeypatch.setattr(compute, "AUTO_SECONDS", 0.0)  # every slow method asks
    at = app
    at.multiselect(key="layers_efficientnet_lite0").set_value(["stage0"])  # 16 channels: seconds
    at.multiselect(key="methods").select("scorecam")
    _run(at)
    assert not any(c.startswith("Score-CAM") for c in _heatmap_captions(at))
    at.button(key="go_scorecam_stage0").click()
    _run(at)
    assert any(c.startswith("Score-CAM · stage0") for c in _heatmap_captions(at)), _heatmap_captions(at)
    assert not [b for b in at.button if (b.key or "").startswith("go_")]
    assert at.button(key="push").label.startswith("Push 2 heatmap")
