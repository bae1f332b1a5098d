"""'Done' means done with the same inputs (issue 13, item 3): weights are known by their content,
not their file name, and a map made at another input size is made again (real mongod).

Two files called model.pth in two folders share one field (the field names the file's stem, as
the README says) and replace each other's maps there, each with its own provenance: neither ever
counts as done for the other.
"""
from __future__ import annotations

import os
from pathlib import Path

import fiftyone as fo
import pytest
import torch
from fo_helpers import unique_name, write_images

from camcore import batch, model_file, models, weights

MODEL = "efficientnet_lite0"


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"w{i}.png" for i in range(2)], size=(40, 48))
    ds = fo.Dataset(unique_name("identity"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()


def _save_variant(path: Path, scale: float) -> Path:
    """The offline model's weights with the classifier scaled: other numbers, same shapes."""
    state = {k: v.clone() for k, v in models.load_model(MODEL, device="cpu").module.state_dict().items()}
    state["classifier.weight"] *= scale
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_the_content_hash_follows_the_content_and_is_cached_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 100)
    first = weights.file_sha256(path)
    stat = path.stat()
    path.write_bytes(b"b" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same path, size and mtime: the cache answers
    assert weights.file_sha256(path) == first
    path.write_bytes(b"b" * 101)
    assert weights.file_sha256(path) != first


def test_two_files_with_one_name_never_count_as_done_for_each_other(dataset, tmp_path):
    a = _save_variant(tmp_path / "a" / "model.pth", 1.0)
    b = _save_variant(tmp_path / "b" / "model.pth", -1.0)
    run_a = batch.run_batch(dataset, batch.BatchOptions(MODEL, weights=str(a), methods=["gradcam"], device="cpu"))
    [field] = run_a.fields
    assert run_a.done == 2 and dataset.values(f"{field}.weights_sha256") == [weights.file_sha256(a)] * 2

    run_b = batch.run_batch(dataset, batch.BatchOptions(MODEL, weights=str(b), methods=["gradcam"], device="cpu"))
    assert run_b.fields == {field}  # one name, one field (README: the second replaces the first)
    assert (run_b.done, run_b.skipped) == (2, 0)
    assert dataset.values(f"{field}.weights_sha256") == [weights.file_sha256(b)] * 2
    assert (batch.run_batch(dataset, batch.BatchOptions(MODEL, weights=str(b), methods=["gradcam"], device="cpu")).skipped) == 2
    assert batch.run_batch(dataset, batch.BatchOptions(MODEL, weights=str(a), methods=["gradcam"], device="cpu")).done == 2


def test_a_file_replaced_at_the_same_path_is_loaded_again_and_recomputed(dataset, tmp_path):
    path = _save_variant(tmp_path / "tuned.pth", 1.0)
    first = models.load_model(MODEL, str(path), device="cpu")
    assert models.load_model(MODEL, str(path), device="cpu") is first  # unchanged: cached
    assert batch.run_batch(dataset, batch.BatchOptions(MODEL, weights=str(path), methods=["gradcam"], device="cpu")).done == 2

    _save_variant(path, 3.0)  # retrained, saved over the old file
    second = models.load_model(MODEL, str(path), device="cpu")
    assert second is not first and second.weights.sha256 == weights.file_sha256(path) != first.weights.sha256
    assert torch.allclose(second.module.classifier.weight, first.module.classifier.weight * 3.0)
    again = batch.run_batch(dataset, batch.BatchOptions(MODEL, weights=str(path), methods=["gradcam"], device="cpu"))
    assert (again.done, again.skipped) == (2, 0)


def test_a_map_made_at_another_input_size_is_recomputed(dataset, tmp_path, monkeypatch):
    import timm

    folder = tmp_path / "m"
    folder.mkdir()
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), folder / "r.pth")
    path = folder / "models.toml"

    def entry(size: int) -> None:
        path.write_text(f'[models.sized]\narch = "timm:test_resnet"\nweights = "r.pth"\n'
                        f'classes = ["cat", "dog"]\ninput_size = {size}\n')
        models.reload_model_file()

    monkeypatch.setenv(model_file.ENV, str(path))
    try:
        entry(64)
        first = batch.run_batch(dataset, batch.BatchOptions("sized", methods=["gradcam"], device="cpu"))
        [field] = first.fields
        assert first.done == 2 and dataset.values(f"{field}.input_size") == [64, 64]
        # a classifier ignores a requested size: same maps, still done
        bigger = batch.run_batch(dataset, batch.BatchOptions("sized", methods=["gradcam"], input_size=200, device="cpu"))
        assert bigger.skipped == 2
        entry(96)  # the model's own size changed: nothing was made at 96
        second = batch.run_batch(dataset, batch.BatchOptions("sized", methods=["gradcam"], device="cpu"))
        assert (second.done, second.skipped) == (2, 0) and dataset.values(f"{field}.input_size") == [96, 96]
    finally:
        monkeypatch.delenv(model_file.ENV)
        models.reload_model_file()


def test_a_segmentation_map_at_another_short_side_is_recomputed(dataset):
    kwargs = dict(weights="untrained", methods=["gradcam"], layers=["layer1"], device="cpu")
    first = batch.run_batch(dataset, batch.BatchOptions("deeplabv3", input_size=64, **kwargs))
    [field] = first.fields
    assert first.done == 2 and dataset.values(f"{field}.input_size") == [64, 64]
    assert batch.run_batch(dataset, batch.BatchOptions("deeplabv3", input_size=64, **kwargs)).skipped == 2
    second = batch.run_batch(dataset, batch.BatchOptions("deeplabv3", input_size=80, **kwargs))
    assert (second.done, second.skipped) == (2, 0) and dataset.values(f"{field}.input_size") == [80, 80]
