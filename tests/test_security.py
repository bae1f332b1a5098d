"""Hardening, security rows: localhost by default, no pickled code in weights, no typed paths."""
from __future__ import annotations

import tomllib
from pathlib import Path

import torch

from camcore import weights
from camcore.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]


def test_app_listens_on_localhost_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"


class CreatesAFile:
    """Unpickling this runs code (__reduce__) that creates a file; weights_only=True must refuse it.

    (A monkeypatch of os.system could never see it: pickle stores posix.system, looked up anew.)"""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_weights_with_pickled_code_are_refused(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": CreatesAFile(marker)}, path)
    assert not marker.exists()
    try:
        weights.read_state_dict(path)
    except ModelError as exc:
        error = str(exc)
    else:
        error = None
    assert not marker.exists(), "unpickling the weights file ran its code"
    assert error and "Cannot read weights file" in error, error


def test_deeplabv3_download_checks_the_hash_and_unpickles_no_code(monkeypatch):
    """torchvision's builders pass check_hash=True; weights_only=True is ours (torch's default
    is still False here). The download must ask for both, explicitly."""
    from camcore.models import get_spec

    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append((url, args, kwargs))
        return {"w": torch.zeros(1)}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    source = get_spec("deeplabv3").weights
    state, _ = source.download()
    assert list(state) == ["w"]
    [(url, args, kwargs)] = calls
    assert url == source.url and not args, (url, args)
    assert kwargs.get("check_hash") is True and kwargs.get("weights_only") is True, kwargs
    assert kwargs.get("map_location") == "cpu", kwargs


def test_plain_state_dict_still_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"module.w": torch.ones(2)}}, path)
    assert list(weights.read_state_dict(path)) == ["w"]


def test_sidebar_weights_choices_list_only_the_weights_folder(tmp_path, monkeypatch):
    from ui import sidebar_look

    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("a.pth", "b.safetensors", "notes.txt", "c.pt"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "outside.pth").write_bytes(b"x")
    monkeypatch.setenv("CAM_EXPLORER_WEIGHTS_DIR", str(folder))
    choices = sidebar_look._weights_choices()
    files = [v for v in choices.values() if v not in (weights.AUTO, weights.UNTRAINED)]
    assert files, choices
    assert all(Path(v).parent == folder for v in files), files
    assert not any("outside" in v or v.endswith(".txt") for v in files)
    assert {weights.AUTO, weights.UNTRAINED} <= set(choices.values())
