"""Issue #21 item 3: an App page is told of a dataset's queued compute_cams runs as they change
(FiftyOne 1.22 shows nothing after Schedule). Real FiftyOne delegated-operation records on the
test's mongod, moved through their states as a `fiftyone delegated launch` worker moves them; the
plugin's sync_app run as the page runs it (execute_operator), its notification and what it hands
the page to pass back read from what it triggers."""
from __future__ import annotations

import fiftyone as fo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ExecutionProgress, ExecutionResult
from fo_helpers import unique_name
from test_plugin import COMPUTE, plugins_dir  # noqa: F401 (a fixture)

from camcore.store import runs as queued

SYNC = "@cam-explorer/cam/sync_app"
TOLD = "@cam-explorer/cam/set_runs_told"
COPIES = "@cam-explorer/cam/refresh_sample_copies"


@pytest.fixture
def dataset():
    ds = fo.Dataset(unique_name("runs"))
    yield ds
    DelegatedOperationService().delete_for_dataset(ds._doc.id)
    ds.delete()


def _queue(dataset, label: str, operator: str = COMPUTE):
    context = ExecutionContext(request_params={"dataset_name": dataset.name, "dataset_id": str(dataset._doc.id),
                                               "params": {}})
    return DelegatedOperationService().queue_operation(operator, label=label, context=context).id


def _sync(dataset, runs):
    """sync_app as the page runs it (its groups' version seen): the operations it triggers."""
    import fiftyone.operators as foo

    seen = _requests(foo.execute_operator(SYNC, ctx={"dataset": dataset, "params": {"known": []}}))
    version = next(p["version"] for uri, p in seen if uri.endswith("/set_sidebar_groups"))
    result = foo.execute_operator(SYNC, ctx={"dataset": dataset, "params": {"seen": version, "runs": runs}})
    return _requests(result)


def _requests(result) -> list[tuple[str, dict]]:
    return [(r.operator_uri, r.params or {}) for r in result.executor._requests]


def test_a_run_is_told_queued_by_quarters_and_its_end(dataset):
    service = DelegatedOperationService()
    run = _queue(dataset, "gradcam on head of efficientnet_lite0")
    notices, told = queued.run_notices(None, queued.cam_runs(dataset.name, COMPUTE))
    assert [v for _, v in notices] == ["info"] and notices[0][0].startswith("CAM run queued: gradcam on head")
    assert queued.run_notices(told, queued.cam_runs(dataset.name, COMPUTE)) == ([], told)  # nothing new
    service.set_running(run, progress={"progress": 0.1, "label": "1/10 samples"})  # as the worker writes it
    notices, told = queued.run_notices(told, queued.cam_runs(dataset.name, COMPUTE))
    assert notices == [("CAM run running: gradcam on head of efficientnet_lite0: 1/10 samples", "info")]
    service.set_progress(run, ExecutionProgress(0.2, "2/10 samples"))  # the same quarter: not told again
    assert queued.run_notices(told, queued.cam_runs(dataset.name, COMPUTE))[0] == []
    service.set_progress(run, ExecutionProgress(0.5, "5/10 samples"))
    notices, told = queued.run_notices(told, queued.cam_runs(dataset.name, COMPUTE))
    assert notices == [("CAM run running: gradcam on head of efficientnet_lite0: 5/10 samples", "info")]
    service.set_completed(run)
    notices, told = queued.run_notices(told, queued.cam_runs(dataset.name, COMPUTE))
    assert [v for _, v in notices] == ["success"] and "completed: gradcam on head" in notices[0][0]
    # a page opened afterwards is not told of a run that ended before it watched, nor later
    notices, later = queued.run_notices(None, queued.cam_runs(dataset.name, COMPUTE))
    assert notices == [] and queued.run_notices(later, queued.cam_runs(dataset.name, COMPUTE))[0] == []


def test_a_run_a_worker_took_before_the_pages_next_check_is_told_started_and_where_to_see_it(dataset):
    """#21 (b): a worker that takes a run within one page check (2 s) leaves the page no queued state
    to see: its first notice says it started, and that this page says when it ends, not a bare
    progress line; and a page opened mid-run says the same of it."""
    service = DelegatedOperationService()
    first, told = queued.run_notices(None, [])  # a watching page, told of nothing yet
    run = _queue(dataset, "gradcam on head of efficientnet_lite0")
    service.set_running(run)  # as the worker marks it before its first progress
    for before in (told, None):  # the page watched before it was queued; the page opened while it ran
        notices, after = queued.run_notices(before, queued.cam_runs(dataset.name, COMPUTE))
        assert notices == [("CAM run started: gradcam on head of efficientnet_lite0. A worker runs it; this page "
                            "says when it ends.", "info")]
    # its first progress, still in the first quarter, is not told again (the page said "started")
    service.set_progress(run, ExecutionProgress(0.0, "0/10 samples"))
    assert queued.run_notices(after, queued.cam_runs(dataset.name, COMPUTE))[0] == []
    service.set_progress(run, ExecutionProgress(0.5, "5/10 samples"))  # later quarters: progress lines
    notices, _ = queued.run_notices(after, queued.cam_runs(dataset.name, COMPUTE))
    assert notices == [("CAM run running: gradcam on head of efficientnet_lite0: 5/10 samples", "info")]


def test_a_failed_run_says_why_and_only_this_datasets_compute_runs_are_read(dataset):
    other = fo.Dataset(unique_name("runs-other"))
    try:
        _queue(other, "on another dataset")
        _queue(dataset, "another operator", operator="@voxel51/utils/delete_dataset")
        run = _queue(dataset, "gradcam on head")
        assert [r.id for r in queued.cam_runs(dataset.name, COMPUTE)] == [str(run)]
        notices, told = queued.run_notices(None, queued.cam_runs(dataset.name, COMPUTE))
        DelegatedOperationService().set_failed(run, result=ExecutionResult(
            error="Traceback (most recent call last):\n  ...\nStoreError: no such layer: head"))
        notices, _ = queued.run_notices(told, queued.cam_runs(dataset.name, COMPUTE))
        assert notices == [("CAM run failed: gradcam on head: StoreError: no such layer: head", "error")]
    finally:
        DelegatedOperationService().delete_for_dataset(other._doc.id)
        other.delete()


def test_only_the_latest_runs_are_read(dataset):
    for i in range(queued.RECENT + 3):
        _queue(dataset, f"run {i}")
    said = [r.label for r in queued.cam_runs(dataset.name, COMPUTE)]
    assert said == [f"run {i}" for i in reversed(range(3, queued.RECENT + 3))]


def test_sync_app_notifies_the_page_and_hands_it_what_it_was_told(dataset):
    """The page's check (dist/index.umd.js, every 2 s) passes what it was told (null at first);
    sync_app notifies it of what changed and hands it the new record (set_runs_told), and with no
    run and nothing new it sends nothing (the groups' other checks stay one op or none)."""
    assert _sync(dataset, None) == []
    run_id = _queue(dataset, "gradcam on head")
    run = str(run_id)
    ops = _sync(dataset, None)
    assert [uri for uri, _ in ops] == ["notify", TOLD]
    assert ops[0][1]["message"].startswith("CAM run queued: gradcam on head") and ops[0][1]["variant"] == "info"
    assert ops[1][1] == {"runs": {run: "queued"}}
    assert _sync(dataset, {run: "queued"}) == []
    DelegatedOperationService().set_completed(run_id)
    ops = _sync(dataset, {run: "queued"})
    # ... and the page's samples taken again (the run's maps were written after its fields showed;
    # the App's reload_samples redraws its cached copies, whose replaced maps' old files are gone),
    # and the samples it opened read again (FiftyOne's modal keeps the copy it showed first)
    assert [uri for uri, _ in ops] == ["notify", "reload_dataset", COPIES, TOLD] and ops[0][1]["variant"] == "success"
    assert ops[3][1] == {"runs": {run: "completed"}}
    assert _sync(dataset, {run: "completed"}) == []



def test_only_a_run_the_page_watched_to_its_end_redraws_the_page():
    """A run that completed since the page's last check (also one queued and done between two
    checks) redraws it; one it was told of already, or that ended before the page's first check,
    does not."""
    assert queued.newly_completed({"a": "running:2"}, {"a": "completed"})
    assert queued.newly_completed({}, {"b": "completed"})
    assert not queued.newly_completed({"a": "completed"}, {"a": "completed"})
    assert not queued.newly_completed(None, {"a": "completed"})
    assert not queued.newly_completed({"a": "queued"}, {"a": "running:0"})
