"""Issue #21, the plugin's side: runs without an orchestrator, your own models in the App's form,
the panel's whole provenance and map, record_finding on the open sample, the explorer's address
known or set once, and the App's saved style (colour scale by value, one map on, one sidebar group).
All through FiftyOne's own operator machinery against the suite's real mongod."""
from __future__ import annotations

import base64
import datetime
import json
import os
import re
from pathlib import Path

import cv2
import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import torch
from fo_helpers import field_name, make_heatmap, make_result, unique_name, write_images
from fresh_process import run_python

from camcore import links, store
from camcore.store import appstyle, appwatch

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "@cam-explorer/cam"
COMPUTE = f"{PLUGIN}/compute_cams"
OPEN = f"{PLUGIN}/open_in_cam_explorer"
FINDING = f"{PLUGIN}/record_finding"
RELOAD = f"{PLUGIN}/reload_models"
PANEL = f"{PLUGIN}/cam_heatmaps"
MODEL = "efficientnet_lite0"
PARAMS = {"model": MODEL, "methods": ["gradcam"], "layers": ["head"], "target": "predicted"}
FIELD = field_name(MODEL, "gradcam", "head", "predicted")


@pytest.fixture(scope="module", autouse=True)
def plugins_dir():
    old_dir, old_env = fo.config.plugins_dir, os.environ.get("FIFTYONE_PLUGINS_DIR")
    fo.config.plugins_dir = str(ROOT / "plugins")
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(ROOT / "plugins")
    yield
    fo.config.plugins_dir = old_dir
    if old_env is None:
        os.environ.pop("FIFTYONE_PLUGINS_DIR", None)
    else:
        os.environ["FIFTYONE_PLUGINS_DIR"] = old_env


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"img{i}.png" for i in range(4)], size=(40, 48))
    ds = fo.Dataset(unique_name("app21"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    ds.compute_metadata()
    yield ds
    ds.delete()


@pytest.fixture
def no_saved_address():
    """No explorer address from the environment or saved by an earlier test."""
    from fiftyone.operators.store import ExecutionStore

    settings = ExecutionStore.create("cam_explorer_settings")
    settings.delete("explorer_url")
    old = os.environ.pop(links.BASE_URL_ENV, None)
    yield settings
    settings.delete("explorer_url")
    if old is not None:
        os.environ[links.BASE_URL_ENV] = old


def _run(uri: str, **ctx):
    return foo.execute_operator(uri, ctx=ctx)


def _requests(result) -> list[tuple[str, dict]]:
    return [(r.operator_uri, r.params or {}) for r in result.executor._requests]


def _form(uri: str, ds: fo.Dataset, **request) -> str:
    """The operator's resolved form, as the App receives it (JSON text)."""
    ctx = foo.ExecutionContext(request_params={"dataset_name": ds.name, **request})
    return json.dumps(foo.get_operator(uri).resolve_input(ctx).to_json())


# ---------------------------------------------------------------- item 1: the App's saved style


def test_a_push_of_four_maps_switches_on_one_colours_all_by_value_and_groups_them(dataset, tmp_path):
    sid = dataset.first().id
    dataset.set_values("gt", {sid: fo.Classification(label="cat")}, key_field="id")
    size = (40, 48)
    four = make_result(size, [make_heatmap(size, m, seed=i) for i, m in
                              enumerate(["gradcam", "layercam", "xgradcam", "hirescam"])])
    fields = store.push_heatmaps(dataset, sid, four, heatmap_dir=tmp_path / "hm")
    assert len(fields) == 4
    config = fo.load_dataset(dataset.name).app_config
    # one map at a time: the newest only, besides FiftyOne's own default
    assert config.active_fields.exclude is False and config.active_fields.paths == ["gt", fields[-1]]
    # drawn with a colour scale: per-field jet AND colour by value (by field, the App tints)
    assert config.color_scheme.color_by == "value"
    assert {c["path"]: c["name"] for c in config.color_scheme.colorscales} == {f: "jet" for f in fields}
    # one sidebar group, after the labels, holding exactly our fields
    names = [g.name for g in config.sidebar_groups]
    assert names.index(appstyle.SIDEBAR_GROUP) == names.index("labels") + 1
    groups = {g.name: list(g.paths) for g in config.sidebar_groups}
    assert groups[appstyle.SIDEBAR_GROUP] == fields
    assert not set(fields) & {p for n, ps in groups.items() if n != appstyle.SIDEBAR_GROUP for p in ps}

    # a user's own colour mode and scale win
    dataset.app_config.color_scheme.color_by = "instance"
    dataset.app_config.color_scheme.colorscales = [{"path": fields[0], "name": "viridis"}]
    dataset.save()
    more = store.push_heatmaps(dataset, sid, make_result(size, [make_heatmap(size, "eigencam")]),
                               heatmap_dir=tmp_path / "hm")
    scheme = fo.load_dataset(dataset.name).app_config.color_scheme
    assert scheme.color_by == "instance"
    scales = {c["path"]: c["name"] for c in scheme.colorscales}
    assert scales[fields[0]] == "viridis" and scales[more[0]] == "jet"


def test_compute_in_the_app_sends_the_open_app_its_colour_scale_and_the_new_field(dataset):
    """An App already open keeps the scheme it loaded: compute_cams tells it the saved one."""
    result = _run(COMPUTE, dataset=dataset, selected=dataset.values("id")[:1], params=PARAMS)
    asked = dict(_requests(result))
    scheme = asked["set_color_scheme"]
    assert scheme["color_by"] == "value" and {"path": FIELD, "name": "jet"} in scheme["colorscales"]
    assert asked["set_active_fields"]["fields"][-1] == FIELD
    assert list(asked)[-2] == COPIES  # after all that: a sample the page opened before shows its map
    # with the groups, the version of all it sent: the page's own check then sends nothing again
    # (a second reload_dataset a moment later lost a click on the grid in the real App)
    for watched in ("", "1"):
        os.environ[appwatch.WATCHED_ENV] = watched
        try:
            version = dict(_requests(_run(COMPUTE, dataset=dataset, selected=dataset.values("id")[:1],
                                          params=PARAMS)))[GROUPS]["version"]
            assert _requests(_run(SYNC, dataset=dataset, params={"seen": version})) == []
        finally:
            os.environ.pop(appwatch.WATCHED_ENV, None)


# ---------------------------------------------------------------- item 3: runs without an orchestrator


def test_a_big_run_without_an_orchestrator_runs_now_with_progress(dataset, monkeypatch):
    """Open-source FiftyOne as `make run` starts it (no legacy orchestrators): a run over the
    threshold is not queued for a worker that does not exist; it runs, and the field is there."""
    monkeypatch.setenv("CAM_EXPLORER_DELEGATE_OVER", "2")
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", False)
    ctx = foo.ExecutionContext(request_params={"dataset_name": dataset.name, "params": PARAMS})
    options = foo.get_operator(COMPUTE).resolve_execution_options(ctx)
    assert options.allow_immediate_execution and not options.allow_delegated_execution
    assert '"delegate"' not in _form(COMPUTE, dataset, params=PARAMS)  # no dead-end checkbox
    form = _form(COMPUTE, dataset, params=PARAMS)
    assert "runs now in the App" in form
    # the notice sends the user to a README section that exists (it once named 'Background runs')
    section = re.search(r"the README's '([^']+)'", form)
    assert section and f"**{section[1]}.**" in (ROOT / "README.md").read_text(), section

    result = _run(COMPUTE, dataset=dataset, params={**PARAMS, "delegate": True})
    assert result.delegated is False
    assert len(dataset.exists(FIELD)) == 4
    asked = [uri for uri, _p in _requests(result)]
    assert "set_progress" in asked and "reload_dataset" in asked


def test_with_an_orchestrator_the_form_says_what_schedule_does_and_where_to_see_the_run(dataset, monkeypatch):
    """The queued route (FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true): after Schedule the App (1.22)
    closes the form and shows nothing (a generator operator's scheduled result has no output, its
    triggers are not run), so the form says it beforehand, with the exact commands of this App
    server's environment: the worker to start and the list that shows the run."""
    monkeypatch.setenv("CAM_EXPLORER_DELEGATE_OVER", "2")
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", True)
    form = json.loads(_form(COMPUTE, dataset, params=PARAMS))["type"]["properties"]
    assert form["delegate"]["default"] is True  # 4 samples, over the threshold
    queued = form["queued"]["view"]
    assert "Schedule queues this run for a worker. This page then says when it is queued" in queued["label"]
    launch = f"FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true FIFTYONE_PLUGINS_DIR={ROOT / 'plugins'} "
    assert launch in queued["description"] and "delegated launch" in queued["description"]
    listing = re.search(r"See the run:\n\n`([^`]+)`$", queued["description"])[1]
    assert listing.endswith(f"delegated list --operator {COMPUTE}")
    # that command runs here and lists this operator's runs
    import shlex
    import subprocess

    done = subprocess.run(shlex.split(listing), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    # run now instead: no word on a queue
    assert "queued" not in json.loads(_form(COMPUTE, dataset, params={**PARAMS, "delegate": False}))[
        "type"]["properties"]
    # the run's label in that list says what it computes
    ctx = foo.ExecutionContext(request_params={"dataset_name": dataset.name, "params": PARAMS})
    assert foo.get_operator(COMPUTE).resolve_run_name(ctx) == f"CAM heatmaps: {MODEL}, gradcam on head"


# ---------------------------------------------------------------- item 6: your own models


def _models_file(folder: Path, bad: list[str]) -> Path:
    import timm

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), folder / "r.pth")
    text = '[models.my_cnn]\narch = "timm:test_resnet"\nweights = "r.pth"\nclasses = ["a", "b", "c"]\n'
    for key in bad:
        text += f'\n[models.{key}]\narch = "timm:no_such_net"\nweights = "r.pth"\nclasses = ["a"]\n'
    path = folder / "models.toml"
    path.write_text(text)
    return path


def test_the_form_offers_your_models_lists_skipped_ones_and_reloads_on_request(dataset, tmp_path, monkeypatch):
    path = _models_file(tmp_path / "mine", ["bad_one"])
    monkeypatch.setenv("CAM_EXPLORER_MODELS", str(path))
    form = _form(COMPUTE, dataset, params=PARAMS)
    assert '"my_cnn"' in form  # the explorer's models file, in the App's Model picker
    assert "bad_one: unknown architecture 'timm:no_such_net'" in form
    assert RELOAD in form  # the button that reads it again

    _models_file(tmp_path / "mine", ["bad_one", "bad_two"])  # edited while the App runs
    assert "bad_two" not in _form(COMPUTE, dataset, params=PARAMS)
    result = _run(RELOAD, dataset=dataset)
    assert result.result["models"] == ["my_cnn"]
    assert [s["key"] for s in result.result["skipped"]] == ["bad_one", "bad_two"]
    note = next(p for uri, p in _requests(result) if uri == "notify")
    assert "1 model(s) from it, 2 skipped" in note["message"]  # the confirmation
    assert "bad_two: unknown architecture" in _form(COMPUTE, dataset, params=PARAMS)


# ---------------------------------------------------------------- item 7: the panel


def _panel(ds, sid, method: str, state: dict | None = None):
    result = _run(PANEL, dataset=ds, current_sample=sid,
                  params={"panel_id": "p1", "__method__": method, "panel_state": state or {}})
    asked = _requests(result)
    state = {}
    for uri, p in asked:
        if uri == "patch_panel_state":
            state.update(p["state"])
    data: dict = {}
    for uri, p in asked:  # the App's order: a clear empties, a patch sets keys
        if uri == "clear_panel_data":
            data = {}
        elif uri == "patch_panel_data":
            data.update(p["data"])
    return state, data


def test_the_panel_shows_the_whole_provenance_and_the_map_and_resets_on_a_new_field(dataset):
    sid = dataset.first().id
    _run(COMPUTE, dataset=dataset, selected=[sid], params={**PARAMS, "methods": ["gradcam", "layercam"]})
    state, data = _panel(dataset, sid, "on_load")
    rows = {r["attribute"]: r["f0"] for r in data[state["table"]]}
    for key in ("arch", "weights_sha256", "classes_file", "input_size", "model", "method", "raw_max"):
        assert key in rows, key
    assert rows["arch"] and len(rows["weights_sha256"]) == 64
    # the map, small, over its colour bar: a real PNG of more than one colour
    png = base64.b64decode(data["map_image"].split(",", 1)[1])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == 192 and len(np.unique(image.reshape(-1, 3), axis=0)) > 20

    # another method: the table holds that field's rows only, under a key of its own
    layercam = field_name(MODEL, "layercam", "head", "predicted")
    state2, data2 = _panel(dataset, sid, "on_pick", {**state, "method": "layercam"})
    assert state2["fields"] == [layercam] and state2["table"] != state["table"]
    assert state["table"] not in data2
    assert {r["attribute"]: r["f0"] for r in data2[state2["table"]]}["method"] == "layercam"


# ---------------------------------------------------------------- item 8: record_finding


def test_record_finding_acts_on_the_open_sample_confirms_and_refreshes_its_tags(dataset, no_saved_address):
    ids = dataset.values("id")
    form = _form(FINDING, dataset, current_sample=ids[3], selected=ids[:2])
    assert "the open sample: img3.png" in form
    result = _run(FINDING, dataset=dataset, current_sample=ids[3], selected=ids[:2],
                  params={"tag": "background bias", "note": "sky"})
    tags = dict(zip(*dataset.values(["id", "tags"]), strict=True))
    assert [sid for sid in ids if tags[sid]] == [ids[3]]  # the open one, not the selection
    asked = _requests(result)
    assert "reload_samples" in [uri for uri, _p in asked]
    # the modal's copy of the open sample takes its new tags (the App keeps it through reloads)
    # all record_finding wrote, as the App's server hands a sample to its page (its finding too)
    shown = dict(asked)[f"{PLUGIN}/set_sample_tags"]
    assert shown["sample_id"] == ids[3] and shown["fields"]["tags"] == ["cam:background-bias"]
    [finding] = shown["fields"]["cam_findings"]["classifications"]
    assert finding["label"] == "background bias" and isinstance(finding["_id"], str)
    assert json.loads(json.dumps(shown)) == shown  # plain JSON: no ObjectId, no datetime
    note = next(p for uri, p in asked if uri == "notify")
    assert "background bias" in note["message"] and "open sample" in note["message"]
    # nothing open: it says which selected samples it will tag
    assert "the 2 selected sample(s): img0.png, img1.png" in _form(FINDING, dataset, selected=ids[:2])


# ---------------------------------------------------------------- item 9: the explorer's address


def test_the_explorers_address_is_set_once_and_used_by_links_and_findings(dataset, no_saved_address):
    ids = dataset.values("id")
    assert '"default": "http://localhost:8501"' in _form(OPEN, dataset, current_sample=ids[0])
    url = _run(OPEN, dataset=dataset, current_sample=ids[0],
               params={"explorer": "http://explorer.test:8600/"}).result["url"]
    assert url.startswith("http://explorer.test:8600/")
    # set once: the next form offers it, the next open uses it without asking, findings link to it
    assert '"default": "http://explorer.test:8600"' in _form(OPEN, dataset, current_sample=ids[1])
    again = _run(OPEN, dataset=dataset, current_sample=ids[1]).result["url"]
    assert again.startswith("http://explorer.test:8600/")
    _run(FINDING, dataset=dataset, current_sample=ids[1], params={"tag": "good focus"})
    [finding] = store.list_findings(dataset)
    assert finding["url"].startswith("http://explorer.test:8600/")
    # a bad address is refused in the form, with the reason
    assert "must be a URL" in _form(OPEN, dataset, current_sample=ids[0], params={"explorer": "localhost:1"})


def test_an_app_launched_by_the_explorer_knows_its_address(dataset, no_saved_address):
    """launch_app(explorer_url=...) (the explorer's "Launch the FiftyOne App") hands the App's
    server the explorer's address; the plugin there links to it without asking."""
    from mongod_support import free_port

    try:
        store.launch_app(dataset, port=free_port(), explorer_url="http://localhost:8777")
        assert os.environ[links.BASE_URL_ENV] == "http://localhost:8777"  # what the server inherits
        ids = dataset.values("id")
        assert '"default": "http://localhost:8777"' in _form(OPEN, dataset, current_sample=ids[0])
    finally:
        store.close_app()
        os.environ.pop(links.BASE_URL_ENV, None)


def test_the_open_in_result_is_a_short_link(dataset, no_saved_address):
    result = _run(OPEN, dataset=dataset, current_sample=dataset.first().id)
    ctx = foo.ExecutionContext(request_params={"dataset_name": dataset.name, "results": result.result})
    out = json.dumps(foo.get_operator(OPEN).resolve_output(ctx).to_json())
    assert '"label": "Open the sample in CAM Explorer"' in out and result.result["url"] in out


SYNC = f"{PLUGIN}/sync_app"
FIELD_PUSHED = field_name("resnet50", "gradcam", "layer4", "tabby cat")  # make_heatmap's
GROUPS = f"{PLUGIN}/set_sidebar_groups"
COPIES = f"{PLUGIN}/refresh_sample_copies"


def test_sync_app_sends_the_saved_groups_once_per_change(dataset, tmp_path, monkeypatch):
    """The page's own check (dist/index.umd.js runs sync_app every 2 s): its first call learns the
    version, a call with the version seen sends nothing, and a push from elsewhere (here: this
    process, not the App) sends the saved groups, with the CAM group, once; in an App the
    explorer did not launch, also the saved colours and switched-on map."""
    monkeypatch.delenv(appwatch.WATCHED_ENV, raising=False)
    known = list(dataset.get_field_schema())  # the fields the page loaded
    [(uri, params)] = _requests(_run(SYNC, dataset=dataset, params={"known": known}))
    assert uri == GROUPS and params["groups"] == [] and params["version"]  # learnt: none saved yet
    seen = params["version"]
    assert _requests(_run(SYNC, dataset=dataset, params={"seen": seen})) == []

    store.push_heatmaps(dataset, dataset.first().id, make_result((40, 48), [make_heatmap((40, 48))]),
                        heatmap_dir=tmp_path / "hm")
    ops = dict(_requests(_run(SYNC, dataset=dataset, params={"seen": seen})))
    cam = [g for g in ops[GROUPS]["groups"] if g["name"] == appstyle.SIDEBAR_GROUP]
    assert ops[GROUPS]["version"] != seen and cam and cam[0]["paths"] == [FIELD_PUSHED]
    assert ops["set_color_scheme"]["color_by"] == "value"
    assert {"path": FIELD_PUSHED, "name": "jet"}.items() <= ops["set_color_scheme"]["colorscales"][0].items()
    assert FIELD_PUSHED in ops["set_active_fields"]["fields"] and "reload_dataset" in ops
    # ... and the samples the page opened read again: FiftyOne 1.22's modal keeps the copy of a
    # sample it showed first, without the new map (test_app21_app's modal, opened before the map)
    assert COPIES in ops
    again = ops[GROUPS]["version"]
    assert _requests(_run(SYNC, dataset=dataset, params={"seen": again})) == []  # once
    # a page loaded afresh: the saved groups and colours at once (it holds its session's launch
    # scheme); its schema holds the field: no reload, its switched-on fields are its own
    fresh = _requests(_run(SYNC, dataset=dataset, params={"known": [*known, FIELD_PUSHED]}))
    assert [u for u, _p in fresh] == [GROUPS, "set_color_scheme"] and fresh[0][1]["groups"] == ops[GROUPS]["groups"]
    # each scale with the colours the page paints with (jet's): the App's set_color_scheme puts the
    # scales on the page as given, and a scale without its rgb was drawn in the default (viridis)
    # after a tab reload under load (test_app21_own_app)
    [scale] = fresh[1][1]["colorscales"]
    red, green, blue = scale["rgb"][-1]  # jet's top: red, never viridis' yellow
    assert scale["path"] == FIELD_PUSHED and len(scale["rgb"]) > 100 and red > 100 and green == blue == 0


def test_a_push_between_a_pages_load_and_its_first_sync_shows_on_that_sync(dataset, tmp_path, monkeypatch):
    """The page's first sync_app call can come seconds after it loaded (its script retries until
    the App has listed the plugin's Python operators; on a loaded machine, seconds): a push in that
    gap is shown by that first call (it was recorded as seen and never shown until a tab reload)."""
    monkeypatch.delenv(appwatch.WATCHED_ENV, raising=False)
    store.push_heatmaps(dataset, dataset.first().id, make_result((40, 48), [make_heatmap((40, 48), method="layercam")]),
                        heatmap_dir=tmp_path / "hm")  # a first map: the groups exist when the page loads
    loaded = list(dataset.get_field_schema())  # what the page loaded ...
    store.push_heatmaps(dataset, dataset.first().id, make_result((40, 48), [make_heatmap((40, 48))]),
                        heatmap_dir=tmp_path / "hm")  # ... then another process pushed, then its first call
    assert FIELD_PUSHED not in loaded
    first = _requests(_run(SYNC, dataset=dataset, params={"known": loaded}))
    ops = dict(first)
    assert first[0][0] == "reload_dataset"  # the page's schema learns the new field
    cam = [g for g in ops[GROUPS]["groups"] if g["name"] == appstyle.SIDEBAR_GROUP]
    assert cam and FIELD_PUSHED in cam[0]["paths"]
    assert {"path": FIELD_PUSHED, "name": "jet"}.items() <= ops["set_color_scheme"]["colorscales"][-1].items()
    assert ops["set_active_fields"]["fields"][-1] == FIELD_PUSHED  # the newest map on
    # in an App the explorer launched (its watch sends colours): the groups and the reload too
    monkeypatch.setenv(appwatch.WATCHED_ENV, "1")
    watched = _requests(_run(SYNC, dataset=dataset, params={"known": loaded}))
    assert [u for u, _p in watched] == ["reload_dataset", GROUPS] and watched[1][1]["groups"] == ops[GROUPS]["groups"]
    # a page that did not say which fields it holds is reloaded to be sure
    assert _requests(_run(SYNC, dataset=dataset, params={}))[0][0] == "reload_dataset"


def test_sync_app_leaves_the_colours_to_the_explorers_watch(dataset, tmp_path, monkeypatch):
    store.push_heatmaps(dataset, dataset.first().id, make_result((40, 48), [make_heatmap((40, 48))]),
                        heatmap_dir=tmp_path / "hm")
    monkeypatch.setenv(appwatch.WATCHED_ENV, "1")  # in an App server the explorer launched
    first = _requests(_run(SYNC, dataset=dataset, params={"known": list(dataset.get_field_schema())}))
    assert [u for u, _p in first] == [GROUPS]  # no colours: the watch sends those
    seen = first[0][1]["version"]
    dataset.app_config.sidebar_groups[0].expanded = False
    dataset.save()
    # (with, after them, the samples the page opened read again, as on every change from elsewhere)
    assert [u for u, _p in _requests(_run(SYNC, dataset=dataset, params={"seen": seen}))] == [
        "reload_dataset", GROUPS, COPIES]


@pytest.mark.parametrize("watched", [False, True])
def test_sync_app_colours_the_scales_a_page_holds_without_them(dataset, monkeypatch, watched):
    """A page takes a scheme without its scales' colours from a session's state (a notebook's
    session.view or its reconnect, another tab's change): the App then draws those fields in its
    default scale (viridis). The page's check reports them; sync_app answers with their colours
    (set_scale_colours), in any App, however the scale was made (a name, a list), whether or not
    anything else changed; a scale it cannot read is left to the App, and nothing is sent for none."""
    if watched:
        monkeypatch.setenv(appwatch.WATCHED_ENV, "1")
    else:
        monkeypatch.delenv(appwatch.WATCHED_ENV, raising=False)
    seen = _requests(_run(SYNC, dataset=dataset, params={"known": list(dataset.get_field_schema())}))[0][1]["version"]
    bare = [{"path": "a", "name": "jet", "list": None},
            {"path": "b", "name": None, "list": [{"value": 0, "color": "#000000"}, {"value": 1, "color": "#ff0000"}]},
            {"path": "c", "name": "no-such-scale"}, {"name": "jet"}, "jet"]
    [(uri, params)] = _requests(_run(SYNC, dataset=dataset, params={"seen": seen, "bare_scales": bare}))
    assert uri == f"{PLUGIN}/set_scale_colours"
    by_path = {s["path"]: s for s in params["scales"]}
    assert sorted(by_path) == ["a", "b"]
    assert by_path["a"]["name"] == "jet" and by_path["a"]["rgb"][-1][0] > 100 and by_path["a"]["rgb"][-1][1] == 0
    assert by_path["b"]["rgb"][0] == [0, 0, 0] and by_path["b"]["rgb"][-1] == [255, 0, 0]
    assert _requests(_run(SYNC, dataset=dataset, params={"seen": seen, "bare_scales": []})) == []


def test_a_map_replaced_elsewhere_redraws_the_pages_samples_at_most_every_few_seconds(dataset, tmp_path, monkeypatch):
    """#21: a push from another process that only replaces the map of a field the page already
    has changes none of the saved groups, colours or switched-on fields: the page's check sees the
    samples' newest change (their indexed last_modified_at) and has the page take new copies
    (reload_dataset: the App's reload_samples redraws its cached copies, whose replaced file is
    gone), and the samples it opened read again, once per change and no more often than
    SAMPLES_EVERY while a batch writes chunk after chunk."""
    monkeypatch.delenv(appwatch.WATCHED_ENV, raising=False)
    sid = dataset.first().id
    store.push_heatmaps(dataset, sid, make_result((40, 48), [make_heatmap((40, 48))]), heatmap_dir=tmp_path / "hm")
    first = _requests(_run(SYNC, dataset=dataset, params={"known": list(dataset.get_field_schema())}))
    seen = first[0][1]["version"]
    assert _requests(_run(SYNC, dataset=dataset, params={"seen": seen})) == []

    def replace(seed: int) -> None:  # the same field, another map
        store.push_heatmaps(dataset, sid, make_result((40, 48), [make_heatmap((40, 48), seed=seed)]),
                            heatmap_dir=tmp_path / "hm")

    replace(1)
    monkeypatch.setattr(appwatch, "SAMPLES_EVERY", 3600.0)  # the page redrew them a moment ago
    assert _requests(_run(SYNC, dataset=dataset, params={"seen": seen})) == []  # pending
    monkeypatch.setattr(appwatch, "SAMPLES_EVERY", 0.0)
    ops = _requests(_run(SYNC, dataset=dataset, params={"seen": seen}))
    assert [u for u, _p in ops] == ["reload_dataset", GROUPS, COPIES] and ops[1][1]["groups"] == []
    again = ops[1][1]["version"]
    assert _requests(_run(SYNC, dataset=dataset, params={"seen": again})) == []  # once
    replace(2)
    assert [u for u, _p in _requests(_run(SYNC, dataset=dataset, params={"seen": again}))] == [
        "reload_dataset", GROUPS, COPIES]
    # in an App the explorer launched too (its session watch refreshes on colour changes only)
    monkeypatch.setenv(appwatch.WATCHED_ENV, "1")
    watched = _requests(_run(SYNC, dataset=dataset, params={"known": list(dataset.get_field_schema())}))[0][1]["version"]
    replace(3)
    assert [u for u, _p in _requests(_run(SYNC, dataset=dataset, params={"seen": watched}))] == [
        "reload_dataset", GROUPS, COPIES]


def test_the_samples_mark_reads_one_index_entry(dataset, monkeypatch):
    """Each page check reads the samples' newest change: one index entry, whatever the size."""
    dataset.add_samples([fo.Sample(filepath=f"/nowhere/{i}.png") for i in range(300)])
    collection = fo.core.odm.get_db_conn()[dataset._sample_collection_name]
    stats = appwatch.newest_sample(collection).explain()["executionStats"]
    assert stats["totalDocsExamined"] <= 1 and stats["totalKeysExamined"] <= 1, stats
    doc = {"sample_collection_name": dataset._sample_collection_name}
    # a redraw reloads the page's dataset (sidebar counts: server time in proportion to the
    # samples): bigger datasets are redrawn less often, from the collection's size without a scan
    assert appwatch.redraw_interval(doc) == appwatch.SAMPLES_EVERY  # 304 samples
    monkeypatch.setattr(appwatch, "SAMPLES_PER_EVERY", 100)
    assert appwatch.redraw_interval(doc) == pytest.approx(appwatch.SAMPLES_EVERY * 3.04)
    monkeypatch.setattr(appwatch, "SAMPLES_PER_EVERY", 1)
    assert appwatch.redraw_interval(doc) == appwatch.SAMPLES_EVERY_MAX
    newest = max(dataset.values("last_modified_at"))
    assert appwatch.samples_mark(doc) == int(newest.replace(tzinfo=datetime.UTC).timestamp() * 1000)


def _fresh_app_server(tmp_path, script: str, *args: str, **env: str) -> str:
    """Run `script` in a fresh process as an App server runs operators: our plugin, outside the
    checkout (camcore importable only through the plugin), nothing of the tests' loaded. Its stdout."""
    return run_python(script, *args, cwd=tmp_path, env={"FIFTYONE_PLUGINS_DIR": str(ROOT / "plugins"), **env},
                      camcore_on_path=False)


# The App server's page check: camcore.store only, never torch (a cold process: the tests' own
# processes have torch loaded already).
_PAGE_CHECK = """
import sys
import fiftyone as fo
import fiftyone.operators as foo
ds = fo.Dataset()
ds.add_sample(fo.Sample(filepath=sys.argv[1]))
sid = ds.first().id
for uri, ctx in ((sys.argv[2], {"params": {"known": list(ds.get_field_schema())}}),
                 (sys.argv[2], {"params": {"seen": "0"}}), (sys.argv[3], {"current_sample": sid})):
    result = foo.execute_operator(uri, ctx={"dataset": ds, **ctx})
    assert result.error is None, result.error
print(" ".join(m for m in ("torch", "torchvision", "pytorch_grad_cam") if m in sys.modules) or "none")
"""


def test_the_apps_page_check_and_open_in_load_no_torch(tmp_path):
    """Each open App page calls sync_app every 2 s, and open_in_cam_explorer makes a link: both need
    camcore.store and camcore.links only. A fresh App server answered the first check after
    importing torch, torchvision and grad-cam (~4 s of CPU, then their memory for its life)."""
    image = write_images(tmp_path / "images", ["one.png"])[0]
    loaded = _fresh_app_server(tmp_path, _PAGE_CHECK, str(image), SYNC, OPEN)
    assert loaded.split() == ["none"], f"loaded by the page check: {loaded.strip()}"


# The compute form's first open in a fresh App server: the registries and the request's checks only.
_COMPUTE_FORM = """
import json, sys
import fiftyone as fo
import fiftyone.operators as foo
ds = fo.Dataset()
ds.add_sample(fo.Sample(filepath=sys.argv[1]))
ds.compute_metadata()
forms = {}
for model in ("efficientnet_lite0", "fasterrcnn_resnet50_fpn_v2"):
    ctx = foo.ExecutionContext(request_params={"dataset_name": ds.name, "params": {**json.loads(sys.argv[3]),
                                                                                   "model": model}})
    forms[model] = json.dumps(foo.get_operator(sys.argv[2]).resolve_input(ctx).to_json())
loaded = [m for m in ("torch", "torchvision", "pytorch_grad_cam", "timm") if m in sys.modules]
print(json.dumps({"loaded": loaded, "forms": forms}))
"""


def test_the_compute_forms_first_open_loads_no_torch(tmp_path):
    """The form lists the models, methods, layers and classes and checks the request (names, the
    weights found, a detector's box rule) from the registries alone. It imported torch, torchvision
    and grad-cam through camcore.batch: ~4 s of CPU in a fresh App server, a wait the user saw."""
    image = write_images(tmp_path / "images", ["one.png"])[0]
    said = json.loads(_fresh_app_server(tmp_path, _COMPUTE_FORM, str(image), COMPUTE,
                                        json.dumps({k: v for k, v in PARAMS.items() if k != "model"})).splitlines()[-1])
    assert said["loaded"] == [], f"loaded by the form: {said['loaded']}"
    classifier, detector = said["forms"]["efficientnet_lite0"], said["forms"]["fasterrcnn_resnet50_fpn_v2"]
    assert "Cannot compute" not in classifier  # checked, and the packaged weights found
    assert all(f'"{word}"' in classifier for word in ("tench", "gradcam", "head", "predicted"))
    assert '"top:3"' in detector and '"Boxes"' in detector and '"fpn"' in detector


_FIRST_OPERATOR = """
import sys
import fiftyone as fo
import fiftyone.operators as foo
result = foo.execute_operator(sys.argv[1], ctx={"dataset": fo.Dataset()})
assert result.error is None, result.error
print(result.result["path"])
"""


def test_reload_models_works_as_the_first_operator_of_a_fresh_app_server(tmp_path):
    """"Reload models file" may be the first thing a user runs in an App started elsewhere (camcore
    not on its path until an operator puts it there): it imported camcore directly and failed."""
    models_file = tmp_path / "models.toml"
    models_file.write_text("")
    said = _fresh_app_server(tmp_path, _FIRST_OPERATOR, RELOAD, CAM_EXPLORER_MODELS=str(models_file))
    assert said.split()[-1] == str(models_file)
