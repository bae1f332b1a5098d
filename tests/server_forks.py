"""`streamlit run app.py` for the browser tests, forked from the test process's warm process
(tests/warm_processes.py: torch, torchvision, grad-cam, FiftyOne and camcore imported once; issue 26
item 7): each cold start paid ~9 s of CPU for those imports at its first page. Streamlit itself and
the app's pages and ui modules are imported in the server, after the fork, as `streamlit run` does:
every server is a fresh Streamlit runtime (its first request, its page discovery, its caches), only
the libraries and camcore (which reads no setting at import) are warm.

A server is started cold instead when the environment those libraries read at import (FIFTYONE_*,
TORCH_*, the thread counts) differs from the one the warm process started with.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from warm_processes import ForkedProcess, import_env, start_streamlit, warm_base

ROOT = Path(__file__).resolve().parents[1]


def start_server(args: list[str], env: dict[str, str], log: Path) -> ForkedProcess | subprocess.Popen:
    """`streamlit <args>` in ROOT with `env`, its output appended to `log`: forked from the test
    process's warm process when the import environment matches its, else a cold `python -m streamlit`."""
    wanted, warm = import_env(env), warm_base().import_env
    if wanted == warm:
        return start_streamlit(args, env, log)
    python = ROOT / ".venv" / "bin" / "python"
    with open(log, "ab") as out:
        differ = sorted(k for k in wanted.keys() | warm.keys() if wanted.get(k) != warm.get(k))
        out.write(f"(a cold start: {', '.join(differ)} differ from the warm process's)\n".encode())
        return subprocess.Popen([str(python if python.exists() else sys.executable), "-m", "streamlit", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
