"""Issue #21 item 3, with real processes: a compute_cams run over the threshold, scheduled in the
App's server as its form's Schedule does ("Run delegated" ticked; the App launched as the
explorer launches it, legacy orchestrators on as the README's "Big runs" says), is run by the
worker exactly as `make worker` starts it (its own process:
the Makefile's environment, FiftyOne's `fiftyone delegated launch`), and ends with the field
present on every sample and the run completed. The database is the test's own mongod."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import fiftyone as fo
import pytest
from bson import ObjectId
from fo_helpers import unique_name, write_images
from mongod_support import free_port
from test_plugin import COMPUTE, FIELD, PARAMS, ROOT, plugins_dir  # noqa: F401 (a fixture)

from camcore import store

pytestmark = [pytest.mark.slow]
SAMPLES, THRESHOLD = 3, 2  # over the threshold: queued, not run in the App's server


@pytest.fixture
def dataset(tmp_path):
    paths = write_images(tmp_path / "media", [f"img{i}.png" for i in range(SAMPLES)], size=(40, 48))
    ds = fo.Dataset(unique_name("worker"))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()


def _schedule(port: int, name: str) -> dict:
    """POST to the App's server what its page sends for compute_cams on the whole dataset with
    delegation requested; its answer (retried while the server is still coming up)."""
    import json
    import urllib.request

    body = json.dumps({"dataset_name": name, "operator_uri": COMPUTE, "params": {**PARAMS, "delegate": True},
                       "request_delegation": True, "selected": [], "view": [], "filters": {}}).encode()
    deadline = time.monotonic() + 120
    while True:
        request = urllib.request.Request(f"http://localhost:{port}/operators/execute", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return json.loads(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_a_run_queued_over_the_threshold_is_run_by_make_worker(dataset, monkeypatch, tmp_path):
    from fiftyone.operators.delegated import DelegatedOperationService

    monkeypatch.setenv("CAM_EXPLORER_DELEGATE_OVER", str(THRESHOLD))
    # the App's server as README's Big runs starts it (the explorer's launch, this setting on)
    monkeypatch.setenv("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "true")
    port = free_port()
    try:
        store.launch_app(dataset, port=port)
        queued = _schedule(port, dataset.name)  # the form's Schedule, "Run delegated" ticked
    finally:
        store.close_app()
    assert queued["delegated"] and not dataset.exists(FIELD), queued  # queued: nothing computed yet
    run_id = ObjectId(queued["result"]["id"]["$oid"])  # the run the App's answer names (extended JSON)
    # `make worker` (-o setup: never reinstall here; the same command and environment otherwise),
    # pointed at the test's database like any process the user starts beside the App
    env = {**os.environ, "FIFTYONE_DATABASE_URI": os.environ["FIFTYONE_DATABASE_URI"]}
    env.pop("FIFTYONE_PLUGINS_DIR", None)  # the Makefile sets it
    env.pop("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", None)  # ... and this
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(["make", "-s", "-o", "setup", "worker"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    service = DelegatedOperationService()
    try:
        deadline = time.monotonic() + 600  # a cold worker imports torch, then the model, on loaded CPUs
        while time.monotonic() < deadline and worker.poll() is None:
            run = service.get(run_id)
            if run.run_state in ("completed", "failed"):
                break
            time.sleep(2)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # its own process group: make and the worker under it
        worker.wait(timeout=60)
    said = log.read_text()[-3000:]
    run = service.get(run_id)
    assert run.run_state == "completed", f"{run.run_state}: {run.failed_at} {said}"
    assert len(dataset.exists(FIELD)) == SAMPLES, said
    assert run.status.progress == 1.0 and f"{SAMPLES}/{SAMPLES} samples" in run.status.label
    dataset.reload()
    assert FIELD in dataset.get_field_schema()  # an App reloaded now lists the new field
    service.delete_for_dataset(dataset._doc.id)
