"""Real Python processes, started once with FiftyOne and camcore imported, that run test scripts.

Each start of a process that imports fiftyone and torch costs 3-6 s of CPU; tests that race
several processes on one dataset share one pool instead of starting their own, and the pool's
processes are forked from one that did the imports, once (issue 26 item 7).
A job is a script (run with `exec`, its environment and argv[1] set) and returns what it printed;
a pool's processes are all ready before any job is sent, so a shared start time can be near.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One process imports FiftyOne, torch and camcore once, then forks the pool's processes: real processes
# of their own (pid, database connection: FiftyOne connects lazily, so no MongoClient crosses the fork;
# lease owner: camcore.store.leases renews it in a forked child), each serving jobs over a Unix socket.
_SERVE = textwrap.dedent(
    """
    import contextlib, gc, io, json, os, socket, sys, traceback
    sys.path[:0] = [os.environ["ROOT"], os.environ["ROOT"] + "/tests"]
    import fiftyone  # noqa: F401  the costly imports, once for the whole pool
    import fo_helpers  # noqa: F401
    from camcore import store  # noqa: F401

    assert fiftyone.core.odm.database._client is None, "a database connection before the fork"
    gc.collect()
    gc.freeze()  # the children's collections skip the imports' ~600k objects (else each walks, and so copies, them all)


    def serve(reply):
        for line in reply:
            job = json.loads(line)
            os.environ.update(job["env"])
            sys.argv = ["-c", job["arg"]]
            out, error = io.StringIO(), ""
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(job["code"], "<job>", "exec"), {"__name__": "__main__"})
            except BaseException:
                error = traceback.format_exc()
            reply.write(json.dumps({"out": out.getvalue(), "error": error}) + "\\n")
            reply.flush()


    children = []
    for _ in range(int(sys.argv[2])):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                conn = socket.socket(socket.AF_UNIX)
                conn.connect(sys.argv[1])
                serve(conn.makefile("rw"))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    """
)


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
        self.server = subprocess.Popen([sys.executable, "-c", _SERVE, str(self.folder / "jobs"), str(size)],
                                       env={**os.environ, "ROOT": str(ROOT)})
        self.conns = []
        try:
            for _ in range(size):  # imports done (once) before the first job
                conn, _ = listener.accept()
                self.conns.append(conn.makefile("rw"))
        except OSError as exc:
            self.close()
            raise AssertionError(f"a warm process did not start (exit {self.server.poll()}): {exc}") from exc
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
        for conn in self.conns[:count]:
            line = conn.readline()
            assert line, f"a warm process died during its job (its server: exit {self.server.poll()})"
            outcomes.append(Outcome(**json.loads(line)))
        return outcomes

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


# A fork server: the imports are paid once; each job runs in a child forked from it, a real process
# of its own (its own pid and exit status; os._exit kills it as a SIGKILL would, no finally block
# runs). FiftyOne opens its database connection lazily, so no MongoClient crosses a fork.
_FORK_SERVE = textwrap.dedent(
    """
    import gc, json, os, sys, traceback
    sys.path[:0] = [os.environ["ROOT"], os.environ["ROOT"] + "/tests"]
    import fiftyone  # noqa: F401  the costly imports, once
    import fo_helpers  # noqa: F401
    from camcore import store  # noqa: F401
    from camcore.store import heatmaps, sampledocs  # noqa: F401
    import camcore.batch, camcore.cli, camcore.engine, camcore.models  # noqa: F401,E401  what the CLI's jobs use

    assert fiftyone.core.odm.database._client is None, "a database connection before the fork"
    gc.collect()
    gc.freeze()  # the children's collections skip the imports' ~600k objects (else each walks, and so copies, them all)
    reply = sys.stdout
    print("ready", file=reply, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the job's process: its stdout and stderr go to the job's files
            code = 1
            try:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                os.environ.update(job["env"])
                if job["cwd"]:
                    os.chdir(job["cwd"])
                sys.argv = ["-c", *job["args"]]
                try:
                    exec(compile(job["code"], "<job>", "exec"), {"__name__": "__main__"})
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # never the server's atexit handlers or buffers
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=reply, flush=True)
    """
)


# `python -m camcore *args` as a ForkServer job: the CLI's own entry point, in a process of its own.
CLI = "import runpy, sys\nsys.argv[0] = 'camcore'\nrunpy.run_module('camcore', run_name='__main__', alter_sys=True)\n"


class ForkServer:
    """run(code, args, env, cwd) runs `code` as a script (`python -c code *args`) in a fresh process
    forked from one that has FiftyOne, torch and camcore imported: for a test that needs another
    process (its own pid, database connection and memory; the CLI run as a user would: CLI), not a
    cold start, and for jobs that kill themselves, which a WarmPool would lose a process to. One job
    at a time; tests/conftest.py's `fork_server` is one per test process."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.jobs = 0
        self.proc = subprocess.Popen([sys.executable, "-c", _FORK_SERVE], env={**os.environ, "ROOT": str(ROOT)},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.strip() == "ready", f"the fork server did not start (exit {self.proc.poll()})"

    def run(self, code: str, args: list[str], env: dict[str, str], cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
        self.jobs += 1
        out, err = self.workdir / f"job{self.jobs}.out", self.workdir / f"job{self.jobs}.err"
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"code": code, "args": args, "env": env, "cwd": str(cwd) if cwd else None,
                                          "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the fork server died (exit {self.proc.poll()})"
        return subprocess.CompletedProcess(["-c", *args], json.loads(line)["returncode"],
                                           out.read_text(), err.read_text())

    def close(self) -> None:
        close_line_server(self.proc)


def close_line_server(proc: subprocess.Popen) -> None:
    """End a server that reads one request a line from its stdin: its stdin closed, it exits (else
    killed after 30 s)."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
