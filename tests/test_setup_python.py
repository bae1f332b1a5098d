"""Which Python `make setup` makes the venv from (Makefile: SYSTEM_PYTHON, PYTHON): the
distribution's optimised python3.11 where it has venv, else the first python3.11 or python3 on the
PATH, and a clear stop where there is none (bench/interpreter.py: why the first)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _make(path: str, *args: str) -> subprocess.CompletedProcess:
    """make in the project with PATH set to `path` (make itself found by its full path), none of
    the caller's PYTHON, SYSTEM_PYTHON or make flags."""
    make = subprocess.run(["bash", "-c", "command -v make"], capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "SYSTEM_PYTHON", "MAKEFLAGS")}
    env["PATH"] = path
    return subprocess.run([make, "-s", "--no-print-directory", "-C", str(ROOT), *args],
                          capture_output=True, text=True, env=env)


def _venv_python(path: str, **variables: str) -> str:
    """$(PYTHON) as `make setup` would use it."""
    out = _make(path, *(f"{k}={v}" for k, v in variables.items()),
                "--eval", "venv-python: ; @echo '$(PYTHON)'", "venv-python")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _fake_python(folder: Path, name: str, has_venv: bool) -> Path:
    """An executable that answers `-c 'import ensurepip, venv'` as a Python with or without venv."""
    folder.mkdir(exist_ok=True)
    fake = folder / name
    fake.write_text(f"#!/bin/sh\nexit {0 if has_venv else 1}\n")
    fake.chmod(0o755)
    return fake


def test_the_venv_is_made_from_the_system_python_where_it_has_venv(tmp_path):
    system = Path("/usr/bin/python3.11")
    if not system.exists():
        pytest.skip("no /usr/bin/python3.11 on this machine")
    has_venv = subprocess.run([str(system), "-c", "import ensurepip, venv"]).returncode == 0
    on_path = _fake_python(tmp_path / "bin", "python3.11", has_venv=True)
    picked = _venv_python(f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert picked == (str(system) if has_venv else str(on_path))


def test_without_it_the_first_python_on_the_path_that_has_venv(tmp_path):
    bin_ = tmp_path / "bin"
    _fake_python(bin_, "python3.11", has_venv=False)  # a python3.11 without venv (Debian: no python3.11-venv)
    python3 = _fake_python(bin_, "python3", has_venv=True)
    assert _venv_python(f"{bin_}:/usr/bin:/bin", SYSTEM_PYTHON=str(tmp_path / "none")) == str(python3)
    python311 = _fake_python(bin_, "python3.11", has_venv=True)
    assert _venv_python(f"{bin_}:/usr/bin:/bin", SYSTEM_PYTHON=str(tmp_path / "none")) == str(python311)
    # the user's choice wins
    assert _venv_python(f"{bin_}:/usr/bin:/bin", PYTHON="/opt/mine/python3.11") == "/opt/mine/python3.11"


def test_with_no_python_that_has_venv_setup_says_so(tmp_path):
    bin_ = tmp_path / "bin"  # found before the system's own (the PATH below has /usr/bin)
    _fake_python(bin_, "python3.11", has_venv=False)
    _fake_python(bin_, "python3", has_venv=False)
    out = _make(f"{bin_}:/usr/bin:/bin", "setup", f"VENV={tmp_path / 'venv'}", f"SYSTEM_PYTHON={tmp_path / 'none'}")
    assert out.returncode != 0
    assert "no python3.11 or python3 with venv here" in out.stdout + out.stderr
    assert not (tmp_path / "venv").exists()
