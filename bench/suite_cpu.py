"""Where a command's CPU goes, by kind of process: `make test` by default (issue 26 item 7).

Every 2 s it reads each process's CPU ticks from /proc and adds what it used since the last look to
its kind (from its command line: Chromium, the Streamlit servers, the FiftyOne App's server, Ray,
mongod, the pytest workers, the fork servers' `python -c` children, ...), and the machine's busy
share from /proc/stat. Processes that end lose at most their last 2 s. Prints the table at the end,
with bench/machine_probe.py's timings from before and after the command (the host's cores are not
equally fast every day: compare whole runs at the same probe).

    .venv/bin/python bench/suite_cpu.py               # time make test, by kind
    .venv/bin/python bench/suite_cpu.py -- .venv/bin/python -m pytest -q tests/test_browser_explore.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter

from machine_probe import line, probe

HZ = os.sysconf("SC_CLK_TCK")
KINDS = (  # first match wins: (kind, what its command line holds)
    ("chromium", "chrom"),
    ("mongod", "mongod"),
    ("playwright driver (node)", "playwright/driver"),
    ("streamlit servers", "streamlit"),
    ("FiftyOne App servers", "main.py --port"),
    ("mypy", "mypy"),
    ("ruff", "ruff"),
    ("Ray", "ray"),
    ("pytest workers", "exec(eval(sys.stdin"),
    ("fork servers' processes (python -c)", "python -c"),
    ("python -m camcore", "-m camcore"),
    ("fiftyone delegated (make worker)", "fiftyone delegated"),
    ("pytest (controller)", "pytest"),
)


# The tests' warm process (tests/warm_processes.py) and what it forks name themselves (/proc/PID/comm).
FORKED = "the tests' forked processes (jobs, pools)"
NAMED = {"cam-warm": "the tests' warm processes (their imports)", "cam-streamlit": "streamlit servers",
         "cam-run": FORKED, "cam-pool": FORKED}


def kind_of(cmdline: str, name: str = "") -> str:
    if name in NAMED:
        return NAMED[name]
    for kind, mark in KINDS:
        if mark in cmdline:
            return kind
    return cmdline.split(" ", 1)[0].rsplit("/", 1)[-1][:30] or "(kernel or unnamed)"


def _procs() -> dict[tuple[int, str], int]:
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                out[int(pid), rest[19]] = int(rest[11]) + int(rest[12])  # utime + stime; key: pid, start
            except (OSError, IndexError):
                pass
    return out


def _busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.by_kind: Counter = Counter()
        self.kinds: dict[tuple[int, str], str] = {}
        self.last = _procs()  # what ran before: not counted
        self.done = threading.Event()

    def kind(self, key: tuple[int, str]) -> str:
        if key not in self.kinds:
            try:
                with open(f"/proc/{key[0]}/cmdline") as f, open(f"/proc/{key[0]}/comm") as comm:
                    self.kinds[key] = kind_of(f.read().replace("\0", " "), comm.read().strip())
            except OSError:
                self.kinds[key] = "(gone)"
        return self.kinds[key]

    def sample(self) -> None:
        now = _procs()
        for key, ticks in now.items():
            used = ticks - self.last.get(key, 0)
            if used and key[0] != os.getpid():
                self.by_kind[self.kind(key)] += used / HZ
        self.last = now

    def run(self) -> None:
        while not self.done.wait(2.0):
            self.sample()


def main(argv: list[str]) -> int:
    cmd = argv[argv.index("--") + 1:] if "--" in argv else ["make", "test"]
    before = probe()
    sampler = Sampler()
    busy0, start = _busy(), time.monotonic()
    sampler.start()
    code = subprocess.call(cmd)
    sampler.done.set()
    sampler.join()
    sampler.sample()
    wall = time.monotonic() - start
    busy1 = _busy()
    total = sum(sampler.by_kind.values())
    busy = 100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
    print(f"\n== CPU by kind of process, `{' '.join(cmd)}` (exit {code}): {wall:.0f} s wall, {total:.0f} CPU-s, "
          f"the machine {busy:.0f}% busy on {os.cpu_count()} cores")
    print(f"   machine probe (CPU s, one thread, best of 3): before {line(before)}; after {line(probe())}")
    for kind, cpu in sampler.by_kind.most_common():
        if cpu >= 0.5:
            print(f"{cpu:8.1f}  {kind}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
