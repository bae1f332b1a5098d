"""make test's pytest options hand the test files out in tests/conftest.py's LONG_FIRST order (issue 26
item 7): a long file handed out last runs alone at the end while the other workers idle."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import LONG_FIRST

ROOT = Path(__file__).resolve().parents[1]


def _make_test_options() -> list[str]:
    """The options `make test` gives pytest (read from the Makefile), for one worker."""
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if "-m pytest" in ln)
    return shlex.split(line.split("-m pytest", 1)[1].replace("$(TEST_WORKERS)", "1"))


def test_make_test_starts_the_long_files_first(tmp_path):
    """Three one-test files from LONG_FIRST beside two files of many quick tests, run with make
    test's options in one worker: the long files run first, in LONG_FIRST's order (xdist's default
    would run the files with the most tests first)."""
    suite_conftest = ROOT / "tests" / "conftest.py"
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(suite_conftest)!r})\n"
        "suite = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(suite)\n"
        "pytest_collection_modifyitems = suite.pytest_collection_modifyitems  # only the ordering hook\n")
    long_files = list(LONG_FIRST[:3])
    for name in long_files:
        (tmp_path / f"{name}.py").write_text("def test_long():\n    pass\n")
    quick = ["test_aaa_many", "test_zzz_many"]
    for name in quick:
        (tmp_path / f"{name}.py").write_text(
            "import pytest\n\n@pytest.mark.parametrize('i', range(12))\ndef test_quick(i):\n    pass\n")
    options = [o for o in _make_test_options() if not o.startswith("--durations")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--rootdir",
                           str(tmp_path), *options, str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"PASSED (\w+)\.py::", proc.stdout)
    files = list(dict.fromkeys(ran))
    assert files == long_files + quick, files
