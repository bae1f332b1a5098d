"""Nobody else on the wire: the local Ray that `batch --workers` starts binds loopback only, with
no dashboard unless asked, and no database password is ever printed."""
from __future__ import annotations

import fiftyone as fo
import pytest
from fo_helpers import unique_name, write_images

from camcore import distributed
from camcore.batch import BatchOptions
from camcore.distributed import DistributedError, mask_uri, run_batch_distributed

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize("uri, shown", [
    (f"mongodb://alice:{SECRET}@db.example:27017/fo?authSource=admin",
     "mongodb://alice:***@db.example:27017/fo?authSource=admin"),
    (f"mongodb+srv://bob:{SECRET}@cluster0.example.net/?retryWrites=true",
     "mongodb+srv://bob:***@cluster0.example.net/?retryWrites=true"),
    (f"mongodb://carol:a%40b{SECRET}@h1:1,h2:2/db", "mongodb://carol:***@h1:1,h2:2/db"),
    (f"mongodb://h:1/?tls=true&tlsCertificateKeyFilePassword={SECRET}",
     "mongodb://h:1/?tls=true&tlsCertificateKeyFilePassword=***"),
    ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),  # nothing to hide
    ("mongodb://dave@h:1/", "mongodb://dave@h:1/"),  # a user and no password (X.509)
])
def test_mask_uri_hides_the_password(uri, shown):
    assert mask_uri(uri) == shown
    assert SECRET not in mask_uri(uri)


def test_a_refused_cluster_names_the_database_without_its_password(tmp_path, monkeypatch):
    paths = write_images(tmp_path, ["a.png"], size=(32, 32))
    ds = fo.Dataset(unique_name("dist-mask"))
    ds.add_sample(fo.Sample(filepath=paths[0]))
    monkeypatch.setattr(distributed, "database_uri", lambda: f"mongodb://alice:{SECRET}@127.0.0.1:27017/fo")
    try:
        with pytest.raises(DistributedError, match="cannot reach MongoDB") as err:
            run_batch_distributed(ds, BatchOptions("efficientnet_lite0"), address="ray://10.1.2.3:10001")
        assert SECRET not in str(err.value) and "alice:***@127.0.0.1:27017" in str(err.value), str(err.value)
    finally:
        ds.delete()


class _Recorder:
    """Stands in for ray.init: records its kwargs and what Ray would take 127.0.0.1 to mean."""

    def __init__(self, ray, fail: str | None = None):
        self.ray, self.fail, self.calls = ray, fail, []

    def __call__(self, **kwargs):
        self.calls.append((kwargs, self.ray._private.ray_constants.ENABLE_RAY_CLUSTER))
        if self.fail:
            raise RuntimeError(self.fail)


@pytest.fixture
def fake_ray(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv(distributed.DASHBOARD_ENV, raising=False)
    return ray


def test_a_local_ray_is_started_on_loopback_without_a_dashboard(fake_ray, monkeypatch):
    init = _Recorder(fake_ray)
    monkeypatch.setattr(fake_ray, "init", init)
    before = fake_ray._private.ray_constants.ENABLE_RAY_CLUSTER
    assert distributed._connect(fake_ray, None, {"FIFTYONE_DATABASE_URI": "mongodb://127.0.0.1:1"}) is True
    [(kwargs, cluster_mode)] = init.calls
    assert kwargs["address"] is None
    assert kwargs["_node_ip_address"] == "127.0.0.1"
    assert kwargs["include_dashboard"] is False and kwargs["dashboard_host"] == "127.0.0.1"
    # Ray 2.60 on Linux turns 127.0.0.1 into the interface's address unless cluster mode is off.
    assert cluster_mode is False
    assert fake_ray._private.ray_constants.ENABLE_RAY_CLUSTER == before, "Ray's setting not restored"


def test_the_dashboard_only_when_asked_and_on_loopback(fake_ray, monkeypatch):
    init = _Recorder(fake_ray)
    monkeypatch.setattr(fake_ray, "init", init)
    monkeypatch.setenv(distributed.DASHBOARD_ENV, "1")
    distributed._connect(fake_ray, None, {})
    [(kwargs, _)] = init.calls
    assert kwargs["include_dashboard"] is True and kwargs["dashboard_host"] == "127.0.0.1"


def test_joining_a_cluster_keeps_its_addresses(fake_ray, monkeypatch):
    init = _Recorder(fake_ray)
    monkeypatch.setattr(fake_ray, "init", init)
    before = fake_ray._private.ray_constants.ENABLE_RAY_CLUSTER
    distributed._connect(fake_ray, "auto", {})
    [(kwargs, cluster_mode)] = init.calls
    assert kwargs["address"] == "auto" and "_node_ip_address" not in kwargs
    assert cluster_mode == before and kwargs["include_dashboard"] is False


def test_a_ray_error_quoting_the_runtime_env_is_masked(fake_ray, monkeypatch):
    uri = f"mongodb://alice:{SECRET}@db.example:27017/fo"
    quoting = f"bad runtime_env {{'FIFTYONE_DATABASE_URI': '{uri}'}}"
    monkeypatch.setattr(fake_ray, "init", _Recorder(fake_ray, fail=quoting))
    with pytest.raises(DistributedError) as err:
        distributed._connect(fake_ray, None, {"FIFTYONE_DATABASE_URI": uri})
    assert SECRET not in str(err.value) and "alice:***@db.example" in str(err.value), str(err.value)


def test_a_password_stays_out_of_the_runtime_env_ray_logs(fake_ray, monkeypatch):
    """Ray writes the runtime env to its logs in full. A local Ray's workers inherit this
    process's environment, so a URI with a password that is there is not put in it."""
    uri = f"mongodb://alice:{SECRET}@127.0.0.1:27017/fo"
    init = _Recorder(fake_ray)
    monkeypatch.setattr(fake_ray, "init", init)
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", uri)
    distributed._connect(fake_ray, None, {"FIFTYONE_DATABASE_URI": uri, "PYTHONPATH": "/x"})
    distributed._connect(fake_ray, "auto", {"FIFTYONE_DATABASE_URI": uri})  # a cluster's nodes need it
    monkeypatch.delenv("FIFTYONE_DATABASE_URI")
    distributed._connect(fake_ray, None, {"FIFTYONE_DATABASE_URI": uri})  # not inherited: needed
    local, joined, not_inherited = (kwargs["runtime_env"]["env_vars"] for kwargs, _ in init.calls)
    assert local == {"PYTHONPATH": "/x"}
    assert joined["FIFTYONE_DATABASE_URI"] == uri and not_inherited["FIFTYONE_DATABASE_URI"] == uri


# A real local Ray on loopback beside an interface, and no password in its logs: checked on the Ray
# that tests/test_distributed.py's scenario starts anyway (test_the_local_ray_listens_on_loopback_only_
# and_logs_no_password): one Ray start and one process fewer than a probe of its own.
