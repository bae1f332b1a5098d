"""make test's pytest options hand the test files out in tests/conftest.py's LONG_FIRST order (issue 26
item 7): a long file handed out last runs alone at the end while the other workers idle. The files of
an ONE_AT_A_TIME group never run beside one another (their browser waits ran out when they met)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from conftest import LAST, LONG_FIRST, ONE_AT_A_TIME

ROOT = Path(__file__).resolve().parents[1]


def _make_test_options(workers: int = 1) -> list[str]:
    """The options `make test` gives pytest (read from the Makefile), for `workers` workers."""
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if "-m pytest" in ln)
    options = shlex.split(line.split("-m pytest", 1)[1].replace("$(TEST_WORKERS)", str(workers)))
    return [o for o in options if not o.startswith("--durations")]


def _suite_hooks(folder: Path) -> None:
    """A conftest.py in folder with the suite's ordering and scheduling hooks only."""
    suite_conftest = ROOT / "tests" / "conftest.py"
    (folder / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(suite_conftest)!r})\n"
        "suite = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(suite)\n"
        "pytest_collection_modifyitems = suite.pytest_collection_modifyitems\n"
        "pytest_xdist_make_scheduler = suite.pytest_xdist_make_scheduler\n")


def _pytest(folder: Path, options: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--rootdir",
                           str(folder), *options, str(folder)],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_make_test_starts_the_long_files_first(tmp_path):
    """Three one-test files from LONG_FIRST and the LAST file beside two files of many quick tests,
    run with make test's options in one worker: the long files run first, in LONG_FIRST's order
    (xdist's default would run the files with the most tests first), and the LAST one after all."""
    _suite_hooks(tmp_path)
    long_files, last = list(LONG_FIRST[:3]), list(LAST)
    for name in long_files + last:
        (tmp_path / f"{name}.py").write_text("def test_long():\n    pass\n")
    quick = ["test_aaa_many", "test_zzz_many"]
    for name in quick:
        (tmp_path / f"{name}.py").write_text(
            "import pytest\n\n@pytest.mark.parametrize('i', range(12))\ndef test_quick(i):\n    pass\n")
    proc = _pytest(tmp_path, _make_test_options())
    ran = re.findall(r"PASSED (\w+)\.py::", proc.stdout)
    files = list(dict.fromkeys(ran))
    assert files == long_files + quick + last, files


def test_files_of_a_group_run_one_after_another(tmp_path):
    """Two files of an ONE_AT_A_TIME group, one slow test each, with make test's options on 2 workers:
    each records when it ran; the spans never overlap (xdist alone runs the two at once)."""
    _suite_hooks(tmp_path)
    group = ONE_AT_A_TIME[0][:2]
    for name in group:
        (tmp_path / f"{name}.py").write_text(
            "import pathlib, time\n\ndef test_slow():\n    start = time.time()\n    time.sleep(2)\n"
            "    pathlib.Path(__file__).with_suffix('.span').write_text(f'{start} {time.time()}')\n")
    (tmp_path / "test_zzz_other.py").write_text("def test_quick():\n    pass\n")
    _pytest(tmp_path, _make_test_options(workers=2))
    (a0, a1), (b0, b1) = ([float(t) for t in (tmp_path / f"{n}.span").read_text().split()] for n in group)
    assert a1 <= b0 or b1 <= a0, f"{group} ran at the same time: {a0:.1f}-{a1:.1f} and {b0:.1f}-{b1:.1f}"


def test_suite_cpu_counts_a_processs_cpu_to_the_test_file_its_test_process_ran_then():
    """bench/suite_cpu.py: a browser or server a test started is counted to that test's file, by
    the test process it descends from (a real child here) and the time its CPU was spent."""
    sys.path.insert(0, str(ROOT / "bench"))
    import suite_cpu
    from timeline import Run

    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])  # a grandchild too, as Chromium's are
    try:
        deadline = time.monotonic() + 10
        while not (grandchildren := [int(p) for p in subprocess.run(
                ["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout.split()]):
            assert time.monotonic() < deadline, "no grandchild started"
            time.sleep(0.05)
        assert suite_cpu._test_process_of(grandchildren[0], {os.getpid(): "gw1"}) == "gw1"
        assert suite_cpu._test_process_of(grandchildren[0], {child.pid + 10**6: "gw1"}) == ""
    finally:
        child.kill()
        child.wait()

    runs = [Run("gw0", 10.0, 20.0, "ok", 0, 0, "tests/test_a.py::x"),
            Run("gw0", 20.5, 30.0, "ok", 0, 0, "tests/test_b.py::y"),
            Run("gw1", 10.0, 30.0, "ok", 0, 0, "tests/test_c.py::z")]
    spent = [(15.0, "gw0", "chromium", 2.0), (15.0, "gw1", "chromium", 1.0), (25.0, "gw0", "streamlit servers", 3.0),
             (20.2, "gw0", "pytest workers", 0.5), (25.0, "gw0", "Ray", 4.0), (25.0, "", "mypy", 5.0)]
    by_file = suite_cpu.cpu_by_test_file(spent, runs)
    assert by_file == {"tests/test_a.py": {"chromium": 2.0}, "tests/test_c.py": {"chromium": 1.0},
                       "tests/test_b.py": {"streamlit servers": 3.0}, "gw0: between tests": {"pytest workers": 0.5},
                       suite_cpu.RAY_SCENARIO: {"Ray": 4.0}, "no test process's (the controller, lint)": {"mypy": 5.0}}


def test_suite_cpu_names_the_part_of_chromium_a_process_is():
    sys.path.insert(0, str(ROOT / "bench"))
    import suite_cpu

    shell = "/usr/bin/chromium-headless-shell"
    assert suite_cpu.chromium_type(f"{shell} --headless --no-sandbox --remote-debugging-pipe") == "browser"
    assert suite_cpu.chromium_type(f"{shell} --type=renderer --lang=en-US --renderer-client-id=7") == "renderer"
    assert suite_cpu.chromium_type(f"{shell} --type=utility --utility-sub-type=network.mojom.NetworkService "
                                   "--lang=en-US") == "utility (NetworkService)"
    assert suite_cpu.chromium_type(f"{shell} --type=gpu-process --disable-gpu") == "gpu-process"
