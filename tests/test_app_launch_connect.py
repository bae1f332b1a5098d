"""launch_app returns an App that a link can open a sample in, even when the session's own
connection to the App server is late (issue #21 item 8, the cause of a CI failure under load).

fo.launch_app returns once its server listens; the Python session's event client connects in the
background and, after a miss, only 10 s later. When it connects, the server takes the session's
state as its own and sends it to every open page: a page opened from `app_url(..., sample_id)`
meanwhile had its sample closed (seen in Chromium: the modal gone, the URL back to the grid, the
test's record_finding then found no open sample). Here the session's first connection is held
(its client's ping waits: a loaded machine's timing) and a real subscriber opens the sample the way
the App's page does (POST /events with the App's initializer, on the real App server).
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import fiftyone as fo
import fiftyone.core.session.client as fo_client
import pytest
from cam_support import CHELSEA
from fo_helpers import unique_name
from mongod_support import free_port

from camcore import store

pytestmark = [pytest.mark.slow]
HOLD_S = 8.0  # how late the session's first connection is, unless the test lets it through sooner


class _Page:
    """A subscriber to the App server's events that opened `sample_id`, as a page at the App's
    URL `?id=<sample_id>` does; it keeps the sample id of each state the server sends it."""

    def __init__(self, port: int, dataset: str, sample_id: str):
        import requests

        self.states: list[str | None] = []
        self._response = requests.post(
            f"http://localhost:{port}/events", stream=True, timeout=60,
            headers={"Accept": "text/event-stream", "Content-type": "application/json"},
            data=json.dumps({"events": ["state_update", "refresh"], "subscription": str(uuid.uuid4()),
                             "initializer": {"dataset": dataset, "sample_id": sample_id}}))
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        import sseclient

        try:
            for message in sseclient.SSEClient(self._response).events():
                if message.event in ("state_update", "refresh"):
                    self.states.append(json.loads(message.data)["state"].get("sample_id"))
        except Exception:  # closed by the test
            pass

    def close(self) -> None:
        self._response.close()


def _until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_sample_opened_from_the_link_stays_open_when_the_session_connects_late(monkeypatch):
    dataset = fo.Dataset(unique_name("launch-connect"))
    dataset.add_sample(fo.Sample(filepath=str(CHELSEA)))
    sample_id = dataset.first().id
    let_through = threading.Event()
    real_ping = fo_client._ping

    def late_ping(url: str) -> None:  # the session's client checks the server before it subscribes
        let_through.wait(HOLD_S)
        real_ping(url)

    monkeypatch.setattr(fo_client, "_ping", late_ping)
    page = None
    try:
        session = store.launch_app(dataset, port=free_port())
        page = _Page(session.server_port, dataset.name, sample_id)  # the user follows the link
        assert _until(lambda: page.states, 60), "the App server sent the page no state"
        assert page.states[0] == sample_id, page.states
        let_through.set()  # the session connects now, if it has not yet
        # A connected session follows the page: the server sends it the page's sample
        followed = _until(lambda: session.sample_id == sample_id, 30)
        time.sleep(1.0)  # the server hands its queued events out every 0.2 s
        assert followed and set(page.states) == {sample_id}, (
            f"the page was sent these samples: {page.states} (None: its sample closed); "
            f"the session holds {session.sample_id}")
    finally:
        if page is not None:
            page.close()
        store.close_app()
        dataset.delete()
