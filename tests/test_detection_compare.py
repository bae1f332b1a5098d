"""Issue 24: Compare says what a box switch cost, as Explore does: another box of the image the
session's kept forward holds is "forward reused · one backward N s" (a gradient method), not a new
pass. In-process (AppTest), SSDlite untrained on a one-image dataset."""
from __future__ import annotations

import numpy as np
import pytest
from app_support import APP, TIMEOUT, run
from streamlit.testing.v1 import AppTest

pytestmark = [pytest.mark.slow]

SSD = "ssdlite320_mobilenet_v3_large"


@pytest.fixture
def one_image(tmp_path):
    import fiftyone as fo
    from fo_helpers import unique_name
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = (rng.random((240, 320, 3)) * 80).astype(np.uint8)
    rgb[60:180, 90:230] = (230, 200, 60)
    Image.fromarray(rgb).save(tmp_path / "shapes.png")
    ds = fo.Dataset(unique_name("det-compare"), persistent=True)  # the app lists persistent datasets
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "shapes.png")))
    yield ds.name, ds.first().id
    ds.delete()


def _grid_caption(at: AppTest) -> str:
    [caption] = [c.value for c in at.caption if c.value.startswith("Every map:")]
    return caption


def test_compare_says_what_a_box_switch_cost(one_image):
    name, sid = one_image
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {"dataset": name, "sample": sid, "model": SSD, "weights": "untrained",
                       "methods": "gradcam", "box": "top@0"}.items():
        at.query_params[key] = value
    at.switch_page("pages/compare.py")  # a fresh session opens the link on Compare
    run(at, allow_errors=False)
    assert at.selectbox(key="cmp_box").value == "top" and at.slider(key="cmp_box_threshold").value == 0
    assert "shared pass" in _grid_caption(at)  # the top box: the page's own pass
    at.selectbox(key="cmp_box").select_index(2)  # the model's second detection (#1), after "top-scoring box"
    run(at, allow_errors=False)
    caption = _grid_caption(at)
    assert "det1" in caption, caption
    assert "forward reused · one backward" in caption and " s" in caption.split("one backward")[1], caption
