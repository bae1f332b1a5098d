"""Real Python processes, started once with FiftyOne and camcore imported, that run test scripts.

Each start of a process that imports fiftyone and torch costs 3-6 s of CPU; tests that race
several processes on one dataset share one pool instead of starting their own (issue 26 item 7).
A job is a script (run with `exec`, its environment and argv[1] set) and returns what it printed;
a pool's processes are all ready before any job is sent, so a shared start time can be near.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SERVE = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, traceback
    sys.path[:0] = [os.environ["ROOT"], os.environ["ROOT"] + "/tests"]
    import fiftyone  # noqa: F401  the costly imports, once per process
    import fo_helpers  # noqa: F401
    from camcore import store  # noqa: F401

    reply = sys.stdout
    print("ready", file=reply, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        os.environ.update(job["env"])
        sys.argv = ["-c", job["arg"]]
        out, error = io.StringIO(), ""
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(job["code"], "<job>", "exec"), {"__name__": "__main__"})
        except BaseException:
            error = traceback.format_exc()
        print(json.dumps({"out": out.getvalue(), "error": error}), file=reply, flush=True)
    """
)


@dataclass(frozen=True)
class Outcome:
    out: str  # what the job printed
    error: str  # the traceback, "" when the job ran to its end


class WarmPool:
    """`size` processes; run(code, args, env) gives job i to process i, all at once."""

    def __init__(self, size: int):
        env = {**os.environ, "ROOT": str(ROOT)}
        self.procs = [subprocess.Popen([sys.executable, "-c", _SERVE], env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(size)]
        for p in self.procs:  # imports done everywhere before the first job
            line = p.stdout.readline() if p.stdout else ""
            assert line.strip() == "ready", f"a warm process did not start (exit {p.poll()})"

    def run(self, code: str, args: list[str], env: dict[str, str]) -> list[Outcome]:
        assert len(args) <= len(self.procs), "more jobs than processes"
        used = self.procs[: len(args)]
        for p, arg in zip(used, args, strict=True):  # sent before any reply is read: they run together
            assert p.stdin is not None
            p.stdin.write(json.dumps({"code": code, "arg": arg, "env": env}) + "\n")
            p.stdin.flush()
        outcomes = []
        for p in used:
            line = p.stdout.readline() if p.stdout else ""
            assert line, f"a warm process died during its job (exit {p.poll()})"
            outcomes.append(Outcome(**json.loads(line)))
        return outcomes

    def close(self) -> None:
        for p in self.procs:
            if p.stdin:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
