"""pages/audit.py in-process (AppTest): charts drawn from stored measures, a link's narrowing
followed by the sidebar and the URL, and the one-line messages for bad input."""
from __future__ import annotations

import json
import shlex

import pytest
from app_support import APP, TIMEOUT, run
from audit_support import audited_dataset
from streamlit.testing.v1 import AppTest

from camcore.store import audit

pytestmark = [pytest.mark.slow]


@pytest.fixture
def audited(tmp_path):
    ds, fields = audited_dataset(tmp_path, n=30)
    ds.persistent = True  # the app lists persistent datasets
    yield ds, fields
    ds.delete()


def _audit_page(ds, page: str = "pages/audit.py", **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["dataset"] = ds.name
    for k, v in params.items():
        at.query_params[k] = v
    run(at)
    at.switch_page(page)
    return run(at, allow_errors=False)


def test_audit_page_draws_the_charts_and_the_class_table(audited):
    ds, _fields = audited
    at = _audit_page(ds)
    charts = [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]
    assert len(charts) == 2
    assert charts[0]["xaxis"]["title"]["text"] == "share of heatmap mass on the object (0–1)"
    assert charts[0]["yaxis"]["title"]["text"] == "samples (count)"
    assert charts[1]["xaxis"]["title"]["text"] == "model probability of the explained class (0–1)"
    assert len(at.dataframe) == 1 and list(at.dataframe[0].value["class"]) == ["cat", "cup", "person"]
    assert any("30 samples in the sidebar's view" in c.value for c in at.caption)


def test_a_links_narrowing_narrows_the_sidebar_and_stays_in_the_url(audited):
    ds, fields = audited
    (run_,) = audit.runs(ds)
    narrow = audit.class_narrow(run_, "cup")
    at = _audit_page(ds, narrow=narrow)
    assert any("Narrowed by the Audit page: class" in c.value and c.value.endswith("cup") for c in at.sidebar.caption)
    assert any("**10 samples** in the view (narrowed)" in m.value for m in at.markdown)
    assert at.query_params["narrow"] == narrow and at.query_params["run"] == run_.heatmap


def test_no_measures_says_how_to_make_them(tmp_path):
    import shutil

    import fiftyone as fo
    from cam_support import skimage_data
    from fo_helpers import unique_name

    shutil.copy(skimage_data("coffee.png"), tmp_path / "coffee.png")
    ds = fo.Dataset(unique_name("plain set"), persistent=True)  # a space: quoted in the command
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "coffee.png")))
    try:
        at = _audit_page(ds)
        (line,) = [i.value for i in at.info]
        assert "No stored measures in this dataset yet" in line and "this command" in line
        command = f"python -m camcore batch --dataset {shlex.quote(ds.name)} --measures [--object-field ground_truth]"
        assert [c.value for c in at.code] == [command]  # a code block, the name quoted for a shell
        at = _audit_page(ds, "pages/runs.py")  # Two runs says the same
        (line,) = [i.value for i in at.info]
        assert "Two heatmap runs with stored measures are needed" in line and "once per run" in line
        assert [c.value for c in at.code] == [command]
    finally:
        ds.delete()


def test_mixed_settings_are_refused_in_one_line(audited):
    ds, fields = audited
    ds.take(3, seed=0).set_field(fields["about"], "t=0.3;obj=model;f=0").save()
    at = _audit_page(ds)
    (line,) = [w.value for w in at.warning]
    assert "different settings are mixed" in line
    assert not at.get("plotly_chart")


def test_two_runs_page_lists_the_most_changed_and_the_classes(audited):
    import dataclasses

    from audit_support import IDENTITY, add_run

    ds, _fields = audited
    add_run(ds, dataclasses.replace(IDENTITY, pretrained=False), seed=5)
    at = _audit_page(ds)
    at.switch_page("pages/runs.py")
    run(at, allow_errors=False)
    (chart,) = [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]
    assert chart["yaxis"]["title"]["text"] == "share change, B − A (−1…1)"
    # The untrained twin opens as A (before), the trained model as B (after).
    assert (at.selectbox(key="runs_a").value, at.selectbox(key="runs_b").value) == (
        dataclasses.replace(IDENTITY, pretrained=False).field_name, IDENTITY.field_name)
    classes, changed = at.dataframe
    assert sorted(classes.value["class"]) == ["cat", "cup", "person"]
    assert chart["xaxis"]["title"]["text"] == "class (explained by run B)"
    sizes = [abs(v) for v in changed.value["change"]]
    assert len(sizes) == 30 and sizes == sorted(sizes, reverse=True)
    captions = _image_captions(at)  # both maps of the most changed sample, side by side
    assert len(captions) == 2 and captions[0].startswith("A\\: ") and captions[1].startswith("B\\: ")


def test_two_runs_measured_differently_are_refused_in_one_line(audited):
    """Shares made on different objects (B on the model's own mask, A on the field's boxes), or
    mixed settings within one run, are not compared: one line, no chart, no table."""
    import dataclasses

    from audit_support import IDENTITY, add_run

    ds, fields = audited
    add_run(ds, dataclasses.replace(IDENTITY, pretrained=False), seed=5, about="t=0.5;obj=model;f=1")
    at = _audit_page(ds)
    at.switch_page("pages/runs.py")
    run(at, allow_errors=False)
    (line,) = [w.value.replace("\\", "") for w in at.warning]  # as shown: markdown escapes dropped
    assert line.startswith("The two runs measured the share on different objects") and "\n" not in line
    assert not at.get("plotly_chart") and not at.dataframe
    ds.take(4, seed=1).set_field(fields["about"], "t=0.3;obj=objects;f=1").save()  # A mixed in itself
    run(at, allow_errors=False)
    (line,) = [w.value.replace("\\", "") for w in at.warning]
    assert line.startswith(f"Measures of {IDENTITY.field_name} made with different settings are mixed")
    assert not at.get("plotly_chart") and not at.dataframe


def test_two_runs_group_by_the_class_b_explained_unless_asked_for_a(audited):
    """An untrained run A explains one noise class everywhere: the per-class changes group by run
    B's class by default (the trained or newer run), and by A's on request."""
    import dataclasses

    from audit_support import IDENTITY, add_run

    ds, _fields = audited
    twin = dataclasses.replace(IDENTITY, pretrained=False)
    add_run(ds, twin, seed=5)
    ds.set_field(f"{twin.field_name}.target", "barrow").save()
    at = _audit_page(ds)
    at.switch_page("pages/runs.py")
    run(at, allow_errors=False)
    classes, changed = at.dataframe
    assert sorted(classes.value["class"]) == ["cat", "cup", "person"]
    assert set(changed.value["class"]) == {"cat", "cup", "person"}
    at.radio(key="runs_by").set_value("A")
    run(at, allow_errors=False)
    classes, changed = at.dataframe
    assert list(classes.value["class"]) == ["barrow"] and set(changed.value["class"]) == {"barrow"}
    (chart,) = [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]
    assert chart["xaxis"]["title"]["text"] == "class (explained by run A)"


def _image_captions(at: AppTest) -> list[str]:
    """The captions of the images on the page (AppTest has no image element: read the protos)."""
    out: list[str] = []

    def walk(node):
        if type(node).__name__ == "Image" or getattr(node, "type", None) == "imgs":
            out.extend(img.caption for img in node.proto.imgs if img.caption)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return out


def test_a_narrowing_this_dataset_cannot_apply_is_dropped_in_one_line(audited):
    """A link's narrowing on a measure field that was deleted or renamed since (or a malformed
    one): one line in the sidebar on the link's first run, and the page shows the whole view (it
    was a dead end: no view, the same message twice on the page)."""
    ds, fields = audited
    ds.rename_sample_field(fields["conf"], "my_conf")  # renamed in the App after the link was made
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["dataset"] = ds.name
    at.query_params["narrow"] = f"{fields['conf']}:0:0.5"
    run(at, allow_errors=False)
    (line,) = [w.value for w in at.sidebar.warning]
    assert line.startswith("Dropped the Audit page's narrowing\\: cannot narrow by") and "\n" not in line
    at.switch_page("pages/audit.py")
    run(at, allow_errors=False)
    assert not at.warning and not at.exception
    assert len(at.get("plotly_chart")) == 1  # the histogram; conf was renamed: one line instead of the plot
    assert any(i.value.startswith("No confidence field for ") for i in at.info)
    assert any("**30 samples** in the view:" in m.value for m in at.markdown)
    assert "narrow" not in at.query_params


def test_a_deleted_confidence_field_says_so_in_one_line_instead_of_an_empty_plot(audited):
    ds, fields = audited
    ds.delete_sample_field(fields["conf"])  # as the App's field deletion does
    at = _audit_page(ds)
    (line,) = [i.value.replace("\\", "") for i in at.info]
    assert line.startswith("No confidence field for ") and "deleted or renamed" in line and "\n" not in line
    (chart,) = [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]  # the histogram stays
    assert chart["xaxis"]["title"]["text"] == "share of heatmap mass on the object (0–1)"
    assert len(at.dataframe) == 1


def test_a_deleted_bg_field_leaves_the_class_tables_counts_blank_not_zero(audited):
    """The App deleted the run's bg field: the per-class background-dominated counts are unknown,
    not 0 (they read 0 for every class beside red bars), and the page says why in one line."""
    ds, fields = audited
    ds.delete_sample_field(fields["bg"])
    at = _audit_page(ds)
    table = at.dataframe[0].value
    assert table["background-dominated"].isna().all() and table["samples"].sum() == 30
    (line,) = [c.value.replace("\\", "") for c in at.caption if "background-dominated counts" in c.value]
    assert line.startswith("No background-dominated counts for ") and "deleted or renamed" in line


def test_a_classifier_measured_without_an_object_field_says_why_there_are_no_charts(audited):
    """`batch --measures` on a classifier with no --object-field stores no share (no mask or box of
    its own): one line saying so and how to measure one, not an empty histogram beside a line blaming
    a segmentation model; the class table's counts stay, its shares and flags blank."""
    ds, fields = audited
    ds.set_field(fields["share"], None).save()
    ds.set_field(fields["bg"], None).save()
    ds.set_field(fields["about"], "t=0.5;obj=model;f=0").save()
    at = _audit_page(ds)
    assert not at.get("plotly_chart")
    (line,) = [i.value.replace("\\", "") for i in at.info]
    assert line.startswith("No sample of this view has an on-object share in ") and "--object-field" in line
    assert any("Click a class to narrow the view" in c.value for c in at.caption)  # no bar or point to click
    assert not any("Click a bar" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert table["samples"].sum() == 30 and table["background-dominated"].isna().all()


def test_a_deleted_heatmap_field_says_why_the_classes_are_gone(audited):
    """The map field itself deleted in the App, its measures kept: the shares still chart, and one
    line says why the class table has a single class "None"."""
    from audit_support import IDENTITY

    ds, _fields = audited
    ds.delete_sample_field(IDENTITY.field_name)
    at = _audit_page(ds)
    assert len(at.get("plotly_chart")) == 2 and list(at.dataframe[0].value["class"]) == ["None"]
    (line,) = [c.value.replace("\\", "") for c in at.caption if "was deleted or renamed" in c.value]
    assert line.startswith(f"The heatmap field {IDENTITY.field_name} was deleted or renamed")


def test_the_narrowed_view_is_saved_as_a_fiftyone_saved_view(audited):
    ds, _fields = audited
    (run_,) = audit.runs(ds)
    at = _audit_page(ds, narrow=audit.class_narrow(run_, "cup"))
    at.text_input(key="audit_save_name").input("background cups")
    at.button(key="audit_save").click()
    run(at, allow_errors=False)
    assert any("Saved as the FiftyOne view 'background cups'" in s.value for s in at.success)
    ds.reload()
    assert "background cups" in ds.list_saved_views()
    saved = ds.load_saved_view("background cups")
    assert saved.count() == 10 and set(saved.values(f"{run_.heatmap}.target")) == {"cup"}
    at.button(key="audit_save").click()  # the same name again: replacing a saved view is said
    run(at, allow_errors=False)
    assert any("replacing the saved view of that name" in s.value for s in at.success)


def test_open_in_the_app_serves_the_narrowed_view_on_the_chosen_port(audited):
    """'Open in the FiftyOne App' serves the narrowed view (10 of 30 samples), not the dataset, on
    the port where Explore serves the App (one App a process: another port would close it)."""
    from mongod_support import free_port

    from camcore import store

    ds, _fields = audited
    (run_,) = audit.runs(ds)
    at = _audit_page(ds, narrow=audit.class_narrow(run_, "cup"))
    port = free_port()
    at.session_state["fo_launched"] = port  # where Explore serves the App (not FiftyOne's 5151)
    try:
        at.button(key="audit_open_app").click()
        run(at, allow_errors=False)
        session = store.app_session()
        assert session is not None and session.server_port == port
        assert session.view is not None and session.view.count() == 10
        assert any(f"localhost:{port}/datasets/" in m.value for m in at.markdown)
    finally:
        store.close_app()


def test_a_run_with_no_share_shows_empty_cells_not_none(audited):
    """A classifier measured without an object field has no share: the class table's mean share and
    background-dominated cells read "None" (Streamlit's text for a missing value); now a dash."""
    ds, fields = audited
    ds.set_field(fields["share"], None).save()
    ds.set_field(fields["bg"], None).save()
    ds.set_field(fields["about"], "t=0.5;obj=model;f=0").save()
    at = _audit_page(ds)
    (table,) = at.dataframe
    assert table.value["mean share (0–1)"].isna().all() and table.value["background-dominated"].isna().all()
    assert table.proto.placeholder == "—"  # what the browser draws in a cell with no value


def test_a_class_with_a_semicolon_narrows_and_stays_in_the_url(audited):
    """A class named "a;b" (a row of the class table): its narrowing was split at the ";" and dropped
    with a warning, the whole view shown; now it narrows, and the sidebar names the class whole."""
    from audit_support import IDENTITY

    ds, _fields = audited
    ds.set_values(f"{IDENTITY.field_name}.target", ["a;b: c=d" if i % 3 else "cup" for i in range(len(ds))])
    (run_,) = audit.runs(ds)
    narrow = audit.class_narrow(run_, "a;b: c=d")
    at = _audit_page(ds, narrow=narrow)
    assert not at.sidebar.warning, [w.value for w in at.sidebar.warning]
    assert any(c.value.replace("\\", "").endswith("Narrowed by the Audit page: class = a;b: c=d")
               for c in at.sidebar.caption), [c.value for c in at.sidebar.caption]
    assert any("**20 samples** in the view (narrowed)" in m.value for m in at.markdown)
    assert at.query_params["narrow"] == narrow
