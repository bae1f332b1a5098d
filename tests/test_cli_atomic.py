"""`cam --out` writes each .npy / .png atomically (a temporary file, then a rename): a full disk
or a failed write leaves no 0-byte or half-written file under a final name."""
from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from fo_helpers import make_heatmap, make_result

from camcore import cli
from camcore.errors import CamError
from camcore.images import from_array

SIZE = (24, 32)


def _inputs():
    result = make_result(SIZE, [make_heatmap(SIZE, "gradcam"), make_heatmap(SIZE, "layercam", seed=1)])
    return result, from_array(np.full((*SIZE, 3), 90, np.uint8), "img.png")


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_outputs_are_whole_files(tmp_path):
    result, image = _inputs()
    records = cli.write_outputs(result, image, tmp_path / "out", 0.5, "jet")
    assert len(records) == 2
    for r in records:
        m = np.load(r["npy"])
        assert m.shape == SIZE and m.dtype == np.float32
        assert cv2.imread(r["png"]).shape == (*SIZE, 3)
    assert not [n for n in _files(tmp_path / "out") if n.startswith(".")], "a temporary file was left"


def test_a_write_that_fails_midway_leaves_no_partial_file(tmp_path, monkeypatch):
    """Every write into the output folder fails with ENOSPC after half its bytes, as on a full
    disk; cv2.imwrite behaves as it does on a full disk (an empty file, and True)."""
    out = tmp_path / "out"
    out.mkdir()
    real_open = builtins.open

    class HalfThenFull:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(bytes(data)[: max(1, len(data) // 2)])
            self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        inside = isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(out.resolve())
        return HalfThenFull(f) if inside and any(c in mode for c in "wax") else f

    def imwrite_on_a_full_disk(path, image, *args):
        Path(path).write_bytes(b"")
        return True

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(cv2, "imwrite", imwrite_on_a_full_disk)
    result, image = _inputs()
    with pytest.raises(CamError) as err:
        cli.write_outputs(result, image, out, 0.5, "jet")
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert _files(out) == {}, f"partial or empty files left: {_files(out)}"


def test_a_real_full_disk_leaves_no_empty_file(full_disk):
    result, image = _inputs()
    with pytest.raises(CamError, match="No space left on device"):
        cli.write_outputs(result, image, full_disk, 0.5, "jet")
    assert _files(full_disk) == {}, f"files left on the full disk: {_files(full_disk)}"
    (full_disk.parent / "filler").unlink()  # room again: the same call writes whole files
    records = cli.write_outputs(result, image, full_disk, 0.5, "jet")
    assert all(np.load(r["npy"]).shape == SIZE and cv2.imread(r["png"]) is not None for r in records)
