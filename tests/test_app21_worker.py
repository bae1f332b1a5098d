"""Issue #21 item 3, as a user does it, with real processes: in the real App (launched as the
explorer launches it, legacy orchestrators on as the README's "Big runs" says), a compute_cams run
over the threshold is scheduled from its form ("Run delegated" ticked, **Schedule** clicked in
Chromium), the page says it was queued, a worker started exactly as `make worker` starts it (its own
process: the Makefile's environment, FiftyOne's `fiftyone delegated launch`) runs it, the page says
it completed and shows the new field in its sidebar without a reload, and the field is on every
sample. The database is the test's own mongod."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import fiftyone as fo
import pytest
from browser_support import APP_CHROMIUM, CHROMIUM_ARGS, shot_on_failure
from fo_app_page import as_returning_user, no_overlapping_redraws, open_operator_form, overlapping_redraws
from fo_helpers import unique_name, write_images
from mongod_support import free_port
from test_app21_app import _grid_in_colour, _in_scale
from test_plugin import ARTIFACTS, COMPUTE, FIELD, ROOT, plugins_dir  # noqa: F401

from camcore import store

pytestmark = [pytest.mark.slow, pytest.mark.browser]
SAMPLES, THRESHOLD = 3, 2  # over the threshold: queued, not run in the App's server


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"img{i}.png" for i in range(SAMPLES)], size=(40, 48))
    ds = fo.Dataset(unique_name("worker"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()


def _start_worker(log_path):
    """`make worker` (-o setup: never reinstall here; the same command and environment otherwise),
    pointed at the test's database like any process the user starts beside the App."""
    env = {**os.environ, "FIFTYONE_DATABASE_URI": os.environ["FIFTYONE_DATABASE_URI"]}
    env.pop("FIFTYONE_PLUGINS_DIR", None)  # the Makefile sets it
    env.pop("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", None)  # ... and this
    with open(log_path, "w") as out:
        return subprocess.Popen(["make", "-s", "-o", "setup", "worker"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _schedule_and_watch(url: str) -> None:
    """In Chromium: the compute_cams form on the whole dataset, Schedule, and what the page says
    until the run has completed and its field is in the sidebar (no reload)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=APP_CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            as_returning_user(page)
            overlaps = overlapping_redraws(page)
            with shot_on_failure(page):
                page.goto(url)
                expect(page.locator("[data-cy=fo-grid]").first).to_be_visible(timeout=120_000)
                open_operator_form(page, "compute heatmaps", "CAM Explorer: compute heatmaps")
                expect(page.get_by_text(f"Computes heatmaps on the current view ({SAMPLES} samples)")).to_be_visible(
                    timeout=60_000)
                expect(page.get_by_text("Schedule queues this run", exact=False)).to_be_visible(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "app21_worker_form.png"))
                page.get_by_role("button", name="Schedule").click()
                # the page's own check tells it: queued (or started, on a worker that took it first), then done
                queued = page.get_by_text(re.compile(r"^CAM run (queued|started|running): "))
                expect(queued).to_be_visible(timeout=60_000)
                page.screenshot(path=str(ARTIFACTS / "app21_worker_queued.png"))
                expect(page.get_by_text(re.compile(r"^CAM run completed: "))).to_be_visible(timeout=600_000)
                expect(page.locator(f"[data-cy=sidebar-field-{FIELD}]").first).to_be_visible(timeout=60_000)
                tile = _grid_in_colour(page)  # the new map switched on, drawn in its colour scale (jet)
                page.screenshot(path=str(ARTIFACTS / "app21_worker_completed.png"))
                assert _in_scale(tile), "the grid's tile is not drawn in a colour scale"
                no_overlapping_redraws(overlaps)
        finally:
            browser.close()


def test_a_run_scheduled_in_the_app_is_run_by_make_worker_and_its_field_shows(dataset, monkeypatch, tmp_path):
    from fiftyone.operators.delegated import DelegatedOperationService

    if not os.access(APP_CHROMIUM, os.X_OK):
        pytest.skip(f"no {APP_CHROMIUM}: run `make chromium`")

    monkeypatch.setenv("CAM_EXPLORER_DELEGATE_OVER", str(THRESHOLD))
    # the App's server as README's Big runs starts it (the explorer's launch, this setting on)
    monkeypatch.setenv("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    service = DelegatedOperationService()
    port = free_port()
    worker = _start_worker(tmp_path / "worker.log")  # started first: a cold worker imports torch
    try:
        store.launch_app(dataset, port=port)
        # Playwright's sync API wants a thread without a running event loop
        with ThreadPoolExecutor(1) as pool:
            pool.submit(_schedule_and_watch, store.app_url(dataset.name, port=port)).result(timeout=900)
    finally:
        store.close_app()
        os.killpg(worker.pid, signal.SIGTERM)  # its own process group: make and the worker under it
        worker.wait(timeout=60)
    said = (tmp_path / "worker.log").read_text()[-3000:]
    [run] = service.list_operations(operator=COMPUTE, dataset_name=dataset.name)
    assert run.run_state == "completed", f"{run.run_state}: {run.failed_at} {said}"
    assert len(dataset.exists(FIELD)) == SAMPLES, said
    assert run.status.progress == 1.0 and f"{SAMPLES}/{SAMPLES} samples" in run.status.label
    dataset.reload()
    assert FIELD in dataset.get_field_schema()
    service.delete_for_dataset(dataset._doc.id)
