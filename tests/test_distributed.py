"""Batch on Ray: a real local Ray cluster with two workers sharing one real mongod, on loopback
only (a private network namespace, see tests/ray_scenario.py), plus the driver's own checks. The
same local Ray shows it listens on loopback only and logs no database password."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import pytest
import ray_background
import ray_scenario
from fo_helpers import unique_name, write_images

from camcore import distributed
from camcore.batch import BatchOptions
from camcore.distributed import DistributedError, run_batch_distributed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenario(request) -> dict:
    """The Ray scenario's result: started beside the tests after collection (tests/ray_background.py),
    or here when this file runs on its own."""
    result = ray_background.result(ray_background.run_id(request.config))
    if "skip" in result:
        pytest.skip(result["skip"])  # CI runs as root, where a namespace can be made
    return result


@pytest.mark.slow
def test_two_workers_share_the_view_and_skip_what_is_done(scenario):
    first = scenario["first"]
    assert (first["done"], first["skipped"], first["failed"]) == (9, 3, [])
    workers = first["workers"]
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    # Each worker is handed a shard at once; which samples it then computes depends on timing (a
    # shard may hold only samples done already, the other worker may take the rest).
    assert all(w["shards"] > 0 for w in workers), "both workers took shards"
    assert sum(w["samples_done"] for w in workers) == 9
    assert sum(w["samples_done"] for w in workers) == 9
    # every sample has both fields, each with its file; no file without a label
    assert set(scenario["labels_with_files"].values()) == {12}
    assert scenario["files"] == 12
    # progress rose to the total
    assert scenario["ticks"][0] == [0, 12] and scenario["ticks"][-1] == [12, 12]
    # the workers' maps equal a single process's, sample by sample
    assert scenario["max_diff"] < 1e-4
    assert len(scenario["targets"]) > 2  # each sample explained for its own predicted class


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_reported_done(scenario):
    assert scenario["killed"], "the scenario killed a worker mid-run"
    third = scenario["third"]
    lost = [f for f in third["failed"] if f["error"].startswith("worker lost")]
    assert lost and len(lost) == len(third["failed"])
    assert third["done"] + len(lost) == 12  # the surviving worker took every other shard
    assert scenario["after_kill_with_label"] >= third["done"]
    assert scenario["after_kill_label_without_file"] == 0
    fourth = scenario["fourth"]
    assert fourth["failed"] == [] and fourth["done"] == 12 - scenario["after_kill_with_label"]
    assert fourth["skipped"] == scenario["after_kill_with_label"]  # the worker skips what is done
    assert len(fourth["workers"]) == 2 and all("pid" in w for w in fourth["workers"])
    assert scenario["after_rerun_with_label"] == 12


def _pids(report: dict) -> set[int]:
    """The pids of a run's workers that answered at its end (a killed one reports an error)."""
    return {w["pid"] for w in report["workers"] if "pid" in w}


@pytest.mark.slow
def test_a_local_ray_and_its_workers_stay_warm_for_the_next_run_until_shutdown(scenario):
    """The local Ray the first run started is kept with its two workers; the next runs start on
    them (a lost one replaced by a new one) and shutdown() ends them all."""
    first = _pids(scenario["first"])
    assert scenario["kept_after_first"] == {"ray": True, "workers": sorted(first)}
    third = scenario["third"]
    assert len(third["workers"]) == 2 and len(_pids(third)) == 1 and _pids(third) < first  # one was killed
    fourth = _pids(scenario["fourth"])
    assert _pids(third) < fourth and len(fourth - first) == 1  # the survivor and one new worker
    assert _pids(scenario["fifth"]) and _pids(scenario["fifth"]) <= fourth  # the re-batch ran on the warm ones
    assert scenario["after_shutdown"] == {"ray": False, "workers": []}


@pytest.mark.slow
def test_a_worker_killed_while_replacing_maps_leaves_each_label_with_its_own_file(scenario):
    """Issue 13.1 on Ray: workers write new files (never in place), so a SIGKILL mid-re-batch
    leaves each label with the file it was written with; the rerun leaves no stray file."""
    assert scenario["worker_names_ok"]
    assert scenario["rekilled"], "the scenario killed a worker mid-run"
    rows = scenario["after_rekill"]
    assert len(rows) == 12 and all(r["file"] and r["consistent"] for r in rows), rows
    assert scenario["sixth"]["failed"] == []
    assert scenario["after_rebatch_files_match"]


@pytest.mark.slow
def test_the_local_ray_listens_on_loopback_only_and_logs_no_password(scenario):
    """The local Ray the runs join, started beside an interface it could bind (the namespace's veth
    pair): its node is 127.0.0.1, nothing in the namespace listens beyond loopback, the workers
    carry the database URI (with its password) and no file Ray wrote holds the password."""
    if not scenario["with_an_interface"]:
        pytest.skip("no veth pair in a private namespace here: Ray would find no address but loopback")
    net = scenario["network"]
    assert ray_scenario.SECRET in net["uri"]
    assert net["node"] == "127.0.0.1", net
    assert net["listening"], net
    loopback = ("127.", "[::ffff:127.", "[::1]")
    assert all(addr.startswith(loopback) for addr in net["listening"]), net["listening"]
    assert net["worker_uri"] == net["uri"], net  # the workers reach the same database ...
    assert scenario["files_with_the_password"] == [], scenario["files_with_the_password"]  # ... never logged


def test_a_remote_cluster_with_a_loopback_database_is_refused(tmp_path, monkeypatch):
    paths = write_images(tmp_path, ["a.png"], size=(32, 32))
    ds = fo.Dataset(unique_name("dist"))
    ds.add_sample(fo.Sample(filepath=paths[0]))
    try:
        assert distributed._is_loopback(distributed.database_uri())  # the test mongod
        with pytest.raises(DistributedError, match="cannot reach MongoDB"):
            run_batch_distributed(ds, BatchOptions("efficientnet_lite0"), address="ray://10.1.2.3:10001")
        assert not [f for f in ds.get_field_schema() if f.startswith("cam_")], "refused before any write"
    finally:
        ds.delete()


@pytest.mark.parametrize("address, remote", [
    (None, False), ("local", False), ("auto", False), ("ray://127.0.0.1:10001", False),
    ("ray://head.example:10001", True), ("10.0.0.7:6379", True),
])
def test_which_addresses_are_remote(address, remote):
    assert distributed._is_remote(address) is remote


def test_cli_rejects_device_with_workers():
    proc = subprocess.run(
        [sys.executable, "-m", "camcore", "batch", "--dataset", "x", "--model", "efficientnet_lite0",
         "--workers", "2", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "--device is chosen per worker" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("resources, asked, shape", [
    ({"CPU": 2.0}, 2, (0, 1, 2)),
    ({"CPU": 2.0}, 8, (0, 1, 2)),  # never more actors than the CPUs can place
    ({"CPU": 16.0}, 4, (0, 4, 4)),
    ({"CPU": 16.0, "GPU": 2.0}, 8, (1, 1, 2)),  # one GPU each, as many as there are GPUs
    ({"CPU": 16.0, "GPU": 4.0}, 2, (1, 1, 2)),
])
def test_worker_shape_fits_the_cluster(resources, asked, shape):
    assert distributed._worker_shape(resources, asked) == shape


def test_missing_weights_fail_before_ray_starts(tmp_path, monkeypatch):
    from camcore import weights
    from camcore.errors import ModelError, WeightsUnavailable
    from camcore.models import get_spec

    monkeypatch.setenv("CAM_EXPLORER_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached DeepLabV3 checkpoint
    paths = write_images(tmp_path, ["a.png"], size=(32, 32))
    ds = fo.Dataset(unique_name("dist-weights"))
    ds.add_sample(fo.Sample(filepath=paths[0]))
    started = []
    monkeypatch.setattr(distributed, "_connect", lambda *a: started.append(1))
    try:
        with pytest.raises(WeightsUnavailable, match="No pretrained weights"):
            run_batch_distributed(ds, BatchOptions("deeplabv3", "auto"))
        with pytest.raises(ModelError, match="not found"):
            run_batch_distributed(ds, BatchOptions("deeplabv3", str(tmp_path / "nope.pth")))
        assert not started
        weights.check_available(get_spec("deeplabv3").weights, "untrained")  # an explicit choice: fine
    finally:
        ds.delete()
