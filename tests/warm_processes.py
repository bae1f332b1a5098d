"""Real Python processes for the tests, forked from one process per test process that imported
torch, torchvision, grad-cam, FiftyOne and camcore once (issue 26 item 7).

Each cold start of a process that imports those costs 4-10 s of CPU. One warm process per test
process (`warm_base()`, started at its first use) forks every such process the tests ask for:
- ForkServer.run: a script (`python -c code *args`) in a process of its own, waited for, as a test that
  needs another process (its own pid, database connection and memory; the CLI run as a user would:
  CLI) or one that kills itself;
- WarmPool: `size` processes serving jobs over a Unix socket, all ready before any job is sent, so
  that writers racing on one dataset can start at one moment;
- start_streamlit: a `streamlit run` server for the browser tests (tests/server_forks.py).
One process instead of one per kind: each of them cost a test process another 4-10 s of CPU.
FiftyOne opens its database connection lazily, so no MongoClient crosses a fork; a forked child is a
real process (os._exit kills it as a SIGKILL would, no finally block runs).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The test session's environment (tests/conftest.py has set the database and the home before any test
# module is imported): the warm process starts with it, whichever test first asks for it.
_SESSION_ENV = dict(os.environ)

_BASE = textwrap.dedent(
    """
    import contextlib, gc, io, json, os, signal, socket, sys, traceback


    def name(title):  # the process's name: bench/suite_cpu.py counts each kind's CPU by it
        try:
            with open("/proc/self/comm", "w") as comm:
                comm.write(title)
        except OSError:
            pass


    name("cam-warm")
    sys.path[:0] = [os.environ["ROOT"], os.environ["ROOT"] + "/tests"]
    import torch, torchvision, pytorch_grad_cam, fiftyone  # noqa: F401,E401  the costly imports, once
    import fo_helpers  # noqa: F401
    from camcore import store  # noqa: F401
    from camcore.store import heatmaps, sampledocs  # noqa: F401
    import camcore.batch, camcore.cli, camcore.engine, camcore.models  # noqa: F401,E401  what the CLI's jobs use

    assert fiftyone.core.odm.database._client is None, "a database connection before the fork"
    gc.collect()
    gc.freeze()  # the children's collections skip the imports' ~600k objects (else each walks, and so copies, them all)
    detached = set()  # the servers and pool processes this process forked and did not wait for


    def reap(signum=None, frame=None):  # one ended: waited for, so that its CPU counts as this process's children's
        for pid in list(detached):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    detached.discard(pid)
            except ChildProcessError:
                detached.discard(pid)


    def quiet_stdin():
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)


    def to_files(out, err, mode):
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, mode, 0o644), fd)
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)


    def run(job):  # a script, as `python -c`: its stdout and stderr go to the job's files
        to_files(job["stdout"], job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.environ.update(job["env"])
        if job["cwd"]:
            os.chdir(job["cwd"])
        sys.argv = ["-c", *job["args"]]
        try:
            exec(compile(job["code"], "<job>", "exec"), {"__name__": "__main__"})
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            return 1
        return 0


    def streamlit(job):  # `streamlit run` as its CLI runs it; Streamlit and the app's pages are imported now
        to_files(job["log"], job["log"], os.O_WRONLY | os.O_APPEND)
        os.environ.clear()
        os.environ.update(job["env"])
        os.chdir(job["cwd"])
        sys.argv = ["streamlit", *job["args"]]
        from streamlit.web.cli import main

        try:
            main(prog_name="streamlit")
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        return 0


    def pool_member(job):  # serves jobs over the pool's socket until the test closes it
        os.dup2(2, 1)  # never into this process's replies
        sys.stdout = open(1, "w", closefd=False)
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(job["socket"])
        reply = conn.makefile("rw")
        for line in reply:
            work = json.loads(line)
            os.environ.update(work["env"])
            sys.argv = ["-c", work["arg"]]
            out, error = io.StringIO(), ""
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(work["code"], "<job>", "exec"), {"__name__": "__main__"})
            except BaseException:
                error = traceback.format_exc()
            reply.write(json.dumps({"out": out.getvalue(), "error": error}) + "\\n")
            reply.flush()
        return 0


    KINDS = {"run": run, "streamlit": streamlit, "pool": pool_member}
    signal.signal(signal.SIGCHLD, reap)
    replies = sys.stdout
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pids = []
        for _ in range(job.get("count", 1)):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    name("cam-" + job["kind"])
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for processes of its own
                    quiet_stdin()
                    code = KINDS[job["kind"]](job)
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)  # never this process's atexit handlers or buffers
            pids.append(pid)
        if job["kind"] == "run":
            _, status = os.waitpid(pids[0], 0)
            print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=replies, flush=True)
        else:
            detached.update(pids)
            reap()  # one that ended before it was listed
            print(json.dumps({"pids": pids}), file=replies, flush=True)
    """
)

# What torch, torchvision, FiftyOne and grad-cam may read at import: a server forked from a process
# that saw other values would run with the wrong ones.
_IMPORT_ENV = ("FIFTYONE_", "TORCH", "OMP_", "MKL_", "OPENBLAS_", "CUDA", "PYTORCH_")
# Not settings read at import: what the libraries write for themselves (FiftyOne the notebook context it
# found, none here; torch's inductor its default cache folder, when first asked for it) and TORCH_HOME,
# which torch reads when weights load.
_NOT_IMPORT_SETTINGS = ("FIFTYONE_CONTEXT", "TORCHINDUCTOR_CACHE_DIR", "TORCH_HOME")


def import_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_IMPORT_ENV) and k not in _NOT_IMPORT_SETTINGS}


class _WarmBase:
    """The test process's warm process: one request at a time (a lock: tests ask from threads too)."""

    def __init__(self):
        env = {**_SESSION_ENV, "ROOT": str(ROOT)}
        self.import_env = import_env(env)
        self.proc = subprocess.Popen([sys.executable, "-c", _BASE], env=env, cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.strip() == "ready", f"the warm process did not start (exit {self.proc.poll()})"

    def ask(self, job: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        assert line, f"the warm process died (exit {self.proc.poll()})"
        return json.loads(line)

    def close(self) -> None:
        """Its stdin closed, it exits (else killed after 30 s)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_bases: list[_WarmBase] = []


def warm_base() -> _WarmBase:
    """This test process's warm process, started at the first call."""
    if not _bases:
        _bases.append(_WarmBase())
        atexit.register(close)
    return _bases[0]


def close() -> None:
    """Stop the warm process (tests/conftest.py, at the end of the test process: waited for, the CPU
    of the servers and processes it forked then counts in the test process's children's)."""
    while _bases:
        _bases.pop().close()


class ForkedProcess:
    """The part of subprocess.Popen that the tests use, for a process that is not our child (its exit
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


def start_streamlit(args: list[str], env: dict[str, str], log: Path) -> ForkedProcess:
    """`streamlit <args>` in ROOT with exactly `env`, its output appended to `log`, forked."""
    return ForkedProcess(warm_base().ask({"kind": "streamlit", "args": args, "env": env, "cwd": str(ROOT),
                                          "log": str(log)})["pids"][0])


@dataclass(frozen=True)
class Outcome:
    out: str  # what the job printed
    error: str  # the traceback, "" when the job ran to its end


class WarmPool:
    """`size` processes; run(code, args, env) gives job i to process i, all at once (send, then collect)."""

    def __init__(self, size: int, timeout: float = 120.0):
        self.folder = Path(tempfile.mkdtemp(prefix="warm-pool-"))
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.folder / "jobs"))
        listener.listen(size)
        listener.settimeout(timeout)
        self.conns = []
        self.members: list[ForkedProcess] = []
        try:
            pids = warm_base().ask({"kind": "pool", "count": size, "socket": str(self.folder / "jobs")})["pids"]
            self.members = [ForkedProcess(pid) for pid in pids]
            for _ in range(size):  # all connected before the first job
                conn, _ = listener.accept()
                self.conns.append(conn.makefile("rw"))
        except OSError as exc:
            self.close()
            raise AssertionError(f"a warm process did not start: {exc}") from exc
        finally:
            listener.close()

    def run(self, code: str, args: list[str], env: dict[str, str]) -> list[Outcome]:
        self.send(code, args, env)
        return self.collect(len(args))

    def send(self, code: str, args: list[str], env: dict[str, str]) -> None:
        """Start job i on process i, all at once; collect() waits for them (the test acts meanwhile)."""
        assert len(args) <= len(self.conns), "more jobs than processes"
        # sent before any reply is read: they run together
        for conn, arg in zip(self.conns[: len(args)], args, strict=True):
            conn.write(json.dumps({"code": code, "arg": arg, "env": env}) + "\n")
            conn.flush()

    def collect(self, count: int) -> list[Outcome]:
        """The outcomes of the jobs that send() started on the first `count` processes."""
        outcomes = []
        for conn, member in zip(self.conns[:count], self.members, strict=False):
            line = conn.readline()
            assert line, f"a warm process died during its job (pid {member.pid})"
            outcomes.append(Outcome(**json.loads(line)))
        return outcomes

    def close(self) -> None:
        for conn in self.conns:
            conn.close()  # its process's loop ends: it exits
        for member in self.members:
            try:
                member.wait(timeout=30)
            except subprocess.TimeoutExpired:
                member.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


# `python -m camcore *args` as a ForkServer job: the CLI's own entry point, in a process of its own.
CLI = "import runpy, sys\nsys.argv[0] = 'camcore'\nrunpy.run_module('camcore', run_name='__main__', alter_sys=True)\n"


class ForkServer:
    """run(code, args, env, cwd) runs `code` as a script (`python -c code *args`) in a fresh process
    forked from the warm process: for a test that needs another process, not a cold start, and for
    jobs that kill themselves, which a WarmPool would lose a process to. One job at a time;
    tests/conftest.py's `fork_server` is one per test process; its jobs' output goes to `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.jobs = 0
        warm_base()  # started now, not in the first job's time

    def run(self, code: str, args: list[str], env: dict[str, str], cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
        self.jobs += 1
        out, err = self.workdir / f"job{self.jobs}.out", self.workdir / f"job{self.jobs}.err"
        done = warm_base().ask({"kind": "run", "code": code, "args": args, "env": env,
                                "cwd": str(cwd) if cwd else None, "stdout": str(out), "stderr": str(err)})
        return subprocess.CompletedProcess(["-c", *args], done["returncode"], out.read_text(), err.read_text())

    def close(self) -> None:
        """Nothing of its own to stop: the warm process serves the whole test process."""
