"""launch_app starts the App on a loaded machine, where the App's server takes longer to listen
than FiftyOne's fixed 60 s wait (seen under load 17-20 on 2 cores: "ServerService failed to bind
to port", the App test red before any page). Here the server's start is made slower than
FiftyOne's wait, which is shortened to a few seconds for the test (its 60 s, scaled down), by a
sitecustomize that delays only FiftyOne's service processes; the real server then starts. And the
supervisor that starts it, lighter than FiftyOne's own start (camcore.store.app_server)."""
from __future__ import annotations

import time
import urllib.request

import fiftyone as fo
import fiftyone.core.service as fo_service
import psutil
import pytest
from cam_support import CHELSEA
from fo_helpers import unique_name
from mongod_support import free_port

from camcore import store
from camcore.errors import StoreError
from camcore.store import app_server

pytestmark = [pytest.mark.slow]
FIFTYONE_WAIT_S = 3  # FiftyOne's own wait for its server to listen (60 s), scaled down
SERVER_DELAY_S = 8  # how much later than that the server starts listening


@pytest.fixture
def slow_server(tmp_path, monkeypatch):
    """FiftyOne's service processes start SERVER_DELAY_S late; FiftyOne waits FIFTYONE_WAIT_S."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys, time\n"
        "if '--51-service' in sys.argv:\n"
        f"    time.sleep({SERVER_DELAY_S})\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    wait = fo_service.Service._wait_for_child_port
    monkeypatch.setattr(wait, "__defaults__", (None, FIFTYONE_WAIT_S))
    dataset = fo.Dataset(unique_name("launch-slow"))
    dataset.add_sample(fo.Sample(filepath=str(CHELSEA)))
    yield dataset
    store.close_app()
    dataset.delete()


def _service_pids() -> set[int]:
    """FiftyOne's service processes under this test process (other tests' Apps included)."""
    pids = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if "--51-service" in process.cmdline():
                pids.add(process.pid)
        except psutil.Error:  # ended meanwhile
            pass
    return pids


def test_an_app_server_slower_than_fiftyones_wait_still_starts(slow_server):
    port = free_port()
    started = time.monotonic()
    session = store.launch_app(slow_server, port=port)
    assert time.monotonic() - started > SERVER_DELAY_S  # it did wait past FiftyOne's own wait
    assert session.server_port == port
    with urllib.request.urlopen(f"http://localhost:{port}/fiftyone", timeout=10) as answer:
        assert answer.status == 200


def test_a_server_that_never_listens_is_a_clear_error_and_leaves_nothing(slow_server, monkeypatch):
    monkeypatch.setattr(app_server, "START_SECONDS", 2.0)
    before = _service_pids()
    with pytest.raises(StoreError, match="did not start listening on port .* in 2 s"):
        store.launch_app(slow_server, port=free_port())
    deadline = time.monotonic() + 20
    while _service_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _service_pids() - before, "a half-started App server was left running"
    assert store.app_session() is None


def _mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6}


def test_the_servers_supervisor_loads_no_fiftyone_library_and_still_ends_the_server():
    """FiftyOne's supervisor script (it ends the server when its parent goes) imported the whole
    library first: 2-4 s of CPU per App start (camcore.store.app_server). Ours runs the same
    script with ipc.py alone: numpy (which fiftyone imports first) is not in its memory, the server
    it started serves, and closing the App ends both."""
    dataset = fo.Dataset(unique_name("launch-light"))
    dataset.add_sample(fo.Sample(filepath=str(CHELSEA)))
    port = free_port()
    before = _service_pids()
    try:
        store.launch_app(dataset, port=port)
        supervisors = [psutil.Process(pid) for pid in _service_pids() - before]
        assert len(supervisors) == 1, supervisors
        supervisor = supervisors[0]
        assert app_server.SUPERVISOR_SCRIPT in supervisor.cmdline()
        assert not [f for f in _mapped_files(supervisor.pid) if "/numpy/" in f], "the supervisor imported FiftyOne"
        server = supervisor.children()
        assert [p.cmdline()[1:3] for p in server] == [["main.py", "--port"]]
        with urllib.request.urlopen(f"http://localhost:{port}/fiftyone", timeout=10) as answer:
            assert answer.status == 200
    finally:
        store.close_app()
        dataset.delete()
    gone, alive = psutil.wait_procs([supervisor, *server], timeout=30)
    assert not alive, f"left running after the App closed: {alive}"
