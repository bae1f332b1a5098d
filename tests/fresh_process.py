"""Code run in a new Python process, nothing of the tests' loaded: the way to check that a path of
the product (a form, a page's imports, a CLI answer) stays clear of the heavy libraries."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "pytorch_grad_cam", "timm", "fiftyone")


def run_python(code: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
               camcore_on_path: bool = True, timeout: float = 240) -> str:
    """`python -c code *args`'s stdout, checked to succeed. camcore_on_path: PYTHONPATH is the
    checkout (else unset: camcore only where the code itself finds it, as an App server's plugin)."""
    environ = {**os.environ, **(env or {})}
    if camcore_on_path:
        environ["PYTHONPATH"] = str(ROOT)
    else:
        environ.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
