"""Issue #21, without a browser: links at /? (item 4), one computation one field (item 2)."""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import fiftyone as fo
import pytest
from cam_support import CHELSEA, skimage_data
from fo_helpers import unique_name
from warm_processes import CLI

from camcore import batch, links, store
from camcore.engine import Explainer
from camcore.images import load_image
from camcore.models import load_model

MODEL = "efficientnet_lite0"
ROOT = Path(__file__).resolve().parents[1]


# -- item 4: the links the project writes --------------------------------------------------------

def test_explore_links_point_at_the_root_and_old_ones_still_parse():
    state = links.LinkState(dataset="d s", sample="abc", methods=("gradcam", "eigencam"))
    url = links.explorer_url(state, base="http://host:8501/")
    assert url == "http://host:8501/?dataset=d%20s&sample=abc&methods=gradcam%2Ceigencam"
    assert links.explorer_url(links.LinkState(), base="http://host:8501") == "http://host:8501/"
    assert links.explorer_url(state, "findings", base="http://host:8501").startswith("http://host:8501/findings?")
    for stored in (url, url.replace("/?", "/explore?")):  # new, and stored by an older version
        assert links.parse_url(stored) == ("explore", state)
    assert links.parse_url("http://host:8501/compare?sample=x")[0] == "compare"


# -- item 2: one computation, one field ----------------------------------------------------------

@pytest.fixture(scope="module")
def effnet():
    return load_model(MODEL, "auto", "cpu")


@pytest.fixture
def two_images(tmp_path):
    ds = fo.Dataset(unique_name("links21-one-field"))
    ds.add_samples([fo.Sample(filepath=str(CHELSEA)), fo.Sample(filepath=str(skimage_data("coffee.png")))])
    ds.compute_metadata()
    yield ds
    ds.delete()


def _push(dataset, effnet, sample, target, tmp_path) -> list[str]:
    ex = Explainer(effnet, load_image(sample.filepath), target, ("head",))
    result = ex.result([ex.heatmap("gradcam", "head")])
    return store.push_heatmaps(dataset, sample.id, result, heatmap_dir=tmp_path / "hm")


def test_a_push_on_auto_lands_in_the_batchs_predicted_field(two_images, effnet, tmp_path):
    """Two samples predicted as different classes, pushed from the explorer with the target on
    auto: one field, the one a batch (and the plugin's compute_cams) writes; each label says its class."""
    cat, cup = two_images.iter_samples()
    fields = {f for s in (cat, cup) for f in _push(two_images, effnet, s, None, tmp_path)}
    planned = batch.BatchOptions(model=MODEL, methods=("gradcam",), layers=("head",)).checked().field_names()
    assert fields == set(planned) == {"cam_grad_head_effl0"}, (fields, planned)  # the auto target: no part
    assert [f for f in two_images.get_field_schema() if f.startswith("cam_")] == planned
    labels = [two_images[s.id][planned[0]] for s in (cat, cup)]
    assert labels[0].target != labels[1].target  # the class explained stays on each label
    assert "cat" in labels[0].target and labels[1].target == "espresso"
    assert {lab.target_rule for lab in labels} == {"default: predicted top-1"}


def test_a_named_class_keeps_its_own_field_and_pushes_into_it_again(two_images, effnet, tmp_path):
    cat = two_images.first()
    first = _push(two_images, effnet, cat, "tabby", tmp_path)
    assert first == ["cam_grad_head_effl0_tabby"]  # as before: named after the class
    again = _push(two_images, effnet, cat, "tabby", tmp_path)
    assert again == first and store.heatmap_fields(two_images).keys() == set(first)
    assert two_images[cat.id][first[0]].target_rule == "chosen"


# -- item 5: findings recorded elsewhere show on the next visit ----------------------------------

@pytest.fixture
def persistent_pair(tmp_path):
    from fo_helpers import write_images

    ds = fo.Dataset(unique_name("links21-findings"), persistent=True)  # another process loads it
    ds.add_samples([fo.Sample(filepath=p) for p in write_images(tmp_path / "img", ["a.png", "b.png"])])
    yield ds
    ds.delete()


def _record_in_another_process(forks, dataset_name: str, sample_id: str, tag: str, note: str) -> None:
    code = textwrap.dedent(f"""
        from camcore import store
        ds = store.load_dataset({dataset_name!r})
        store.add_finding(ds, {sample_id!r}, {tag!r}, note={note!r}, url="http://localhost:8501/?sample=x")
    """)
    proc = forks.run(code, [], dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_findings_page_shows_findings_recorded_by_another_process(persistent_pair, fork_server):
    from app_support import APP, TIMEOUT, run
    from streamlit.testing.v1 import AppTest

    sid = persistent_pair.first().id
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"dataset": persistent_pair.name})
    run(at)
    at.switch_page("pages/findings.py")
    run(at)
    assert any("No findings yet" in i.value for i in at.info), [i.value for i in at.info]
    # the first finding ever: it also creates the findings field, in the other process
    _record_in_another_process(fork_server, persistent_pair.name, sid, "bias", "made in the App")
    run(at)  # the next visit, same explorer process
    table = at.dataframe[0].value
    assert list(table["note"]) == ["made in the App"] and list(table["tag"]) == ["bias"]
    proc = fork_server.run(CLI, ["finding", "--dataset", persistent_pair.name, "--sample", sid, "--tag", "focus",
                                 "--note", "made by the CLI", "--json"],
                           dict(os.environ, CAM_EXPLORER_URL="http://explorer.test:8600"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["url"].startswith("http://explorer.test:8600/?dataset=")  # item 4: /?
    run(at)
    assert sorted(at.dataframe[0].value["note"]) == ["made by the CLI", "made in the App"]
    assert at.multiselect(key="findings_filter").options == ["bias", "focus"]
    assert not [w.value for w in at.warning if "default value" in w.value], [w.value for w in at.warning]


# -- item 10: every method's field token is a method name ----------------------------------------

def test_a_methods_field_token_is_accepted_wherever_a_method_is_named(tmp_path, capsys):
    from camcore import cli, methods
    from camcore.identity import sanitise
    from ui import urlstate

    for key in methods.METHODS:  # the token field names use: gradcam++ -> gradcampp
        assert methods.get_method(sanitise(key)).key == key
        assert urlstate._method_key(sanitise(key)) == key  # a link's methods=
    options = batch.BatchOptions(model=MODEL, methods=("gradcampp",), layers=("head",)).checked()
    assert options.methods == ("gradcam++",)  # the batch, the plugin's compute_cams
    code = cli.main(["cam", "--image", str(CHELSEA), "--method", "gradcampp", "--layer", "head",
                     "--out", str(tmp_path / "out"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "gradcam++" in out.out and "Unknown method" not in out.err


def test_a_models_file_checkpoint_is_labelled_by_its_file_in_the_weights_picker(tmp_path, monkeypatch):
    import timm
    import torch
    from app_support import APP, TIMEOUT, run
    from streamlit.testing.v1 import AppTest

    from camcore import models

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "ants.pth")
    toml = tmp_path / "models.toml"
    toml.write_text('[models.mine]\narch = "timm:test_resnet"\nweights = "ants.pth"\nclasses = ["ant", "bee", "cow"]\n')
    monkeypatch.setenv("CAM_EXPLORER_MODELS", str(toml))
    models.reload_model_file()
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.query_params.update({"model": "mine", "methods": "gradcam"})
        run(at)
        picker = at.sidebar.selectbox(key="weights_choice")
        assert picker.options[0] == "checkpoint ants.pth (models file)", picker.options
        assert "pretrained (auto)" not in picker.options
        at.sidebar.selectbox(key="model").set_value(MODEL)  # a built-in: its pretrained weights
        run(at)
        assert at.sidebar.selectbox(key="weights_choice").options[0] == "pretrained (auto)"
    finally:
        monkeypatch.delenv("CAM_EXPLORER_MODELS")
        models.reload_model_file()
