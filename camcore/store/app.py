"""The FiftyOne App: its URLs, and the one App session this process serves."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import fiftyone as fo

from camcore.errors import StoreError
from camcore.links import BASE_URL_ENV
from camcore.store.app_server import start_server
from camcore.store.appwatch import WATCHED_ENV, SchemeWatch, saved_scheme, sync_scheme
from camcore.store.datasets import LOCK, db_errors

DEFAULT_APP_PORT = 5151
_PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"  # the repo's plugins/
PLUGINS_CACHE_ENV = "FIFTYONE_PLUGINS_CACHE_ENABLED"

CONNECT_SECONDS = 120.0  # how long launch_app waits for its session to be connected to the App server
_SESSION: Any = None  # the one FiftyOne App session this process serves
_WATCH: SchemeWatch | None = None  # keeps that session on its dataset's saved colour scheme


def app_url(dataset_name: str, sample_id: str | None = None, port: int = DEFAULT_APP_PORT) -> str:
    """URL of the dataset in the FiftyOne App; with sample_id it opens that sample's modal.

    The App (1.22) routes ``/datasets/:name`` and keeps the open sample in ``?id=``.
    """
    url = f"http://localhost:{int(port)}/datasets/{urllib.parse.quote(dataset_name, safe='')}"
    if sample_id:
        url += "?" + urllib.parse.urlencode({"id": sample_id})
    return url


@db_errors
def launch_app(
    dataset: fo.Dataset | fo.DatasetView, port: int = DEFAULT_APP_PORT, sample_id: str | None = None,
    explorer_url: str | None = None,
) -> fo.Session:
    """Serve the FiftyOne App on localhost:port showing `dataset`; open it at :func:`app_url`.

    One App per process: a second call on the same port retargets the running session
    (cheap, no new server); another port closes the old one first. explorer_url: where the
    explorer that launches the App is served: the App's server (and the plugin in it) gets it as
    $CAM_EXPLORER_URL, so its links and findings point back at this explorer (a value the user set
    in the environment wins).
    """
    global _SESSION, _WATCH
    with LOCK:
        if _SESSION is not None and _SESSION.server_port == port:
            _retarget(_SESSION, dataset)
            return _SESSION
        close_app()
        # The App's server (a child process) loads the CAM Explorer plugin from the repo's plugins/,
        # unless the user points FiftyOne at their own plugins folder.
        os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(_PLUGINS_DIR))
        _cache_our_plugins()
        if explorer_url:
            os.environ.setdefault(BASE_URL_ENV, explorer_url.rstrip("/"))
        # The App server (started now, with this environment) learns that this session's watch
        # keeps its scheme: the plugin's page check then leaves the colours to it.
        os.environ[WATCHED_ENV] = "1"
        try:
            start_server(port)
            _SESSION = fo.launch_app(
                dataset, port=port, address="localhost", remote=True, auto=False, sample_id=sample_id
            )
        finally:
            os.environ.pop(WATCHED_ENV, None)
        try:
            _wait_connected(_SESSION)
        except StoreError:
            close_app()
            raise
        # Another process's push saves its colours in the dataset only; the App's pages draw with
        # the session's scheme: keep that the dataset's (camcore.store.appwatch says why).
        _WATCH = SchemeWatch(_SESSION)
        _WATCH.start()
        return _SESSION


def _cache_our_plugins() -> None:
    """Have the App's server keep its plugins loaded when its plugins folder is this repository's.

    Why: FiftyOne 1.22 imports every plugin again for each operator request unless
    $FIFTYONE_PLUGINS_CACHE_ENABLED is on, and each open App page asks the plugin's sync_app every
    2 s: 77 -> 30 ms of the server's CPU per ask (bench/app_idle.py). FiftyOne drops its cache when
    a plugin's folder changes (a file added, removed or renamed). A folder of the user's own (where
    they may be editing a plugin in place) is left as FiftyOne has it, and a value they set wins."""
    ours = Path(os.environ.get("FIFTYONE_PLUGINS_DIR", "")).resolve() == _PLUGINS_DIR
    if ours:
        os.environ.setdefault(PLUGINS_CACHE_ENV, "true")


def _wait_connected(session: Any, timeout: float = CONNECT_SECONDS) -> None:
    """Return once the App server forwards events to the session (its event client subscribed).

    Why: fo.launch_app returns when the server listens, but the session's client connects in the
    background (after a miss, 10 s later: seen on a loaded machine). When it connects, the server
    takes the session's state as its own and sends it to every open page: a page opened from our
    link meanwhile (a sample in ?id=) had its sample closed under the user (the modal gone, the
    URL back to the grid). Once connected, the session follows what the pages do.
    So: post a no-op event (the session's own selection, again) as another subscriber, until the
    session's client receives it. (FiftyOne 1.22 has no public "connected" flag.)"""
    received = threading.Event()

    def listener(_event: Any) -> None:
        received.set()

    client = session._client  # FiftyOne's own event client: its listeners are how it dispatches
    client.add_event_listener("select_samples", listener)
    try:
        probe = json.dumps({"event": "select_samples", "subscription": f"cam-explorer-{uuid.uuid4()}",
                            "data": {"samples": list(session.selected_samples)}}).encode()
        url = f"http://localhost:{int(session.server_port)}/event"
        deadline = time.monotonic() + timeout
        while not received.is_set():
            if time.monotonic() > deadline:
                raise StoreError(f"the FiftyOne App on port {session.server_port} started, but its "
                                 f"session did not connect to it in {timeout:.0f} s")
            request = urllib.request.Request(url, data=probe, headers={"Content-type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except OSError:  # the server not answering yet: the next try
                pass
            received.wait(0.5)
    finally:
        client.remove_event_listener("select_samples", listener)


def _retarget(session: fo.Session, dataset: fo.Dataset | fo.DatasetView, timeout: float = 25.0) -> None:
    # The session's event client connects in the background and, after a miss, retries
    # every 10 s; changing the dataset before it is connected raises RuntimeError.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if isinstance(dataset, fo.DatasetView):
                session.view = dataset
            else:
                session.dataset = dataset
            return
        except RuntimeError as exc:
            if "not connected" not in str(exc) or time.monotonic() > deadline:
                raise StoreError(
                    f"the FiftyOne App on port {session.server_port} is not answering: {exc}") from exc
            time.sleep(0.25)


def app_session() -> fo.Session | None:
    """The App session this process serves (launch_app), or None: its view and selection are
    views the explorer offers."""
    return _SESSION


def close_app() -> None:
    """Stop the App server this process started, if any."""
    global _SESSION, _WATCH
    with LOCK:
        session, _SESSION = _SESSION, None
        watch, _WATCH = _WATCH, None
        if watch is not None:
            watch.stop()
        if session is not None:
            session.close()


def refresh_app(dataset_name: str) -> None:
    """Make an App this process serves on this dataset take the dataset's App config (colour
    scheme, active fields) now, without waiting for the scheme watch: a session keeps the scheme it
    was launched with."""
    session = _SESSION
    if session is None:
        return
    try:
        shown = session.dataset
        if shown is not None and shown.name == dataset_name:
            if not sync_scheme(session, saved_scheme(dataset_name)):  # it refreshes when it sends
                session.refresh()  # the same colours: the switched-on and new fields still
    except Exception:  # an App that is not connected (yet): it reads the config when it loads
        pass
