"""Issue #21, without a browser: links at /? (item 4), one computation one field (item 2)."""
from __future__ import annotations

import fiftyone as fo
import pytest
from cam_support import CHELSEA, skimage_data
from fo_helpers import unique_name

from camcore import batch, links, store
from camcore.engine import Explainer
from camcore.images import load_image
from camcore.models import load_model

MODEL = "efficientnet_lite0"


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
    assert fields == set(planned) and "_predicted_" in planned[0], (fields, planned)
    assert [f for f in two_images.get_field_schema() if f.startswith("cam_")] == planned
    labels = [two_images[s.id][planned[0]] for s in (cat, cup)]
    assert labels[0].target != labels[1].target  # the class explained stays on each label
    assert "cat" in labels[0].target and labels[1].target == "espresso"
    assert {lab.target_rule for lab in labels} == {"default: predicted top-1"}


def test_a_named_class_keeps_its_own_field_and_pushes_into_it_again(two_images, effnet, tmp_path):
    cat = two_images.first()
    first = _push(two_images, effnet, cat, "tabby", tmp_path)
    assert first == ["cam_gradcam_head_tabby_efficientnet_lite0"]  # as before: named after the class
    again = _push(two_images, effnet, cat, "tabby", tmp_path)
    assert again == first and store.heatmap_fields(two_images).keys() == set(first)
    assert two_images[cat.id][first[0]].target_rule == "chosen"
