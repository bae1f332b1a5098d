"""Issue 24 (det32): a file under torchvision's own weights file name (`<name>-<hex>.pth`, the hex
the first digits of its SHA-256) is checked as torchvision's check_hash checks a download, in the
weights folder and the hub cache alike: a damaged or renamed file is one clear line, never loaded."""
from __future__ import annotations

import hashlib

import pytest
import torch

from camcore import models, weights
from camcore.errors import ModelError

SSD = "ssdlite320_mobilenet_v3_large"


def _saved(path, seed: int = 0):
    torch.save({"w": torch.randn(4, generator=torch.Generator().manual_seed(seed))}, path)
    return path


def test_a_file_named_with_its_own_hash_passes_and_a_damaged_one_is_one_line(tmp_path):
    plain = _saved(tmp_path / "plain.pth")
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    named = plain.rename(tmp_path / f"model_coco-{digest[:8]}.pth")
    weights.hash_problem(named)  # its own hash: nothing to say
    weights.hash_problem(_saved(tmp_path / "no_hash_in_the_name.pth"))  # not a hash-named file: not checked
    data = bytearray(named.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped: a torn or damaged copy
    named.write_bytes(bytes(data))
    with pytest.raises(ModelError) as caught:
        weights.hash_problem(named, "https://example.org/model_coco.pth")
    message = str(caught.value)
    assert "\n" not in message and f"its name says {digest[:8]}" in message and "download" in message, message


@pytest.mark.parametrize("chosen", [False, True])
def test_a_torchvision_file_in_the_weights_folder_with_a_wrong_hash_is_refused_in_one_line(tmp_path, monkeypatch,
                                                                                            chosen):
    """Before: SSDlite's `ssdlite320_mobilenet_v3_large_coco-a79551df.pth` in the weights folder was
    read whatever it held (here another checkpoint: "These weights do not fit the model", a torn
    download: torch.load's own error). Now its hash is checked first, found automatically or chosen."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("CAM_EXPLORER_WEIGHTS_DIR", str(folder))
    source = models.get_spec(SSD).weights
    path = _saved(folder / source.filename)
    assert source.find_local() == (path, "file")
    with pytest.raises(ModelError) as caught:
        models.load_model(SSD, str(path) if chosen else "auto", "cpu")
    message = str(caught.value)
    assert "\n" not in message and "SHA-256" in message and "its name says a79551df" in message, message
    assert source.url in message
