"""Issue #21: measure fields show whole in the FiftyOne App's sidebar too. Their names are cut to
fit (camcore.identity.MEASURE_SIDEBAR_PX), so a name no longer says which map it describes: the
field's info does (camcore.store.measures.measure_links). Two maps whose cut names meet keep apart
(spare names), and a dataset whose measure fields were named whole the old way keeps working: the
Audit, Two runs and Review pages (audit.runs), a batch's resume (the fields it declares), narrowing."""
from __future__ import annotations

import fiftyone as fo
import pytest
from audit_support import IDENTITY, add_run
from fo_helpers import coded_identity, unique_name

from camcore.errors import StoreError
from camcore.identity import MEASURE_SIDEBAR_PX, MEASURES, sidebar_px
from camcore.store import audit
from camcore.store import measures as measure_store
from camcore.store.datasets import MARK

N = 6
# A's and B's measure names are cut alike (the class is cut off: camm_remove_grad_head_effl)
A = IDENTITY
B = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target="Egyptian cat")


@pytest.fixture
def dataset():
    ds = fo.Dataset(unique_name("measure names"))
    ds.add_samples([fo.Sample(filepath=f"/nowhere/{i}.png") for i in range(N)])
    yield ds
    ds.delete()


def test_two_maps_whose_cut_measure_names_meet_keep_apart_linked_by_their_info(dataset):
    assert A.measure_field("remove") == B.measure_field("remove")  # they meet
    fields_a = add_run(dataset, A, seed=1)
    fields_b = add_run(dataset, B, seed=2)
    names = [*fields_a.values(), *fields_b.values()]
    assert len(set(names)) == 2 * len(MEASURES)
    assert fields_b == B.measure_fields(spare=True)  # the second map takes its spare names
    too_wide = [(n, round(sidebar_px(n), 1)) for n in names if sidebar_px(n) > MEASURE_SIDEBAR_PX]
    assert not too_wide, too_wide
    # each field is linked to its own map, whatever its name reads as
    assert measure_store.measure_runs(dataset) == {A.field_name: fields_a, B.field_name: fields_b}
    assert {r.heatmap: r.fields for r in audit.runs(dataset)} == {A.field_name: fields_a, B.field_name: fields_b}
    # declared again (a resume): the same fields
    assert measure_store.declare_measure_fields(dataset, A) == fields_a
    assert measure_store.declare_measure_fields(dataset, B) == fields_b
    assert [dataset.get_field(f).info[MARK]["heatmap"] for f in fields_b.values()] == [B.field_name] * len(MEASURES)
    # the Audit page's summary and narrowing read B's own values
    run_b = next(r for r in audit.runs(dataset) if r.heatmap == B.field_name)
    assert audit.summarise(dataset, run_b).with_measures == N
    narrow = f"{fields_b['remove']}:-100:100;{fields_b['bg']}=true"
    assert audit.narrow_filter(narrow, dataset)
    assert audit.describe_narrow(narrow).startswith("remove -100–100, background-dominated = true")
    with pytest.raises(StoreError, match="not a measure field"):
        audit.narrow_filter("camm_remove_nothing:0:1", dataset)


def test_a_dataset_whose_measure_fields_are_named_whole_the_old_way_keeps_them(dataset):
    old = {m: f"camm_{m}_{A.field_name[len('cam_'):]}" for m in MEASURES}  # camm_remove_grad_head_effl0
    assert sidebar_px(old["remove"]) > MEASURE_SIDEBAR_PX
    types = {float: fo.FloatField, bool: fo.BooleanField, str: fo.StringField}
    for m, name in old.items():  # as an older CAM Explorer declared them
        dataset.add_sample_field(name, types[MEASURES[m]], description=f"CAM Explorer {m} of {A.field_name}",
                                 info={MARK: {"kind": "measure", "measure": m, "heatmap": A.field_name}})
    assert add_run(dataset, A) == old  # a batch (and its resume) writes where the map's measures are
    assert not [f for f in dataset.get_field_schema() if f.startswith("camm_") and f not in old.values()]
    assert [r.fields for r in audit.runs(dataset)] == [old]
    assert audit.narrow_filter(f"{old['remove']}:-100:100", dataset)
    # a field without our info is read by its name, written whole (the fallback)
    dataset.add_sample_field("camm_share_grad_l4_r50", fo.FloatField)
    assert measure_store.measure_runs(dataset)["cam_grad_l4_r50"] == {"share": "camm_share_grad_l4_r50"}


def test_a_field_in_the_way_is_refused_in_one_line_before_anything_is_written(dataset):
    dataset.add_sample_field(A.measure_field("bg"), fo.FloatField)  # not ours, where A's flag goes
    before = set(dataset.get_field_schema())
    with pytest.raises(StoreError, match="not a CAM Explorer bg measure") as err:
        measure_store.declare_measure_fields(dataset, A)
    assert "\n" not in str(err.value) and set(dataset.get_field_schema()) == before


def test_another_maps_measure_field_is_never_shared(dataset):
    """A field of ours that holds another map's measure, where this map's would go: this map's
    measures go to their spare names and the other's field keeps its map (before, any measure
    field of ours of that name was taken, so two maps wrote one field)."""
    other = "cam_grad_head_effl0_tabby"
    dataset.add_sample_field(A.measure_field("bg"), fo.BooleanField,
                             info={MARK: {"kind": "measure", "measure": "bg", "heatmap": other}})
    fields = measure_store.declare_measure_fields(dataset, A)
    assert fields == A.measure_fields(spare=True) and fields["bg"] != A.measure_field("bg")
    assert dataset.get_field(A.measure_field("bg")).info[MARK]["heatmap"] == other
    runs = measure_store.measure_runs(dataset)
    assert runs[A.field_name] == fields and runs[other] == {"bg": A.measure_field("bg")}
