"""The FiftyOne App plugin (plugins/cam-explorer): its operators listed and run through FiftyOne's own
operator machinery (execute_operator, the delegated-operations service), against a real mongod;
one browser test finds compute_cams in the App's operator browser."""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from browser_support import ARTIFACTS, APP_CHROMIUM, CHROMIUM_ARGS, again_until, shot_on_failure
from cam_support import CHELSEA
from fo_app_page import as_returning_user, no_overlapping_redraws, overlapping_redraws
from fo_helpers import coded_identity, field_name, unique_name, write_images

from camcore import batch, engine, links, store
from camcore.images import load_image
from camcore.models import load_model

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
PLUGIN = "@cam-explorer/cam"
COMPUTE = f"{PLUGIN}/compute_cams"
OPEN = f"{PLUGIN}/open_in_cam_explorer"
FINDING = f"{PLUGIN}/record_finding"
PANEL = f"{PLUGIN}/cam_heatmaps"
MODEL = "efficientnet_lite0"  # real weights that ship with a package: no download, fast on a CPU
PARAMS = {"model": MODEL, "methods": ["gradcam"], "layers": ["head"], "target": "predicted"}
FIELD = field_name(MODEL, "gradcam", "head", "predicted")


@pytest.fixture(scope="module", autouse=True)
def plugins_dir():
    """FiftyOne finds plugins in fo.config.plugins_dir (read from FIFTYONE_PLUGINS_DIR at import):
    set both, so this process and an App server it launches see plugins/."""
    old_dir, old_env = fo.config.plugins_dir, os.environ.get("FIFTYONE_PLUGINS_DIR")
    fo.config.plugins_dir = str(PLUGINS)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(PLUGINS)
    yield
    fo.config.plugins_dir = old_dir
    if old_env is None:
        os.environ.pop("FIFTYONE_PLUGINS_DIR", None)
    else:
        os.environ["FIFTYONE_PLUGINS_DIR"] = old_env


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"img{i}.png" for i in range(4)], size=(40, 48))
    ds = fo.Dataset(unique_name("plugin"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()


def _run(uri: str, **ctx):
    return foo.execute_operator(uri, ctx=ctx)


def _ours(ds: fo.Dataset) -> list[str]:
    return [name for name in ds.get_field_schema() if name.startswith(store.FIELD_PREFIX)]


def _requests(result) -> list[tuple[str, dict]]:
    """The App operations an execution asked for (reload, progress, open_url, panel updates)."""
    return [(r.operator_uri, r.params or {}) for r in result.executor._requests]


def test_operators_and_panel_are_listed():
    uris = {op.uri for op in foo.list_operators()}
    assert {COMPUTE, OPEN, FINDING, PANEL} <= uris
    registry = foo.OperatorRegistry()
    assert not [e for e in registry.list_errors() if "cam-explorer" in str(e)]
    compute = foo.get_operator(COMPUTE)
    assert compute.config.allow_delegated_execution and compute.config.dynamic


def test_compute_on_the_selection_writes_only_the_selected_samples(dataset):
    ids = dataset.values("id")
    result = _run(COMPUTE, dataset=dataset, selected=ids[1:3], params=PARAMS)
    assert not result.delegated
    labels = dict(zip(*dataset.values(["id", FIELD]), strict=True))
    assert [sid for sid in ids if labels[sid] is not None] == ids[1:3]
    assert all(isinstance(labels[s], fo.Heatmap) and os.path.isfile(labels[s].map_path) for s in ids[1:3])
    asked = [uri for uri, _p in _requests(result)]
    assert "reload_dataset" in asked and "set_progress" in asked


def test_compute_on_a_view_then_again_recomputes_nothing(dataset, monkeypatch):
    view = dataset.skip(1)
    _run(COMPUTE, view=view, params=PARAMS)
    ids, labels = dataset.values(["id", FIELD])
    assert labels[0] is None and all(isinstance(label, fo.Heatmap) for label in labels[1:])
    created = dataset.values(f"{FIELD}.created_at")

    computed = []
    real = batch.explain_many
    monkeypatch.setattr(batch, "explain_many",
                        lambda m, imgs, *a, **k: computed.extend(imgs) or real(m, imgs, *a, **k))
    _run(COMPUTE, view=view, params=PARAMS)
    assert computed == []  # resumed: every sample already done with the same provenance
    assert dataset.values(f"{FIELD}.created_at") == created

    _run(COMPUTE, dataset=dataset, params=PARAMS)  # the whole dataset: only the missing one
    assert len(computed) == 1 and computed[0].path == dataset.first().filepath
    assert dataset.values(f"{FIELD}.created_at")[1:] == created[1:]


@pytest.mark.parametrize("params, reason", [
    ({"model": "resnet9000"}, "Unknown model 'resnet9000'"),
    ({"methods": ["gradcam", "nosuchcam"]}, "Unknown method 'nosuchcam'"),
    ({"methods": ["fullgrad"]}, "not offered in batches"),
    ({"layers": ["layer4"]}, "has no layer 'layer4'"),
    ({"target": "no such class"}, "no such class"),
    ({"weights": "/etc/passwd"}, "are not offered"),
    ({"model": "deit_tiny", "methods": ["shapleycam"], "layers": ["block11"]}, "CNN"),
    ({"measures": True, "object_field": "filepath"}, "Segmentation masks or Detections boxes, not StringField"),
    ({"measures": True, "object_field": "nope"}, "no field 'nope'"),
    ({"measures": True, "threshold": 3}, "share of the heatmap's mass, 0..1"),
])
def test_bad_parameters_fail_clearly_and_write_nothing(dataset, params, reason):
    with pytest.raises(foo.executor.ExecutionError) as err:
        _run(COMPUTE, dataset=dataset, params={**PARAMS, **params})
    assert "Validation error" in str(err.value) and reason in str(err.value)
    assert _ours(dataset) == []
    assert not store.heatmap_path(dataset.name, FIELD, "x").parent.parent.exists()


def test_fields_equal_what_push_writes(tmp_path):
    """One sample, a named class, two methods on two layers: the operator's fields and labels are
    the ones `camcore push` gives the same request."""
    methods, layers, target = ["gradcam", "layercam"], ["stage5", "head"], "tabby"
    path = shutil.copy(CHELSEA, tmp_path / "chelsea.png")
    via_plugin, via_push = fo.Dataset(unique_name("plugin-eq")), fo.Dataset(unique_name("push-eq"))
    try:
        for ds in (via_plugin, via_push):
            ds.add_sample(fo.Sample(filepath=path))
        _run(COMPUTE, dataset=via_plugin,
             params={"model": MODEL, "methods": methods, "layers": layers, "target": target})
        model = load_model(MODEL, "auto")
        import torch

        with torch.enable_grad():
            explainer = engine.Explainer(model, load_image(path), target, tuple(layers))
            result = explainer.result(*explainer.heatmaps(methods, layers))
        pushed = store.push_heatmaps(via_push, via_push.first().id, result)

        assert sorted(_ours(via_plugin)) == sorted(pushed) and len(pushed) == 4
        a, b = via_plugin.first(), via_push.first()
        for field in pushed:
            assert via_plugin.get_field(field).info == via_push.get_field(field).info
            for attr in sorted(set(store.LABEL_ATTRIBUTES) - {"created_at"}):
                got, want = a[field][attr], b[field][attr]
                if isinstance(want, float):  # raw map range: batched vs single forward
                    assert got == pytest.approx(want, rel=1e-3), (field, attr)
                else:
                    assert got == want, (field, attr)
            # the batch's own provenance, beside push's (what resume compares)
            assert a[field].target_request == "tabby" and a[field].input_size_request == 0
            got = store.read_heatmap(via_plugin, a.id, field)
            want = store.read_heatmap(via_push, b.id, field)
            assert got.shape == want.shape == (300, 451)
            assert np.abs(got - want).max() <= 1e-3, field  # batched vs single forward: float noise
    finally:
        via_plugin.delete()
        via_push.delete()


def test_big_views_are_delegated_and_run_by_the_delegated_service(dataset, monkeypatch):
    """Over the threshold the run is queued, not run; FiftyOne's delegated-operations service (what
    `fiftyone delegated launch` runs) then computes it, reporting progress on the run."""
    from fiftyone.operators.delegated import DelegatedOperationService

    monkeypatch.setenv("CAM_EXPLORER_DELEGATE_OVER", "2")
    # queued runs need FiftyOne's legacy orchestrators (what `make worker`'s README setup sets)
    monkeypatch.setattr(fo.config, "allow_legacy_orchestrators", True)
    assert _run(COMPUTE, dataset=dataset, selected=dataset.values("id")[:2], params=PARAMS).delegated is False
    assert len(dataset.exists(FIELD)) == 2

    queued = _run(COMPUTE, dataset=dataset, params=PARAMS)
    assert queued.delegated
    assert len(dataset.exists(FIELD)) == 2  # queued: nothing computed yet

    service = DelegatedOperationService()
    done = service.execute_queued_operations(operator=COMPUTE, dataset_name=dataset.name)
    assert len(done) == 1 and not done[0].error, done[0].error
    assert len(dataset.exists(FIELD)) == 4
    run = service.get(queued.result["id"])
    assert run.run_state == "completed" and run.status.progress == 1.0 and "2/2 samples" in run.status.label
    service.delete_for_dataset(dataset._doc.id)


def test_delegate_param_overrides_the_threshold(dataset, monkeypatch):
    monkeypatch.setenv("CAM_EXPLORER_DELEGATE_OVER", "2")
    assert _run(COMPUTE, dataset=dataset, params={**PARAMS, "delegate": False}).delegated is False
    assert len(dataset.exists(FIELD)) == 4


def test_open_in_cam_explorer_links_the_sample_with_the_views_cams(dataset, monkeypatch):
    monkeypatch.setenv(links.BASE_URL_ENV, "http://explorer.test:8600")
    ids = dataset.values("id")
    _run(COMPUTE, dataset=dataset,
         params={**PARAMS, "methods": ["gradcam", "layercam"], "layers": ["head", "stage6"]})
    result = _run(OPEN, dataset=dataset, current_sample=ids[2])
    url = result.result["url"]
    assert url.startswith("http://explorer.test:8600/?")
    page, state = links.parse_url(url)
    assert (page, state.dataset, state.sample, state.model) == ("explore", dataset.name, ids[2], MODEL)
    assert set(state.methods) == {"gradcam", "layercam"} and set(state.layers) == {"head", "stage6"}
    assert ("@cam-explorer/cam/open_url", {"url": url}) in _requests(result)

    # nothing open, two selected: the first selected one; no CAM fields: no model in the link
    bare = fo.Dataset(unique_name("plugin-bare"))
    try:
        bare.add_samples([fo.Sample(filepath=s.filepath) for s in dataset])
        first = bare.values("id")[1]
        _page, state = links.parse_url(_run(OPEN, dataset=bare, selected=bare.values("id")[1:]).result["url"])
        assert (state.sample, state.model, state.methods) == (first, "", ())
    finally:
        bare.delete()
    with pytest.raises(foo.executor.ExecutionError, match="open a sample"):
        _run(OPEN, dataset=dataset)


def test_record_finding_tags_only_the_selected_samples(dataset):
    ids = dataset.values("id")
    result = _run(FINDING, dataset=dataset, selected=ids[:2],
                  params={"tag": "background bias", "note": "sky, not plane"})
    tags = dict(zip(*dataset.values(["id", "tags"]), strict=True))
    assert [sid for sid in ids if "cam:background-bias" in tags[sid]] == ids[:2]
    found = store.list_findings(dataset)
    assert [(f["sample_id"], f["tag"], f["note"]) for f in found] == [
        (sid, "background bias", "sky, not plane") for sid in ids[:2]]
    # each finding links back to the explorer on its sample
    assert [links.parse_url(f["url"])[1].sample for f in found] == ids[:2]
    assert "reload_dataset" in [uri for uri, _p in _requests(result)]

    with pytest.raises(foo.executor.ExecutionError, match="no letters or digits"):
        _run(FINDING, dataset=dataset, selected=ids[2:], params={"tag": "!!!"})
    assert len(store.list_findings(dataset)) == 2
    with pytest.raises(foo.executor.ExecutionError, match="select samples"):
        _run(FINDING, dataset=dataset, params={"tag": "good focus"})


def test_panel_lists_the_current_samples_fields_and_their_provenance(dataset):
    sid = dataset.values("id")[0]
    _run(COMPUTE, dataset=dataset, selected=[sid], params={**PARAMS, "methods": ["gradcam", "layercam"]})
    result = _run(PANEL, dataset=dataset, current_sample=sid,
                  params={"panel_id": "p1", "__method__": "on_load", "state": {}})
    asked = _requests(result)
    state = next(p["state"] for uri, p in asked if uri == "patch_panel_state")
    assert state["methods"] == ["gradcam", "layercam"]
    assert (state["method"], state["layer"]) == ("gradcam", "head")
    assert state["fields"] == [FIELD]
    rows = next(p["data"][state["table"]] for uri, p in asked if uri == "patch_panel_data")
    values = {r["attribute"]: r["f0"] for r in rows}
    assert (values["method"], values["model"], values["target_request"]) == ("gradcam", MODEL, "predicted")
    assert values["eigen_smooth"] == "False" and float(values["raw_max"]) > float(values["raw_min"])
    assert any(uri == "show_panel_output" for uri, _p in asked)

    # the panel's button prompts compute_cams for exactly this sample
    result = _run(PANEL, dataset=dataset, current_sample=sid,
                  params={"panel_id": "p1", "__method__": "compute", "panel_state": {"sample_id": sid}})
    prompt = next(p for uri, p in _requests(result) if uri == "prompt_user_for_operation")
    assert prompt["operator_uri"] == COMPUTE and prompt["params"]["sample_ids"] == [sid]
    # and compute_cams with those params writes that sample only
    _run(COMPUTE, dataset=dataset, params={**PARAMS, "methods": ["xgradcam"], **prompt["params"]})
    xfield = field_name(MODEL, "xgradcam", "head", "predicted")
    assert [label is not None for label in dataset.values(xfield)] == [True, False, False, False]


# ---------------------------------------------------------------- the App, in Chromium



def _drive_app(url: str, modal_url: str, explorer: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=APP_CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            as_returning_user(context)
            overlaps = overlapping_redraws(context)  # compute_cams' last ops redraw the grid's tiles
            # the explorer is not running here: answer for it, so the new tab has a page
            context.route(f"{explorer}/**",
                          lambda route: route.fulfill(body="the explorer", content_type="text/plain"))
            page = context.new_page()
            with shot_on_failure(page):
                _journey(page, context, url, modal_url, explorer)
            no_overlapping_redraws(overlaps)
        finally:
            browser.close()


def _journey(page, context, url: str, modal_url: str, explorer: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    # the grid is up: the App knows the dataset and has loaded the plugins' operators
    expect(page.locator("[data-cy=fo-grid]").first).to_be_visible(timeout=90_000)
    page.locator("body").click(position={"x": 700, "y": 20})  # focus the page, not an input
    page.keyboard.press("Backquote")  # the operator browser's shortcut
    operators = page.locator("[data-cy=operators-browser]")
    expect(operators).to_be_visible(timeout=30_000)
    page.keyboard.type("CAM Explorer")
    item = operators.get_by_text("CAM Explorer: compute heatmaps")
    expect(item).to_be_visible(timeout=30_000)
    expect(operators.get_by_text("CAM Explorer: record a finding")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "fiftyone_operator_browser.png"))
    item.click()
    # its form, resolved by the plugin in the App's server from the registries
    form = page.get_by_text("Computes heatmaps on the current view (4 samples)")
    expect(form).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Layers", exact=True).first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "fiftyone_compute_cams_form.png"))
    # run it in the App's server: streamed progress, then the summary
    page.get_by_role("button", name="Execute").click()
    done = page.get_by_text("CAM heatmaps: 4 computed, 0 already done")
    expect(done).to_be_visible(timeout=180_000)
    page.screenshot(path=str(ARTIFACTS / "fiftyone_compute_cams_done.png"))

    # a sample's modal: the panel explains its heatmap field
    page.goto(modal_url)
    page.locator("[data-cy=panel-tab-cam_heatmaps]").click(timeout=90_000)
    expect(page.get_by_text("target_request")).to_be_visible(timeout=60_000)
    expect(page.get_by_text(FIELD).first).to_be_visible()
    expect(page.get_by_role("button", name="Compute CAMs for this sample")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "fiftyone_cam_panel.png"))
    # its button: compute_cams on this sample alone (already done: skipped, not the view's 4)
    page.get_by_role("button", name="Compute CAMs for this sample").click()
    expect(page.get_by_text("Computes heatmaps on 1 chosen sample(s)")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Execute").click()
    expect(page.get_by_text("CAM heatmaps: 0 computed, 1 already done")).to_be_visible(timeout=120_000)
    page.get_by_role("button", name="Done").click()

    # open_in_cam_explorer opens the explorer on that sample in a new tab (the plugin's JS). The
    # shortcut, not a click (one outside the modal would close it); pressed again as a user would when
    # the browser does not come (under load, once pressed while the closing dialog still held the keys)
    again_until(lambda: page.keyboard.press("Backquote"),
                lambda: expect(operators).to_be_visible(timeout=15_000))
    page.keyboard.type("open this sample")
    operators.get_by_text("CAM Explorer: open this sample in the explorer").click()
    execute = page.get_by_role("button", name="Execute")
    expect(execute).to_be_visible(timeout=60_000)
    with context.expect_page(timeout=60_000) as opened:
        execute.click()
    tab = opened.value
    tab.wait_for_load_state()
    _page, state = links.parse_url(tab.url)
    assert tab.url.startswith(f"{explorer}/?"), tab.url
    assert (state.model, state.methods, state.layers) == (MODEL, ("gradcam",), ("head",))
    fallback = page.get_by_role("link", name="Open the sample in CAM Explorer")  # short: fits
    expect(fallback).to_be_visible(timeout=30_000)
    assert fallback.get_attribute("href") == tab.url
    page.screenshot(path=str(ARTIFACTS / "fiftyone_open_in_explorer.png"))


@pytest.mark.browser
@pytest.mark.slow
def test_app_operator_browser_offers_compute_cams(dataset, monkeypatch):
    """store.launch_app (the explorer's "Launch the FiftyOne App") points the App's server at
    plugins/ by itself; compute_cams is in the App's operator browser, its form resolves, and
    executing it from the App writes the view's heatmaps; the panel shows a sample's field and
    open_in_cam_explorer opens the explorer on it in a new tab."""
    if not os.access(APP_CHROMIUM, os.X_OK):
        pytest.skip(f"no {APP_CHROMIUM}: run `make chromium`")
    pytest.importorskip("playwright.sync_api")
    from mongod_support import free_port

    monkeypatch.delenv("FIFTYONE_PLUGINS_DIR")
    monkeypatch.delenv(store.app.PLUGINS_CACHE_ENV, raising=False)
    explorer = "http://explorer.test:8600"
    monkeypatch.setenv(links.BASE_URL_ENV, explorer)  # inherited by the App's server
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        store.launch_app(dataset, port=port)  # its server process inherits FIFTYONE_PLUGINS_DIR
        assert os.environ["FIFTYONE_PLUGINS_DIR"] == str(PLUGINS)
        # and keeps our plugins loaded between operator requests (the journey below runs so)
        assert _server_environment(port).get(store.app.PLUGINS_CACHE_ENV) == "true"
        # Playwright's sync API wants a thread without a running event loop.
        with ThreadPoolExecutor(1) as pool:
            grid, modal = (store.app_url(dataset.name, sid, port=port) for sid in (None, dataset.first().id))
            pool.submit(_drive_app, grid, modal, explorer).result(timeout=500)
    finally:
        store.close_app()
    assert len(dataset.exists(FIELD)) == 4


def _server_environment(port: int) -> dict:
    """The environment of the App's server process on `port` (started by this process)."""
    import fiftyone.core.session.session as fo_session
    import psutil

    child = fo_session._server_services[port].child
    return psutil.Process(child.pid).environ()


@pytest.mark.parametrize("plugins_dir, preset, expected", [
    ("ours", None, "true"),  # the explorer's own plugins folder: kept loaded
    ("ours", "false", "false"),  # the user's own setting wins
    ("own", None, None),  # a folder of the user's own, where they may edit a plugin: FiftyOne's way
])
def test_the_app_keeps_our_plugins_loaded_between_requests(monkeypatch, tmp_path, plugins_dir, preset, expected):
    """launch_app switches FiftyOne's plugins cache on for the App's server (each open App page asks
    sync_app every 2 s; without it every ask imports the plugins again) only where the plugins folder
    is this repository's, and never over the user's own value."""
    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", str(PLUGINS if plugins_dir == "ours" else tmp_path))
    if preset is None:
        monkeypatch.delenv(store.app.PLUGINS_CACHE_ENV, raising=False)
    else:
        monkeypatch.setenv(store.app.PLUGINS_CACHE_ENV, preset)
    store.app._cache_our_plugins()
    assert os.environ.get(store.app.PLUGINS_CACHE_ENV) == expected


def test_compute_cams_measures_switch_stores_the_measure_fields(dataset):
    from camcore.store import measures as measure_store

    _run(COMPUTE, dataset=dataset, params={**PARAMS, "measures": True, "faithfulness": False, "threshold": 0.4})
    fields = measure_store.measure_runs(dataset)[FIELD]
    assert fields == coded_identity(model=MODEL, method="gradcam", layer="head", target="predicted").measure_fields()
    assert set(dataset.values(fields["about"])) == {"t=0.4;obj=model;f=0"}
    assert None not in dataset.values(fields["conf"])
    # Off by default: a plain compute writes no measure field.
    other = fo.Dataset(unique_name("plugin-plain"))
    other.add_samples([fo.Sample(filepath=p) for p in dataset.values("filepath")[:1]])
    try:
        _run(COMPUTE, dataset=other, params=PARAMS)
        assert measure_store.measure_runs(other) == {}
    finally:
        other.delete()
