"""Hardening, security rows: localhost by default, no pickled code in weights, no typed paths."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
import torch

from camcore import weights
from camcore.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]


def test_app_listens_on_localhost_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"


class NotAllowlisted:
    """Unpickling this runs code (__reduce__); weights_only=True must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_weights_with_pickled_code_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": NotAllowlisted()}, path)
    ran = []
    monkeypatch.setattr(os, "system", lambda *a: ran.append(a) or 0)
    with pytest.raises(ModelError, match="Cannot read weights file"):
        weights.read_state_dict(path)
    assert not ran, "unpickling ran code"


def test_plain_state_dict_still_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"module.w": torch.ones(2)}}, path)
    assert list(weights.read_state_dict(path)) == ["w"]


def test_sidebar_weights_choices_list_only_the_weights_folder(tmp_path, monkeypatch):
    from ui import sidebar

    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("a.pth", "b.safetensors", "notes.txt", "c.pt"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "outside.pth").write_bytes(b"x")
    monkeypatch.setenv("CAM_EXPLORER_WEIGHTS_DIR", str(folder))
    choices = sidebar._weights_choices()
    files = [v for v in choices.values() if v not in (weights.AUTO, weights.UNTRAINED)]
    assert files, choices
    assert all(Path(v).parent == folder for v in files), files
    assert not any("outside" in v or v.endswith(".txt") for v in files)
    assert {weights.AUTO, weights.UNTRAINED} <= set(choices.values())
