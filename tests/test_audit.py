"""The Audit page's numbers (camcore.store.audit) against a real mongod: aggregations on the
server equal what Python counts, bad input in one line, narrowing, and 10^5 samples."""
from __future__ import annotations

import numpy as np
import pytest
from audit_support import CLASSES, IDENTITY, audited_dataset

from camcore.errors import StoreError
from camcore.store import audit, views


@pytest.fixture
def audited(tmp_path):
    ds, fields = audited_dataset(tmp_path, n=60)
    yield ds, fields
    ds.delete()


def _run(ds) -> audit.AuditRun:
    (run,) = audit.runs(ds)
    assert run.heatmap == IDENTITY.field_name
    return run


def test_summary_equals_what_python_counts(audited):
    ds, fields = audited
    s = audit.summarise(ds, _run(ds))
    shares = np.array(ds.values(fields["share"]))
    classes = [h.target for h in ds.values(IDENTITY.field_name)]
    assert (s.total, s.with_measures, s.with_share) == (60, 60, 60)
    expected, _ = np.histogram(shares, bins=20, range=(0, 1))
    assert list(s.counts) == expected.tolist()
    by_class = {c: (n, m, bg) for c, n, m, bg in s.classes}
    for cls in CLASSES:
        mine = shares[[c == cls for c in classes]]
        n, mean, bg = by_class[cls]
        assert n == len(mine) and mean == pytest.approx(mine.mean()) and bg == int((mine < 0.5).sum())
    assert s.settings == (("t=0.5;obj=objects;f=1", 60),)
    assert len(s.points) == 60 and all(0 <= p[1] <= 1 and 0 <= p[2] <= 1 for p in s.points)


def test_no_measures_and_mixed_settings_are_one_line_each(audited, tmp_path):
    ds, fields = audited
    run = _run(ds)
    empty = ds.match({fields["share"]: {"$gt": 2}})  # a view where nothing was measured
    line = audit.check(audit.summarise(empty, run), ds.name, run)
    assert "No stored measures" in line and "--measures" in line and "\n" not in line
    ds.take(5, seed=1).set_field(fields["about"], "t=0.3;obj=model;f=0").save()
    line = audit.check(audit.summarise(ds, run), ds.name, run)
    assert line.startswith("Measures made with different settings are mixed") and "\n" not in line
    assert "55 samples with t=0.5;obj=objects;f=1" in line


def test_narrowing_by_bin_class_and_box(audited):
    ds, fields = audited
    run = _run(ds)
    shares = np.array(ds.values(fields["share"]))
    spec = views.ViewSpec(narrow=audit.bin_narrow(run, 0.0, 0.25))
    assert views.build_view(ds, spec).count() == int((shares < 0.25).sum())
    assert "share 0–0.25" in spec.describe()
    assert views.build_view(ds, views.ViewSpec(narrow=audit.class_narrow(run, "cup"))).count() == 20
    top = audit.bin_narrow(run, 0.95, 1.0)
    assert views.build_view(ds, views.ViewSpec(narrow=top)).count() == int((shares >= 0.95).sum())
    worst = audit.worst_first(ds, run, 0, 3)
    assert [ds[sid][fields["share"]] for sid, _ in worst] == sorted(shares)[:3]
    with pytest.raises(StoreError, match="cannot narrow by 'filepath:0:1'"):
        views.build_view(ds, views.ViewSpec(narrow="filepath:0:1"))


def test_the_whole_datasets_summary_is_stored_and_dropped_when_samples_change(audited):
    ds, _fields = audited
    run = _run(ds)
    stored = audit.store_summary(ds, run)
    assert audit.stored_summary(ds, run) == stored
    ds.delete_samples(ds.limit(1))
    assert audit.stored_summary(ds, run) is None
    assert audit.audit_summary(ds, run).total == 59


def test_the_stored_summary_is_dropped_when_a_measure_field_is_deleted_or_renamed(audited):
    """A batch left the whole dataset's summary; the App then deleted the bg field and renamed the
    conf field: the Audit page aggregates afresh (no background-dominated counts, no points) instead
    of drawing the batch's numbers of fields that are gone."""
    ds, fields = audited
    audit.store_summary(ds, _run(ds))
    ds.delete_sample_field(fields["bg"])
    ds.rename_sample_field(fields["conf"], "my_conf")
    run = _run(ds)
    assert audit.stored_summary(ds, run) is None
    s = audit.audit_summary(ds, run)
    assert all(bg == 0 for *_x, bg in s.classes) and s.points == ()


@pytest.mark.slow
def test_aggregations_on_a_hundred_thousand_samples(tmp_path):
    ds, fields = audited_dataset(tmp_path, n=10)
    try:
        template = ds._sample_collection.find_one({}, {"_id": 0})
        rng = np.random.default_rng(3)
        shares = rng.random(100_000)
        docs = [{**template, fields["share"]: float(v), fields["bg"]: bool(v < 0.5)} for v in shares]
        ds._sample_collection.insert_many(docs, ordered=False)
        run = _run(ds)
        s = audit.summarise(ds, run)
        assert s.total == 100_010 and s.with_share == 100_010
        assert sum(s.counts) == 100_010 and len(s.points) == audit.SCATTER_POINTS
        view = views.build_view(ds, views.ViewSpec(narrow=audit.bin_narrow(run, 0.0, 0.05)))
        assert view.count() == s.counts[0]
    finally:
        ds.delete()


def test_measure_fields_are_sortable_and_one_deleted_in_the_app_is_handled(audited):
    ds, fields = audited
    assert {fields["share"], fields["conf"]} <= set(views.sortable_fields(ds))  # the sidebar's Sort by
    ds.delete_sample_field(fields["bg"])  # as the App's field deletion does
    s = audit.summarise(ds, _run(ds))
    assert s.with_share == 60 and all(bg == 0 for *_x, bg in s.classes)
    ds.rename_sample_field(fields["share"], "my_share")  # renamed: no longer a measure of this map
    assert audit.runs(ds) == []


def test_class_names_reach_plotly_as_text_not_markup():
    from ui.audit import class_change_figure, plain

    hostile = "<a href='http://example.invalid'>cat</a>"
    assert "<" not in plain(hostile) and plain(hostile).startswith("&lt;a href")
    fig = class_change_figure([(hostile, 3, 0.1, 2, 1)])
    assert "<a" not in str(fig.data[0].x[0])


def test_chart_selections_become_narrowings(audited):
    from types import SimpleNamespace

    from ui.audit import from_histogram, from_scatter, from_table

    ds, fields = audited
    run = _run(ds)
    s = audit.summarise(ds, run)
    bar = SimpleNamespace(selection=SimpleNamespace(points=[{"x": 0.025, "y": 3}]))
    assert from_histogram(bar, s, run) == f"{fields['share']}:0:0.05"
    box = SimpleNamespace(selection=SimpleNamespace(points=[{"x": 0.2, "y": 0.1}, {"x": 0.6, "y": 0.4}]))
    narrow = from_scatter(box, run)
    assert narrow == f"{fields['conf']}:0.199999:0.600002;{fields['share']}:0.099999:0.400002"  # outwards
    row = SimpleNamespace(selection=SimpleNamespace(rows=[1]))
    assert from_table(row, [{"class": "cat"}, {"class": "cup"}], run) == f"{IDENTITY.field_name}.target=cup"
    assert from_histogram(SimpleNamespace(selection=SimpleNamespace(points=[])), s, run) is None


def test_a_clicked_point_narrows_to_a_view_that_holds_it(audited):
    """A click on one point of the scatter plot (its exact stored values, full precision, as the
    browser sends them back) narrows to a view that holds that sample: the range is rounded
    outwards, never past the point."""
    from types import SimpleNamespace

    from ui.audit import from_scatter

    ds, fields = audited
    rng = np.random.default_rng(7)
    ds.set_values(fields["conf"], rng.random(len(ds)).tolist())
    ds.set_values(fields["share"], rng.random(len(ds)).tolist())
    run = _run(ds)
    for sample_id, conf, share in zip(*ds.values(["id", fields["conf"], fields["share"]]), strict=True):
        click = SimpleNamespace(selection=SimpleNamespace(points=[{"x": conf, "y": share}]))
        view = views.build_view(ds, views.ViewSpec(narrow=from_scatter(click, run)))
        assert sample_id in view.values("id"), (conf, share)


def test_the_histograms_count_axis_has_whole_numbers():
    """A few samples per bin: Plotly's own ticks read 0.2, 0.4, ... samples; counts are whole."""
    from ui.audit import histogram_figure

    few = audit.Summary(8, 8, 8, tuple(i / 20 for i in range(21)), (1,) * 8 + (0,) * 12, (), ())
    axis = histogram_figure(few, 0.5).layout.yaxis
    assert axis.dtick == 1 and axis.tickformat == ",d"
    many = audit.Summary(900, 900, 900, few.edges, (45,) * 20, (), ())
    assert histogram_figure(many).layout.yaxis.tickformat == ",d"  # Plotly's ticks, 1,000 as "1,000"


def test_measure_settings_read_as_words():
    assert audit.describe_about("t=0.5;obj=objects[*];f=1") == (
        "share on any object in objects · background-dominated below 0.5 · faithfulness on")
    assert audit.describe_about("t=0.3;obj=model;f=0") == (
        "share on the model's own mask or box · background-dominated below 0.3 · faithfulness off")
    assert audit.describe_about("t=0.5;obj=gt[cat];f=0").startswith("share on 'cat' in gt ·")


def test_the_class_change_plot_keeps_the_extremes_of_many_classes_readable():
    """1,000 ImageNet classes would be 1,000 bars at 1280 px: the plot keeps the most improved and
    the most worsened (the table beside it lists them all)."""
    from ui.audit import PLOTTED_CLASSES, class_change_figure

    rows = [(f"class {i}", 5, 0.5 - i / 1000, 3, 1) for i in range(1000)]  # best first
    fig = class_change_figure(rows, "B")
    names = list(fig.data[0].x)
    assert len(names) == PLOTTED_CLASSES and names[0] == "class 0" and names[-1] == "class 999"
    assert "of 1,000 classes" in fig.layout.title.text
    few = class_change_figure(rows[:5])
    assert len(few.data[0].x) == 5 and few.layout.title.text.startswith("Classes that got better")


def test_an_untrained_run_opens_as_a_beside_its_trained_twin_as_b():
    """Two runs on the demo, trained and untrained Grad-CAM, and a third (Eigen-CAM, trained) whose
    name sorts between them: A is the untrained run and B its trained twin, not the next name
    (which compared Grad-CAM untrained against Eigen-CAM trained)."""
    import dataclasses

    from fo_helpers import coded_identity

    from ui.audit import before_first

    grad = coded_identity(model="efficientnet_lite0", method="gradcam", layer="head", target="predicted")
    eigen = coded_identity(model="efficientnet_lite0", method="eigencam", layer="head", target="predicted")
    untrained = dataclasses.replace(grad, pretrained=False)
    names = sorted(i.field_name for i in (grad, eigen, untrained))
    assert names.index(eigen.field_name) < names.index(grad.field_name)
    meanings = {i.field_name: i.meaning for i in (grad, eigen, untrained)}
    for known in (meanings, {}):  # the fields' meanings, or (none stored) their names
        assert before_first(names, known)[:2] == [untrained.field_name, grad.field_name]


ODD_CLASSES = ("a;b", "x=y: z", " padded ", '"quoted"', "cup")


def test_narrowing_to_any_class_name_and_old_texts_still_work(audited):
    """A class whose name holds ";" could not be narrowed to (the narrowing joins conditions with ";"
    and split the class in two: an error, the narrowing dropped); "=", ":", quotes and spaces at its
    ends are kept too. Texts written before (in stored URLs and findings) narrow as they did."""
    ds, fields = audited
    run = _run(ds)
    ds.set_values(f"{IDENTITY.field_name}.target", [ODD_CLASSES[i % len(ODD_CLASSES)] for i in range(len(ds))])
    shares = np.array(ds.values(fields["share"]))
    targets = np.array([h.target for h in ds.values(IDENTITY.field_name)], dtype=object)
    for cls in ODD_CLASSES:
        narrow = audit.class_narrow(run, cls)
        view = views.build_view(ds, views.ViewSpec(narrow=narrow))
        assert set(view.values(f"{IDENTITY.field_name}.target")) == {cls} and view.count() == 12, cls
        assert audit.describe_narrow(narrow) == f"class = {cls}"
        both = f"{narrow};{audit.bin_narrow(run, 0.0, 0.5)}"  # a class and a range, joined
        expected = int(((targets == cls) & (shares < 0.5)).sum())
        assert views.build_view(ds, views.ViewSpec(narrow=both)).count() == expected, cls
        assert audit.describe_narrow(both) == f"class = {cls}, share 0–0.5"
    # Old texts, byte for byte: a plain class is written as before, and "=" / ":" in one read as before.
    assert audit.class_narrow(run, "cup") == f"{run.target}=cup"
    assert views.build_view(ds, views.ViewSpec(narrow=f"{run.target}=x=y: z")).count() == 12
    old_box = f"{fields['conf']}:0.2:0.6;{fields['share']}:0.1:0.4"
    conf = np.array(ds.values(fields["conf"]))
    in_box = int(((conf >= 0.2) & (conf < 0.6) & (shares >= 0.1) & (shares < 0.4)).sum())
    assert views.build_view(ds, views.ViewSpec(narrow=old_box)).count() == in_box
    # An old text whose class began with a quote that is not a whole quoted string: taken as written.
    ds.set_values(f"{IDENTITY.field_name}.target", ['"half'] * len(ds))
    assert views.build_view(ds, views.ViewSpec(narrow=f'{run.target}="half')).count() == 60
