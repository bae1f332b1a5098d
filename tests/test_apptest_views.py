"""The sidebar on real-world datasets (AppTest, real MongoDB): repeated file names, positions,
search, saved views, sorting, the App's selection, and the URL as state."""
from __future__ import annotations

import socket

import fiftyone as fo
import pytest
from app_support import APP, TIMEOUT, current_sample, open_sample, run
from fo_helpers import unique_name, write_images
from streamlit.testing.v1 import AppTest

from camcore import store

pytestmark = [pytest.mark.slow]


@pytest.fixture
def repeated(tmp_path):
    """Repeated file names across folders, plus a field to sort by and a saved view."""
    paths = write_images(tmp_path / "a", ["frame.jpg", "other.jpg"]) + write_images(tmp_path / "b", ["frame.jpg"])
    dataset = fo.Dataset(unique_name("repeated"), persistent=True)
    dataset.add_samples([fo.Sample(filepath=p, uniqueness=u, tags=["val"] if i else ["train"])
                         for i, (p, u) in enumerate(zip(paths, [0.2, 0.9, 0.5]))])
    dataset.save_view("val-only", dataset.match_tags("val"))
    yield dataset
    dataset.delete()


def _at_findings(dataset_name: str | None = None, **params) -> AppTest:
    """The app on the Findings page (no model pass: the sidebar is what is tested)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    run(at)
    at.switch_page("pages/findings.py")
    run(at)
    if dataset_name:
        at.sidebar.selectbox(key="dataset").set_value(dataset_name)
        run(at)
    return at


def _sidebar_texts(at: AppTest) -> list[str]:
    return [t.value for t in at.sidebar.text]


def test_next_and_previous_reach_every_sample_by_id_with_repeated_names(repeated):
    ids = repeated.values("id")
    at = _at_findings(repeated.name)
    assert current_sample(at) == ids[0]
    assert "a/frame.jpg" in _sidebar_texts(at)  # relative to the common folder: told apart
    seen = [current_sample(at)]
    for _ in range(3):
        at.sidebar.button(key="next_sample").click()
        run(at)
        seen.append(current_sample(at))
    assert seen == [ids[0], ids[1], ids[2], ids[0]]  # every one once, then around
    assert at.sidebar.number_input(key="nav_goto").value == 1
    for expected in (ids[2], ids[1], ids[0]):
        at.sidebar.button(key="prev_sample").click()
        run(at)
        assert current_sample(at) == expected
    at.sidebar.number_input(key="nav_goto").set_value(3)
    run(at)
    assert current_sample(at) == ids[2] and "b/frame.jpg" in _sidebar_texts(at)
    # the search lists both frame.jpg files, each by its own relative path, and opens the one picked
    open_sample(at, ids[0], search="frame")
    pick = at.sidebar.selectbox(key="nav_search_pick")
    assert sorted(pick.options) == ["a/frame.jpg", "b/frame.jpg"]
    run(at)
    assert current_sample(at) == ids[0]
    at.sidebar.button(key="random_sample").click()
    run(at)
    assert current_sample(at) in ids


def test_saved_views_and_sorting_in_the_sidebar(repeated):
    ids = repeated.values("id")
    at = _at_findings(repeated.name)
    view = at.sidebar.selectbox(key="view_choice")
    assert "Saved view: val-only" in view.options
    view.set_value("saved:val-only")
    run(at)
    assert at.session_state["selection"].count == 2
    assert current_sample(at) == ids[1]
    at.sidebar.selectbox(key="view_choice").set_value("all")
    run(at)
    at.sidebar.selectbox(key="view_sort").set_value("uniqueness")
    run(at)
    at.sidebar.toggle(key="view_sort_desc").set_value(True)
    run(at)
    # the current sample is kept (found by id in the sorted view), at its new position
    assert current_sample(at) == ids[1] and at.sidebar.number_input(key="nav_goto").value == 1
    at.sidebar.button(key="next_sample").click()
    run(at)
    assert current_sample(at) == ids[2]  # 0.9, then 0.5, then 0.2
    assert "view" not in at.query_params  # a sort is not a saved view: the link names none


def test_a_link_opens_its_dataset_sample_model_and_methods(repeated):
    ids = repeated.values("id")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"dataset": repeated.name, "sample": ids[2], "methods": "gradcam,eigencam",
                            "layers": "head", "view": "val-only"})
    run(at, allow_errors=False)
    assert current_sample(at) == ids[2]
    assert at.sidebar.selectbox(key="view_choice").value == "saved:val-only"
    assert at.multiselect(key="methods").value == ["gradcam", "eigencam"]
    assert at.multiselect(key="layers_efficientnet_lite0").value == ["head"]
    params = {k: at.query_params[k] for k in at.query_params}
    assert params["sample"] == [ids[2]] or params["sample"] == ids[2]
    flat = {k: (v[0] if isinstance(v, list) else v) for k, v in params.items()}
    assert flat["dataset"] == repeated.name and flat["methods"] == "gradcam,eigencam"
    assert flat["view"] == "val-only" and flat["model"] == "efficientnet_lite0"
    # the URL follows the next change in the same run
    at.sidebar.button(key="prev_sample").click()
    run(at)
    flat = {k: (v[0] if isinstance(v, list) else v) for k, v in ((k, at.query_params[k]) for k in at.query_params)}
    assert flat["sample"] == ids[1] == current_sample(at)


def test_a_link_to_what_does_not_exist_says_so_and_falls_back():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"dataset": "no-such-dataset", "sample": "0123456789abcdef01234567",
                            "model": "nope", "methods": "gradcam,bogus", "layers": "nolayer"})
    run(at)
    warnings = " ".join(w.value for w in at.warning)
    assert "No dataset named 'no-such-dataset'" in warnings
    assert "No model 'nope'" in warnings
    assert "not in this view" in warnings
    assert "method 'bogus'" in warnings and "layer 'nolayer'" in warnings
    assert at.sidebar.selectbox(key="dataset").value == "cam-explorer-demo"
    assert at.multiselect(key="methods").value == ["gradcam"]
    assert not at.exception


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _when_connected(action, timeout: float = 30.0) -> None:
    """The session's client connects in the background: retry until it has."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except RuntimeError as exc:
            if "not connected" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.25)


@pytest.mark.browser
def test_the_apps_view_and_selection_are_one_click_views(repeated):
    ids = repeated.values("id")
    session = store.launch_app(repeated, port=_free_port())
    try:
        # the view first: changing it clears the App's selection
        _when_connected(lambda: setattr(session, "view", repeated.match_tags("val")))
        _when_connected(lambda: session.select_samples([ids[2], ids[0]]))
        at = _at_findings(repeated.name)
        choices = at.sidebar.selectbox(key="view_choice").options
        assert "The FiftyOne App's current view" in choices and "Selected in the FiftyOne App (2)" in choices
        at.sidebar.selectbox(key="view_choice").set_value("app:selected")
        run(at)
        assert at.session_state["selection"].count == 2
        seen = {current_sample(at)}
        at.sidebar.button(key="next_sample").click()
        run(at)
        seen.add(current_sample(at))
        assert seen == {ids[0], ids[2]}
        at.sidebar.selectbox(key="view_choice").set_value("app:view")
        run(at)
        assert at.session_state["selection"].count == 2  # tagged val: ids[1], ids[2]
    finally:
        store.close_app()


def test_a_finding_stores_the_url_it_was_made_in_and_findings_page_through(repeated):
    """The note is markup-looking data: it must come back as text (a dataframe cell)."""
    from camcore import links

    ids = repeated.values("id")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"dataset": repeated.name, "sample": ids[1], "methods": "gradcam"})
    run(at)
    note = "![x](http://127.0.0.1:9/leak.png) **bold** $x$"
    [finding] = [s for s in at.selectbox if s.label == "Finding"]
    finding.set_value("background bias")
    [area] = [t for t in at.text_area if t.label == "Note"]
    area.input(note)
    [save] = [b for b in at.button if b.label == "Save finding"]
    save.click()
    run(at)
    assert any("Saved finding" in s.value for s in at.success), [s.value for s in at.success]
    for k in range(25):  # more than a page of findings (20 a page)
        store.add_finding(repeated, ids[k % 3], "good focus", f"n{k}")
    at.switch_page("pages/findings.py")
    run(at)
    assert any("26 findings, 20 a page" in c.value for c in at.caption), [c.value for c in at.caption]
    table = at.dataframe[0].value
    assert len(table) == 20
    mine = table[table["note"] == note]
    assert len(mine) == 1
    page, state = links.parse_url(mine["url"].iloc[0])
    assert page == "explore" and state.dataset == repeated.name and state.sample == ids[1]
    assert state.methods == ("gradcam",) and state.model == "efficientnet_lite0"
    assert not [m for m in at.markdown if "leak.png" in m.value and "\\!" not in m.value]
    at.number_input(key="findings_page").set_value(2)
    run(at)
    assert len(at.dataframe[0].value) == 6


def test_your_own_model_in_the_picker_with_skipped_entries_and_reload(tmp_path, monkeypatch):
    """A models file's entry is a model like the others in the app; a bad entry is said, and the
    file is read again on "Reload models file" (no restart)."""
    import timm
    import torch

    from camcore import models

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "cnn.pth")
    toml = tmp_path / "models.toml"
    good = '[models.mine]\narch = "timm:test_resnet"\nweights = "cnn.pth"\nclasses = ["ant", "bee", "cow"]\n'
    toml.write_text(good + '\n[models.broken]\narch = "timm:no_such_net"\nweights = "cnn.pth"\nclasses = ["a"]\n')
    monkeypatch.setenv("CAM_EXPLORER_MODELS", str(toml))
    models.reload_model_file()
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.query_params.update({"model": "mine", "methods": "gradcam"})
        run(at)
        assert at.sidebar.selectbox(key="model").value == "mine"
        skipped = [w.value for w in at.sidebar.warning if "Skipped from the models file" in w.value]
        assert len(skipped) == 1 and "broken" in skipped[0] and "no\\_such\\_net" in skipped[0], skipped
        captions = [c for img in at.image for c in img.captions if " · " in c]
        assert captions and captions[0].startswith("Grad-CAM"), captions
        toml.write_text(good + '\n[models.mine2]\narch = "timm:test_resnet"\nweights = "cnn.pth"\n'
                        'classes = ["x", "y", "z"]\nlabel = "Second"\n')
        at.sidebar.button(key="reload_models").click()
        run(at)
        assert "mine2" in at.sidebar.selectbox(key="model").options or "Second" in at.sidebar.selectbox(
            key="model").options
        assert not [w for w in at.sidebar.warning if "Skipped from the models file" in w.value]
    finally:
        monkeypatch.delenv("CAM_EXPLORER_MODELS")
        models.reload_model_file()


def _flat_params(at: AppTest) -> dict[str, str]:
    return {k: (v[0] if isinstance(v, list) else v) for k, v in ((k, at.query_params[k]) for k in at.query_params)}


def test_a_link_keeps_the_filter_and_sort_so_it_reopens_the_same_position_and_order(repeated):
    """Issue 23 bug 3: the URL dropped tags, class, file-name filter, sort field and direction, so a
    copied link reopened the sample at another position in another order."""
    ids = repeated.values("id")  # uniqueness 0.2 (train), 0.9 (val), 0.5 (val)
    at = _at_findings(repeated.name)
    at.sidebar.multiselect(key="view_tags").select("val")
    run(at)
    at.sidebar.selectbox(key="view_sort").set_value("uniqueness")
    run(at)
    at.sidebar.toggle(key="view_sort_desc").set_value(True)
    run(at)
    at.sidebar.button(key="next_sample").click()
    run(at)
    assert current_sample(at) == ids[2] and at.sidebar.number_input(key="nav_goto").value == 2
    link = _flat_params(at)
    assert (link["tags"], link["sort"], link["desc"]) == ("val", "uniqueness", "1"), link

    other = _at_findings(**link)  # a colleague opens the copied link
    assert current_sample(other) == ids[2]
    assert other.sidebar.number_input(key="nav_goto").value == 2
    assert other.session_state["selection"].count == 2
    assert other.sidebar.multiselect(key="view_tags").value == ["val"]
    assert other.sidebar.selectbox(key="view_sort").value == "uniqueness"
    assert other.sidebar.toggle(key="view_sort_desc").value is True
    other.sidebar.button(key="prev_sample").click()
    run(other)
    assert current_sample(other) == ids[1]  # the same order: 0.9 before 0.5


def test_a_links_unknown_filter_values_are_said_and_left_out(repeated):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"dataset": repeated.name, "tags": "val,nosuchtag", "sort": "nosuchfield",
                            "conf": "2-3", "field": "nosuch"})
    at.switch_page("pages/findings.py")  # no model pass: the sidebar is what is tested
    run(at)
    said = " ".join(w.value for w in at.warning)
    assert "nosuchtag" in said and "nosuchfield" in said and "nosuch" in said and "2-3" in said, said
    assert at.sidebar.multiselect(key="view_tags").value == ["val"]
    assert at.sidebar.selectbox(key="view_sort").value is None
    assert not at.exception


def test_a_new_sort_or_filter_starts_at_the_top_and_the_page_says_what_the_view_is(repeated):
    """Issue 23 design 2: a new sort kept the user on their sample (at 652,054 of 1,000,000 after
    "descending") and nothing on the page said the view was sorted or filtered."""
    ids = repeated.values("id")  # uniqueness 0.2 (train), 0.9 (val), 0.5 (val)
    at = _at_findings(repeated.name)
    for _ in range(2):
        at.sidebar.button(key="next_sample").click()
        run(at)
    assert current_sample(at) == ids[2]
    at.sidebar.selectbox(key="view_sort").set_value("uniqueness")
    run(at)
    assert current_sample(at) == ids[0] and at.sidebar.number_input(key="nav_goto").value == 1  # the top
    said = [c.value for c in at.main.caption]
    assert any("Sample 1 of 3" in c and "sorted by uniqueness ascending" in c and "0.2" in c.split("uniqueness")[-1]
               for c in said), said
    at.sidebar.multiselect(key="view_tags").select("val")
    run(at)
    assert current_sample(at) == ids[2]  # the top of the new filter: 0.5 before 0.9
    assert any("tagged val" in c and "Sample 1 of 2" in c for c in (c.value for c in at.main.caption))


def test_the_path_search_runs_once_opens_a_single_match_and_forgets_an_old_view(repeated):
    """Issue 23 bug 4: the search's text stayed and ran again on every click (▶ 3.4-4.7 s instead
    of 2.0-2.7 s at 10^6), said "No file path in this view contains that text" after a view
    change, and a single match still had to be picked from a list."""
    ids = repeated.values("id")  # a/frame.jpg, a/other.jpg, b/frame.jpg
    at = _at_findings(repeated.name)
    at.sidebar.text_input(key="nav_search").input("other")
    run(at)
    assert current_sample(at) == ids[1]  # the one match, opened at once
    assert at.sidebar.text_input(key="nav_search").value == ""
    assert not [s for s in at.sidebar.selectbox if s.key == "nav_search_pick"]
    at.sidebar.text_input(key="nav_search").input("frame")
    run(at)
    pick = at.sidebar.selectbox(key="nav_search_pick")
    assert sorted(pick.options) == ["a/frame.jpg", "b/frame.jpg"]
    assert at.sidebar.text_input(key="nav_search").value == ""  # the list stays, the text does not
    at.sidebar.multiselect(key="view_tags").select("val")  # another view: the old matches go
    run(at)
    assert not [s for s in at.sidebar.selectbox if s.key == "nav_search_pick"]
    assert not [c.value for c in at.sidebar.caption if "No file path" in c.value]
    at.sidebar.text_input(key="nav_search").input("nothing-like-this")
    run(at)
    assert any("No file path in this view contains" in c.value for c in at.sidebar.caption)


def test_a_position_past_the_end_is_said_in_words_and_shows_the_last(repeated):
    """Issue 23 bug 5: a position past the end only got a red box whose reason was in a tooltip."""
    ids = repeated.values("id")
    at = _at_findings(repeated.name)
    at.sidebar.number_input(key="nav_goto").set_value(99)
    run(at)
    assert current_sample(at) == ids[2] and at.sidebar.number_input(key="nav_goto").value == 3
    assert any(w.value.startswith("Position 99 is past the end of the view") for w in at.sidebar.warning), \
        [w.value for w in at.sidebar.warning]


def test_a_tag_filter_with_a_sort_offers_the_index_that_serves_both(repeated, monkeypatch):
    """Issue 23 design 1: with a tag filter the sort's own index does not serve the moves (bench/
    scale.py views at 10^5: 0.22 s a move without, 0.004 s with (tags, field, _id)); the sidebar
    offers that one, and no longer once it exists."""
    from camcore.store import views

    monkeypatch.setattr(views, "SORT_INDEX_OFFER_OVER", 1)  # as if these 3 samples were 10^6
    views.create_sort_index(repeated, "uniqueness")  # the plain sort's index is there already
    at = _at_findings(repeated.name)
    at.sidebar.selectbox(key="view_sort").set_value("uniqueness")
    run(at)
    assert not [c.value for c in at.sidebar.caption if "Each move in this order" in c.value]
    at.sidebar.multiselect(key="view_tags").set_value(["val"])
    run(at)
    assert any("an index on tags and uniqueness" in c.value for c in at.sidebar.caption), \
        [c.value for c in at.sidebar.caption]
    assert views.sort_index_missing(repeated, "uniqueness", tags=True)
    at.sidebar.button(key="view_sort_index").click()
    run(at)
    keys = repeated._sample_collection.index_information()[views.sort_index_name("uniqueness", tags=True)]["key"]
    assert [k for k, _d in keys] == ["tags", "uniqueness", "_id"]
    assert not [c.value for c in at.sidebar.caption if "Each move in this order" in c.value]
    assert len(at.sidebar.multiselect(key="view_tags").value) == 1 and not at.exception


def test_a_sort_on_a_big_dataset_offers_its_index_and_builds_it_on_a_click(repeated, monkeypatch):
    """Issue 23 design 1: at 10^6 each move in a sorted view was a full scan (23 s). Without an
    index on the sort field the sidebar says what one costs and builds it on the user's click;
    moves then read the index (both directions: ties follow the sort's direction)."""
    from camcore.store import views

    monkeypatch.setattr(views, "SORT_INDEX_OFFER_OVER", 1)  # as if these 3 samples were 10^6
    ids = repeated.values("id")
    at = _at_findings(repeated.name)
    at.sidebar.selectbox(key="view_sort").set_value("uniqueness")
    run(at)
    assert any("Each move in this order reads all 3 samples" in c.value for c in at.sidebar.caption)
    assert views.sort_index_missing(repeated, "uniqueness")
    at.sidebar.button(key="view_sort_index").click()
    run(at)
    assert not views.sort_index_missing(repeated, "uniqueness")
    assert views.sort_index_name("uniqueness") in repeated._sample_collection.index_information()
    assert not [c.value for c in at.sidebar.caption if "Each move in this order" in c.value]
    at.sidebar.toggle(key="view_sort_desc").set_value(True)
    run(at)
    assert current_sample(at) == ids[1]  # 0.9 first


def test_next_and_previous_across_a_page_boundary_of_a_sorted_view_seek_from_the_page_beside(tmp_path):
    """Issue 23 design 1: ▶/◀ onto a new page of a sorted view walked every index key before the
    position (a skip: 2.6x the unsorted view at 10^6); it now seeks from the key at the edge of the
    page on screen: O(page) keys (MongoDB's profiler), the same sample as the skip."""
    import random

    from camcore.store import views

    [path] = write_images(tmp_path, ["x.png"])
    dataset = fo.Dataset(unique_name("sorted-pages"), persistent=True)
    rng = random.Random(4)
    dataset.add_samples([fo.Sample(filepath=path, uniqueness=rng.random()) for _ in range(600)])
    views.create_sort_index(dataset, "uniqueness")
    order = [sid for sid, _p in views.page(dataset.sort_by([("uniqueness", 1), ("_id", 1)]), 0, 600)]
    db = dataset._sample_collection.database
    size = views.PAGE_SIZE
    try:
        at = _at_findings(dataset.name)
        at.sidebar.selectbox(key="view_sort").set_value("uniqueness")
        run(at)
        for goto, button, lands in ((12 * size, "next_sample", 12 * size),
                                    (13 * size + 1, "prev_sample", 13 * size - 1)):
            at.sidebar.number_input(key="nav_goto").set_value(goto)  # 1-based: the edge of a page
            run(at)
            db["system.profile"].drop()
            db.command("profile", 2)
            try:
                at.sidebar.button(key=button).click()
                run(at)
            finally:
                db.command("profile", 0)
            ops = list(db["system.profile"].find({"ns": f"{db.name}.{dataset._sample_collection_name}"}))
            db["system.profile"].drop()
            assert current_sample(at) == order[lands]
            keys = max(int(op.get("keysExamined", 0)) for op in ops)
            assert keys <= 4 * size, f"{button} walked {keys} index keys to position {lands}"
    finally:
        dataset.delete()


def test_next_after_samples_came_before_the_page_on_screen_reads_the_new_positions(tmp_path):
    """▶ onto a new page seeks from the edge of the page on screen (seek.page_at): once the view's
    count says samples came or went, the pages read before are dropped, so ▶ shows the sample now
    at that position (what the skip reads), not the one after a stale page."""
    from camcore.store import views
    from ui import cache

    [path] = write_images(tmp_path, ["x.png"])
    dataset = fo.Dataset(unique_name("sorted-grown"), persistent=True)
    dataset.add_samples([fo.Sample(filepath=path, uniqueness=i / 60) for i in range(60)])
    views.create_sort_index(dataset, "uniqueness")
    size = views.PAGE_SIZE
    try:
        at = _at_findings(dataset.name)
        at.sidebar.selectbox(key="view_sort").set_value("uniqueness")
        run(at)
        at.sidebar.number_input(key="nav_goto").set_value(size)  # the last of the first page
        run(at)
        dataset.add_samples([fo.Sample(filepath=path, uniqueness=-1.0) for _ in range(5)])  # sorted first
        cache.view_count.clear()  # as a minute later
        at.sidebar.button(key="next_sample").click()
        run(at)
        spec = views.ViewSpec(sort_field="uniqueness")
        assert current_sample(at) == views.page(views.build_view(dataset, spec), size, 1)[0][0]
    finally:
        dataset.delete()


def test_next_after_an_index_changed_an_unsorted_filters_order_reads_the_new_positions(tmp_path):
    """An unsorted saved view `F(field) > x` comes back in the order of MongoDB's plan: a natural
    scan, or, once anyone builds the (field, _id) sort index, that index's order. Pages read before
    the index hold other positions then (the count is unchanged): they are dropped, so ▶ shows the
    sample now at that position (what the skip reads)."""
    import random

    from fiftyone import ViewField as F

    from camcore.store import views

    [path] = write_images(tmp_path, ["x.png"])
    dataset = fo.Dataset(unique_name("index-order"), persistent=True)
    rng = random.Random(7)
    dataset.add_samples([fo.Sample(filepath=path, uniqueness=rng.random()) for _ in range(90)])
    dataset.save_view("unique", dataset.match(F("uniqueness") > 0.2))
    size = views.PAGE_SIZE
    spec = views.ViewSpec(saved_view="unique")
    try:
        before = [sid for sid, _p in views.page(views.build_view(dataset, spec), 0, 90)]
        at = _at_findings(dataset.name)
        at.sidebar.selectbox(key="view_choice").set_value("saved:unique")
        run(at)
        at.sidebar.number_input(key="nav_goto").set_value(size)  # the last of the first page
        run(at)
        assert current_sample(at) == before[size - 1]
        views.create_sort_index(dataset, "uniqueness")  # another session's sort, say
        after = [sid for sid, _p in views.page(views.build_view(dataset, spec), 0, 90)]
        assert after != before, "the index did not change the view's order: this test checks nothing"
        at.sidebar.button(key="next_sample").click()
        run(at)
        assert current_sample(at) == after[size]
    finally:
        dataset.delete()


def test_findings_table_shows_empty_cells_as_empty_not_none(repeated):
    """A finding recorded with no note, no heatmap field and no link (the App's record_finding on a
    sample with no map, the CLI): its cells are empty, not Streamlit's grey "None"."""
    ids = repeated.values("id")
    store.add_finding(repeated, ids[1], "sky-bias")
    at = _at_findings(repeated.name)
    table = at.dataframe[0].value
    row = table[table["tag"] == "sky-bias"].iloc[0]
    for column in ("note", "heatmap_field", "url"):
        assert row[column] == "", (column, row[column])
    assert row["file"] == "a/other.jpg"
