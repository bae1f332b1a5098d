"""Issue #21: the measure fields (camm_*, camcore.store.measures) sit in a sidebar group of their
own, "CAM measures", under "CAM heatmaps", not in the App's PRIMITIVES: made once, new fields
pushed to it, the user's own groups and edits kept, fields written before grouped on the next
write, and an App opened before the batch takes it through the page's own check (sync_app).
Against the suite's real mongod; the real App: tests/test_app21_measure_app.py."""
from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fo_helpers import coded_identity, unique_name

from camcore import store
from camcore.store import appstyle, appwatch
from camcore.store import measures as measure_store

MODEL = "efficientnet_lite0"
A = coded_identity(model=MODEL, method="gradcam", layer="head", target="predicted")
B = coded_identity(model=MODEL, method="layercam", layer="head", target="predicted")
OLD = coded_identity(model=MODEL, method="eigencam", layer="head", target="predicted")
CAM, MEASURES = appstyle.SIDEBAR_GROUP, appstyle.MEASURE_GROUP


@pytest.fixture
def dataset():
    ds = fo.Dataset(unique_name("measure group"))
    ds.add_samples([fo.Sample(filepath=f"/nowhere/{i}.png") for i in range(3)])
    yield ds
    ds.delete()


def _run(ds: fo.Dataset, identity) -> list[str]:
    """A batch's declarations: the heatmap field, then its measure fields (their names)."""
    store.declare_heatmap_fields(ds, [identity])
    return list(measure_store.declare_measure_fields(ds, identity).values())


def _groups(ds: fo.Dataset) -> list[tuple[str, list[str], bool]]:
    ds.reload()
    return [(g.name, list(g.paths or []), g.expanded is not False) for g in ds.app_config.sidebar_groups or []]


def _paths(ds: fo.Dataset) -> dict[str, list[str]]:
    return {name: paths for name, paths, _e in _groups(ds)}


def test_measure_fields_get_a_group_of_their_own_under_the_heatmaps(dataset):
    a = _run(dataset, A)
    names = [name for name, _p, _e in _groups(dataset)]
    assert names[names.index(CAM) + 1] == MEASURES
    groups = _paths(dataset)
    assert groups[MEASURES] == a and groups[CAM] == [A.field_name]
    assert not [p for name, paths in groups.items() if name != MEASURES for p in paths if p in a]
    b = _run(dataset, B)  # another map's: pushed to the group
    assert _paths(dataset)[MEASURES] == a + b
    before = _groups(dataset)
    assert _run(dataset, B) == b and _groups(dataset) == before  # declared again (a resume): as it was


def test_measure_fields_written_before_the_group_existed_are_grouped_on_the_next_write(dataset):
    a = _run(dataset, A)
    # As an earlier version left them: no measures group, the fields under PRIMITIVES (and one
    # named whole the old way, with no info: read by its name)
    old = f"camm_conf_{OLD.field_name[len('cam_'):]}"
    dataset.add_sample_field(old, fo.FloatField)
    dataset.reload()
    groups = [g for g in dataset.app_config.sidebar_groups if g.name != MEASURES]
    for g in groups:
        if g.name == "primitives":
            g.paths = [*g.paths, *a, old]
    dataset.app_config.sidebar_groups = groups
    dataset.save()
    b = _run(dataset, B)
    groups = _paths(dataset)
    assert set(groups[MEASURES]) == {*a, old, *b}
    assert not [p for p in groups["primitives"] if p.startswith("camm_")]


def test_the_users_own_groups_and_edits_are_kept(dataset):
    a = _run(dataset, A)
    # in the App: one measure moved to a group of the user's own, the measures group collapsed
    dataset.reload()
    groups = dataset.app_config.sidebar_groups
    for g in groups:
        if g.name == MEASURES:
            g.paths = [p for p in g.paths if p != a[0]]
            g.expanded = False
    groups.append(fo.SidebarGroupDocument(name="mine", paths=[a[0]]))
    dataset.app_config.sidebar_groups = groups
    dataset.save()
    b = _run(dataset, B)
    got = {name: (paths, expanded) for name, paths, expanded in _groups(dataset)}
    assert got["mine"] == ([a[0]], True)
    assert got[MEASURES] == (a[1:] + b, False)


def test_an_app_open_before_the_batch_gets_the_group_through_its_own_check(dataset, monkeypatch):
    """The page's sync_app: the changed groups, with the measures group, and a reload of the
    page's dataset (its schema lacks the new fields), in an App the explorer launched too (its
    session refreshes the page on a colour change only: a batch's measure fields come after its maps)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(fo.config, "plugins_dir", str(root / "plugins"))
    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", str(root / "plugins"))
    store.declare_heatmap_fields(dataset, [A])
    for watched in ("", "1"):
        monkeypatch.setenv(appwatch.WATCHED_ENV, watched)
        known = list(dataset.get_field_schema())
        seen = dict(_sync(dataset, {"known": known}))[appwatch.SIDEBAR_GROUPS_OP]["version"]
        fields = list(measure_store.declare_measure_fields(dataset, A).values())  # the batch, elsewhere
        ops = _sync(dataset, {"seen": seen})
        assert ops[0][0] == "reload_dataset", (watched, ops)
        groups = dict(ops)[appwatch.SIDEBAR_GROUPS_OP]["groups"]
        assert [g["paths"] for g in groups if g["name"] == MEASURES] == [fields], (watched, groups)
        for name in fields:  # for the next round
            dataset.delete_sample_field(name)
        dataset.app_config.sidebar_groups = [g for g in dataset.app_config.sidebar_groups if g.name != MEASURES]
        dataset.save()


def _sync(ds: fo.Dataset, params: dict) -> list[tuple[str, dict]]:
    result = foo.execute_operator("@cam-explorer/cam/sync_app", ctx={"dataset": ds, "params": params})
    return [(r.operator_uri, r.params or {}) for r in result.executor._requests]
