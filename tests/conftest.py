"""Test session setup: a real, throw-away MongoDB and a temporary CAM Explorer home.

Done in ``pytest_configure`` so the environment is final before any test module imports
fiftyone (its config is read once, at import). Child processes inherit the environment,
so a subprocess that imports fiftyone talks to the same database.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):  # `import camcore` and the shared helpers, however pytest is invoked
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

_state: dict = {}


def _start_mongod(tmp: Path) -> None:
    from mongod_support import start_mongod

    try:
        proc, uri = start_mongod(tmp)
    except RuntimeError as exc:
        raise pytest.UsageError(str(exc)) from exc
    _state["mongod"] = proc
    os.environ["FIFTYONE_DATABASE_URI"] = uri


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
        from mongod_support import stop_mongod

        stop_mongod(proc)
    tmp = _state.pop("tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
