"""Issue #21 item 10, the explorer's side of your own models: skipped entries in one warning under
the Model and Weights pickers (two no longer push the picker below the fold), and "Reload models
file" confirms what it read. AppTest runs app.py in-process."""
from __future__ import annotations

import pytest
from app_support import APP, TIMEOUT, run
from streamlit.testing.v1 import AppTest

from camcore import models

GOOD = '[models.mine]\narch = "timm:test_resnet"\nweights = "cnn.pth"\nclasses = ["ant", "bee", "cow"]\n'


def _bad(key: str) -> str:
    return f'\n[models.{key}]\narch = "timm:no_such_net"\nweights = "cnn.pth"\nclasses = ["a"]\n'


@pytest.fixture
def models_file(tmp_path, monkeypatch):
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "cnn.pth")
    toml = tmp_path / "models.toml"
    toml.write_text(GOOD + _bad("broken_one") + _bad("broken_two"))
    monkeypatch.setenv("CAM_EXPLORER_MODELS", str(toml))
    models.reload_model_file()
    yield toml
    monkeypatch.delenv("CAM_EXPLORER_MODELS")
    models.reload_model_file()


def test_skipped_entries_are_one_warning_and_a_reload_is_confirmed(models_file):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"model": "mine", "methods": "gradcam"})
    run(at)
    warnings = [w.value for w in at.sidebar.warning if "Skipped from the models file" in w.value]
    assert len(warnings) == 1, warnings  # one box, whatever the count
    assert "broken\\_one" in warnings[0] and "broken\\_two" in warnings[0]
    assert not [s for s in at.sidebar.success if "of your models" in s.value]

    models_file.write_text(GOOD + _bad("broken_one"))
    at.sidebar.button(key="reload_models").click()
    run(at)
    [done] = [s.value for s in at.sidebar.success if "of your models" in s.value]
    assert "1 of your models, 1 skipped" in done
    run(at)  # said once: the next rerun no longer repeats it
    assert not [s for s in at.sidebar.success if "of your models" in s.value]
