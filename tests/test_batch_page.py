"""pages/batch.py in-process (AppTest): run over a one-sample view, then again (all skipped)."""
from __future__ import annotations

import pytest
from app_support import APP, TIMEOUT, run
from streamlit.testing.v1 import AppTest

from camcore import demo_data, store

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::RuntimeWarning")]



def _run(at: AppTest) -> AppTest:
    return run(at, allow_errors=False)


def test_batch_page_runs_then_skips():
    dataset = demo_data.ensure_demo_dataset()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/batch.py")
    _run(at)
    at.sidebar.text_input(key="view_filename").input("chelsea")
    _run(at)
    assert at.multiselect(key="batch_methods").value == ["gradcam"]
    at.multiselect(key="batch_methods").select("xgradcam")
    at.radio(key="batch_rule").set_value("a named class")
    _run(at)
    at.selectbox(key="batch_class_efficientnet_lite0").set_value("tabby")
    _run(at)
    at.button(key="batch_start").click()
    _run(at)
    assert any("1 computed, 0 skipped" in s.value for s in at.success), [s.value for s in at.success]
    field = store.heatmap_field_name("efficientnet_lite0", "xgradcam", "head", "tabby")
    dataset.reload()
    assert len(dataset.exists(field)) == 1
    assert dataset.exists(field).first()[field].target == "tabby"

    at.button(key="batch_start").click()
    _run(at)
    assert any("0 computed, 1 skipped" in s.value for s in at.success), [s.value for s in at.success]
