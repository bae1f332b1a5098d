"""Batch runs with eigen_smooth or untrained weights write their own fields (real mongod), and
resume on them: the names run_batch checks are the names push_many writes."""
from __future__ import annotations

import fiftyone as fo
import pytest

from camcore import batch
from camcore.batch import BatchOptions
from fo_helpers import field_name, unique_name, write_images

MODEL = "efficientnet_lite0"


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"v{i}.png" for i in range(3)], size=(40, 48))
    ds = fo.Dataset(unique_name("variants"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()


def test_eigen_and_untrained_batches_keep_the_plain_field_and_resume(dataset):
    plain = batch.run_batch(dataset, BatchOptions(MODEL, methods=["gradcam", "eigencam"], chunk=3))
    def field(method: str, **variant) -> str:
        return field_name(MODEL, method, "head", batch.PREDICTED, **variant)

    base = {m: field(m) for m in ("gradcam", "eigencam")}
    eigen_field, untrained_field = field("gradcam", eigen_smooth=True), field("gradcam", pretrained=False)
    assert plain.fields == set(base.values())
    stamps = {f: dataset.values(f"{f}.created_at") for f in base.values()}

    # Eigen-CAM has no eigen_smooth: its plain maps already answer, and are skipped.
    eigen_options = BatchOptions(MODEL, methods=["gradcam", "eigencam"], eigen_smooth=True, chunk=3)
    eigen = batch.run_batch(dataset, eigen_options)
    assert eigen.fields == {eigen_field, base["eigencam"]} and eigen.done == 3
    assert dataset.values(f"{base['eigencam']}.created_at") == stamps[base["eigencam"]]
    assert all(label.eigen_smooth for label in dataset.values(eigen_field))
    again = batch.run_batch(dataset, eigen_options)
    assert (again.done, again.skipped) == (0, 3)

    untrained = batch.run_batch(dataset.limit(1), BatchOptions(MODEL, weights="untrained", methods=["gradcam"]))
    assert untrained.fields == {untrained_field}
    assert dataset.first()[untrained_field].pretrained is False
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
    plain = batch.run_batch(dataset.limit(1), BatchOptions(MODEL, methods=["gradcam"]))
    mine = batch.run_batch(dataset.limit(1), BatchOptions(MODEL, weights=str(path), methods=["gradcam"]))
    [plain_field], [mine_field] = plain.fields, mine.fields
    assert weights.choice_tag(str(path)) == "tuned"
    layer = stock.spec.default_layer
    assert plain_field == field_name(MODEL, "gradcam", layer, batch.PREDICTED)
    assert mine_field == field_name(MODEL, "gradcam", layer, batch.PREDICTED, weights_tag="tuned")
    assert mine.done == 1 and dataset.first()[mine_field].weights == "file tuned.pth"
    again = batch.run_batch(dataset.limit(1), BatchOptions(MODEL, weights=str(path), methods=["gradcam"]))
    assert (again.done, again.skipped) == (0, 1)


def test_a_batch_planned_before_loading_names_its_fields_as_the_loaded_model_does(tmp_path):
    """The Ray driver and the Batch page name fields before any model is loaded; the workers name
    them from the loaded model. For every kind of weights choice the two must agree."""
    import torch

    from camcore.models import load_model

    path = tmp_path / "My Tuned.v2.pth"
    torch.save(load_model(MODEL).module.state_dict(), path)
    for choice in ("auto", "untrained", str(path)):
        options = BatchOptions(MODEL, weights=choice, methods=["gradcam", "eigencam"], eigen_smooth=True).checked()
        loaded = load_model(MODEL, choice)
        planned, computed = options.identities(), options.identities(loaded)
        assert [i.field_name for i in planned] == [i.field_name for i in computed], choice
        assert [i.meaning for i in planned] == [i.meaning for i in computed], choice
        assert [i.input_size for i in planned] == [i.input_size for i in computed], choice


def test_a_batch_switches_its_newest_field_on_in_the_app_before_its_first_write(dataset):
    """The Ray driver declares every field before any worker writes, and a resumed run writes
    nothing: the App shows one of the run's maps (the newest declared; issue #21: one map at a
    time, never a stack of four), before any write."""
    options = BatchOptions(MODEL, methods=["gradcam", "eigencam"], layers=["stage5", "stage6"]).checked()
    fields = batch.declare_fields(dataset, options)
    assert len(fields) == 4
    active = fo.load_dataset(dataset.name).app_config.active_fields
    assert not active.exclude and set(fields) & set(active.paths) == {fields[-1]}
    again = batch.declare_fields(dataset, BatchOptions(MODEL, methods=["gradcam"]).checked())
    active = fo.load_dataset(dataset.name).app_config.active_fields
    assert (set(fields) | set(again)) & set(active.paths) == {again[-1]}
