"""Batch runs with eigen_smooth or untrained weights write their own fields (real mongod), and
resume on them: the names run_batch checks are the names push_many writes."""
from __future__ import annotations

import fiftyone as fo
import pytest

from camcore import batch, store
from fo_helpers import unique_name, write_images

MODEL = "efficientnet_lite0"


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"v{i}.png" for i in range(3)], size=(40, 48))
    ds = fo.Dataset(unique_name("variants"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()


def test_eigen_and_untrained_batches_keep_the_plain_field_and_resume(dataset):
    plain = batch.run_batch(dataset, MODEL, methods=["gradcam", "eigencam"], chunk=3)
    base = {m: store.heatmap_field_name(MODEL, m, "head", batch.PREDICTED) for m in ("gradcam", "eigencam")}
    assert plain.fields == set(base.values())
    stamps = {f: dataset.values(f"{f}.created_at") for f in base.values()}

    # Eigen-CAM has no eigen_smooth: its plain maps already answer, and are skipped.
    eigen = batch.run_batch(dataset, MODEL, methods=["gradcam", "eigencam"], eigen_smooth=True, chunk=3)
    assert eigen.fields == {base["gradcam"] + "_eigen", base["eigencam"]} and eigen.done == 3
    assert dataset.values(f"{base['eigencam']}.created_at") == stamps[base["eigencam"]]
    assert all(label.eigen_smooth for label in dataset.values(base["gradcam"] + "_eigen"))
    again = batch.run_batch(dataset, MODEL, methods=["gradcam", "eigencam"], eigen_smooth=True, chunk=3)
    assert (again.done, again.skipped) == (0, 3)

    untrained = batch.run_batch(dataset.limit(1), MODEL, weights="untrained", methods=["gradcam"])
    assert untrained.fields == {base["gradcam"] + "_untrained"}
    assert dataset.first()[base["gradcam"] + "_untrained"].pretrained is False
    # the plain trained maps were never touched
    assert {f: dataset.values(f"{f}.created_at") for f in base.values()} == stamps
    assert all(label.pretrained for label in dataset.values(base["gradcam"]))


def test_a_batch_with_a_chosen_weights_file_writes_its_own_fields(dataset, tmp_path):
    import torch

    from camcore import weights
    from camcore.models import load_model

    stock = load_model(MODEL)
    path = tmp_path / "tuned.pth"
    torch.save(stock.module.state_dict(), path)  # same numbers, a file the user chose
    plain = batch.run_batch(dataset.limit(1), MODEL, methods=["gradcam"])
    mine = batch.run_batch(dataset.limit(1), MODEL, weights=str(path), methods=["gradcam"])
    [plain_field], [mine_field] = plain.fields, mine.fields
    assert mine_field == plain_field + "_tuned" and weights.choice_tag(str(path)) == "tuned"
    assert mine.done == 1 and dataset.first()[mine_field].weights == "file tuned.pth"
    again = batch.run_batch(dataset.limit(1), MODEL, weights=str(path), methods=["gradcam"])
    assert (again.done, again.skipped) == (0, 1)
