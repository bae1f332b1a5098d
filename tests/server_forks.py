"""`streamlit run app.py` for the browser tests, forked from a process that imported torch,
torchvision, FiftyOne and grad-cam once (issue 26 item 7): each cold start paid ~7 s of CPU for those
imports at its first page. Streamlit itself and the app's own modules are imported in the server, after
the fork, as `streamlit run` does: every server is a fresh Streamlit runtime (its first request, its
page discovery, its caches), only the heavy libraries are warm.

A server is started cold instead when the environment those libraries read at import (FIFTYONE_*,
TORCH_*, the thread counts) differs from the one the forking process started with.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from warm_processes import close_line_server

ROOT = Path(__file__).resolve().parents[1]

_FORKS = textwrap.dedent(
    """
    import gc, json, os, signal, sys
    import torch, torchvision, fiftyone, pytorch_grad_cam  # noqa: F401,E401  the costly imports, once

    assert fiftyone.core.odm.database._client is None, "a database connection before the fork"
    gc.collect()
    gc.freeze()  # the children's collections skip the imports' ~600k objects (else each walks, and so copies, them all)


    def reap(signum, frame):  # a server ended: waited for, so that its CPU counts as this process's children's
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


    signal.signal(signal.SIGCHLD, reap)
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the server: `streamlit run` as its CLI runs it
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for processes of its own
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                log = os.open(job["log"], os.O_WRONLY | os.O_APPEND)
                os.dup2(log, 1)
                os.dup2(log, 2)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                os.environ.clear()
                os.environ.update(job["env"])
                os.chdir(job["cwd"])
                sys.argv = ["streamlit", *job["args"]]
                from streamlit.web.cli import main

                try:
                    main(prog_name="streamlit")
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    """
)

# What torch, torchvision, FiftyOne and grad-cam may read at import: a server forked from a process that
# saw other values would run with the wrong ones.
_IMPORT_ENV = ("FIFTYONE_", "TORCH", "OMP_", "MKL_", "OPENBLAS_", "CUDA", "PYTORCH_")


def _import_env(env: dict[str, str]) -> dict[str, str]:
    # FIFTYONE_CONTEXT is what FiftyOne's import wrote (the notebook it found, none here), not a setting
    return {k: v for k, v in env.items() if k.startswith(_IMPORT_ENV) and k != "FIFTYONE_CONTEXT"}


class ForkedProcess:
    """The part of subprocess.Popen that the tests use, for a server that is not our child (its exit
    status is not known: poll() and wait() give -1 once it is gone)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in ("gone", "Z", "X"):
                self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.05)  # polling a process's end
        return -1

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Forks:
    def __init__(self, env: dict[str, str]):
        self.env = _import_env(env)
        self.proc = subprocess.Popen([sys.executable, "-c", _FORKS], env=env, cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.strip() == "ready", f"the streamlit fork server did not start (exit {self.proc.poll()})"

    def start(self, args: list[str], env: dict[str, str], log: Path) -> ForkedProcess:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"args": args, "env": env, "cwd": str(ROOT), "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the streamlit fork server died (exit {self.proc.poll()})"
        return ForkedProcess(json.loads(line)["pid"])

    def close(self) -> None:
        close_line_server(self.proc)


_forks: list[_Forks] = []  # one per test process, started by the first server


def close() -> None:
    """Stop the forking process (tests/conftest.py, at the end of the test process: waited for, its
    servers' CPU then counts in the test process's children's)."""
    while _forks:
        _forks.pop().close()


def start_server(args: list[str], env: dict[str, str], log: Path) -> ForkedProcess | subprocess.Popen:
    """`streamlit <args>` in ROOT with `env`, its output appended to `log`: forked when the import
    environment matches the forking process's, else a cold `python -m streamlit`."""
    if not _forks:
        _forks.append(_Forks(env))
        atexit.register(close)
    if _import_env(env) == _forks[0].env:
        return _forks[0].start(args, env, log)
    python = ROOT / ".venv" / "bin" / "python"
    with open(log, "ab") as out:
        return subprocess.Popen([str(python if python.exists() else sys.executable), "-m", "streamlit", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
