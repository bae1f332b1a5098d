"""The same work under two venvs' Pythons, alternated: what the interpreter's build costs (issue 26 item 7).

pyenv builds CPython without profile-guided and link-time optimisation unless told to, and with a
shared libpython; Debian's python3.11 has both optimisations and a static interpreter. The suite is
CPU-bound on 2 cores and most of its processes run Python (servers, tests, imports), so `make setup`
makes the venv from the faster one (Makefile: PYTHON). Each piece runs in a fresh process of each
venv in turn, `--repeats` times; its CPU is the process's own (user + system), and the ratio is
the median of the second venv's over the first's.

    make setup VENV=/tmp/venv-pyenv PYTHON=$(command -v python3.11)   # the two venvs to compare
    make setup VENV=/tmp/venv-debian PYTHON=/usr/bin/python3.11
    .venv/bin/python bench/interpreter.py /tmp/venv-pyenv /tmp/venv-debian --repeats 3
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIECES = {  # name -> the command after the venv's python
    "python probe (dicts, strings, a loop)": ["-c", "import sys; sys.path.insert(0, 'bench'); "
                                             "from machine_probe import _python_work; _python_work()"],
    "import fiftyone, torch, streamlit, camcore": ["-c", "import fiftyone, torch, streamlit, "
                                                  "camcore.engine, camcore.store"],
    "AppTest pages (tests/test_apptest.py)": ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_apptest.py"],
}


def _cpu_of(cmd: list[str]) -> float:
    """CPU seconds of one finished child process tree (the children it waited for included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _version(venv: Path) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", "import os, platform, sys; "
                           "print(platform.python_version(), os.path.realpath(sys.executable))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="the baseline venv")
    parser.add_argument("second", type=Path, help="the venv compared with it")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    venvs = [args.first, args.second]
    for venv in venvs:
        print(f"{venv}: Python {_version(venv)}")
    for name, tail in PIECES.items():
        cpu: dict[Path, list[float]] = {venv: [] for venv in venvs}
        for _ in range(args.repeats):
            for venv in venvs:  # alternated, so a host that changes speed meets both alike
                cpu[venv].append(_cpu_of([str(venv / "bin" / "python"), *tail]))
        first, second = (statistics.median(cpu[venv]) for venv in venvs)
        print(f"{name}: {first:.2f} vs {second:.2f} CPU-s (median of {args.repeats}), "
              f"ratio second/first {second / first:.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
