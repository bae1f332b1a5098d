"""Where a command's CPU goes, by kind of process: `make test` by default (issue 26 item 7).

Every 2 s it reads each process's CPU ticks from /proc and adds what it used since the last look to
its kind (from its command line: Chromium, the Streamlit servers, the FiftyOne App's server, Ray,
mongod, the pytest workers, the fork servers' `python -c` children, ...), and the machine's busy
share from /proc/stat. Processes that end lose at most their last 2 s. Prints the table at the end,
with bench/machine_probe.py's timings from before and after the command (the host's cores are not
equally fast every day: compare whole runs at the same probe).

    .venv/bin/python bench/suite_cpu.py               # time make test, by kind
    .venv/bin/python bench/suite_cpu.py -- .venv/bin/python -m pytest -q tests/test_browser_explore.py

When the command ran the tests, it then also prints the test files that cost the most CPU, all of it:
each process is counted to the test process (xdist worker) it descends from (the browser, the
servers and jobs a test started), and that CPU at a time to the test file that process ran then
(tests/conftest.py's timeline, test-artifacts/timeline/); the Ray scenario, run beside the tests,
has a line of its own; every test's CPU by kind goes to test-artifacts/cpu_by_test.tsv. Chromium's
CPU is also split by its processes' parts (renderers, the GPU process that composites, the browser).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

from machine_probe import interpreter, line, probe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from timeline import TIMELINE, Run, read_runs  # noqa: E402

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


def chromium_type(cmdline: str) -> str:
    """A Chromium process's part: its --type= (renderer, gpu-process, utility with its sub-type,
    zygote...) or the browser itself."""
    flags = dict(part.split("=", 1) for part in cmdline.split(" ") if part.startswith("--") and "=" in part)
    if "--type" not in flags:
        return "browser"
    sub = flags.get("--utility-sub-type", "").rsplit(".", 1)[-1]
    return flags["--type"] + (f" ({sub})" if sub else "")


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


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _test_process_of(pid: int, workers: dict[int, str]) -> str:
    """The test process (gw0, ..., or main without xdist; `workers` by pid) that `pid` descends
    from, or "" (the xdist controller, Ray's daemons, lint)."""
    while pid > 1:
        if pid in workers:
            return workers[pid]
        try:
            pid = _parent(pid)
        except (OSError, ValueError, IndexError):
            return ""
    return ""


def _worker_pids() -> dict[int, str]:
    """The processes now running the tests, by pid (tests/conftest.py writes them)."""
    pids = {path.stem: path.read_text() for path in TIMELINE.glob("*.pid")}
    return {int(pid): name for name, pid in pids.items() if pid.isdigit()}  # one still being written: skipped


def _busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.by_kind: Counter = Counter()
        self.kinds: dict[tuple[int, str], str] = {}
        self.chromium: dict[tuple[int, str], str] = {}  # Chromium's processes: their part
        self.by_chromium_part: Counter = Counter()
        self.workers: dict[tuple[int, str], str] = {}
        self.worker_pids: dict[int, str] = {}
        self.spent: list[tuple[float, str, str, float]] = []  # (when, test process, kind, CPU-s)
        self.last = _procs()  # what ran before: not counted
        self.done = threading.Event()

    def kind(self, key: tuple[int, str]) -> str:
        if key not in self.kinds:
            try:
                with open(f"/proc/{key[0]}/cmdline") as f, open(f"/proc/{key[0]}/comm") as comm:
                    cmdline = f.read().replace("\0", " ")
                    self.kinds[key] = kind_of(cmdline, comm.read().strip())
                if self.kinds[key] == "chromium":
                    self.chromium[key] = chromium_type(cmdline)
            except OSError:
                self.kinds[key] = "(gone)"
        return self.kinds[key]

    def worker(self, key: tuple[int, str]) -> str:
        if not self.workers.get(key):  # none found is asked again: its worker may not have said yet
            self.workers[key] = _test_process_of(key[0], self.worker_pids)
        return self.workers[key]

    def sample(self) -> None:
        now, when, self.worker_pids = _procs(), time.time(), _worker_pids()
        for key, ticks in now.items():
            used = ticks - self.last.get(key, 0)
            if used and key[0] != os.getpid():
                self.by_kind[self.kind(key)] += used / HZ
                if key in self.chromium:
                    self.by_chromium_part[self.chromium[key]] += used / HZ
                self.spent.append((when - 1.0, self.worker(key), self.kind(key), used / HZ))
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
    print(f"   machine probe (CPU s, one thread, best of 3): before {line(before)}; after {line(probe())}"
          f" ({interpreter()})")
    processes = Counter(sampler.kinds.values())  # those seen using CPU
    for kind, cpu in sampler.by_kind.most_common():
        if cpu >= 0.5:
            print(f"{cpu:8.1f}  {kind}  ({processes[kind]} processes)")
    parts = Counter(sampler.chromium.values())
    print("   chromium by part: " + ", ".join(f"{part} {cpu:.0f} ({parts[part]})"
                                             for part, cpu in sampler.by_chromium_part.most_common() if cpu >= 0.5))
    print_by_test_file(sampler.spent)
    return code


RAY_SCENARIO = "tests/test_distributed.py's Ray scenario (beside the tests)"


def cpu_by_test_file(spent: list[tuple[float, str, str, float]], runs: list[Run],
                     name_of: Callable[[Run], str] = lambda run: run.file) -> dict[str, Counter]:
    """Each (when, test process, kind, CPU-s) counted to the test file (or, with ``name_of``, the
    test) that process ran then."""
    by_worker: dict[str, list[Run]] = {}
    for run in runs:
        by_worker.setdefault(run.worker, []).append(run)
    by_file: dict[str, Counter] = {}
    for when, worker, kind, cpu in spent:
        test = next((name_of(r) for r in by_worker.get(worker, ()) if r.start <= when <= r.end), None)
        if kind == "Ray":  # the first worker starts it at collection; it runs beside the other tests
            name = RAY_SCENARIO
        else:
            name = test or (f"{worker}: between tests" if worker else "no test process's (the controller, lint)")
        by_file.setdefault(name, Counter())[kind] += cpu
    return by_file


def print_by_test_file(spent: list[tuple[float, str, str, float]], top: int = 30) -> None:
    """Each test file's CPU, all of it: its test process's and that process's children's while it ran;
    then the single tests that cost the most."""
    if not TIMELINE.is_dir():
        return
    runs = read_runs()
    by_test = cpu_by_test_file(spent, runs, lambda run: run.nodeid)
    with open(TIMELINE.parent / "cpu_by_test.tsv", "w") as out:  # every test's CPU by kind, for a closer look
        out.writelines(f"{name}\t{kind}\t{cpu:.2f}\n" for name, kinds in by_test.items() for kind, cpu in kinds.items())
    by_file = cpu_by_test_file(spent, runs)
    for what, by_name, count in (("test files", by_file, top), ("tests", by_test, 20)):
        counted = sum(sum(c.values()) for c in by_name.values())
        print(f"\n== the {count} {what} that cost the most CPU ({counted:.0f} CPU-s counted), with their top kinds:")
        for name, kinds in sorted(by_name.items(), key=lambda item: -sum(item[1].values()))[:count]:
            parts = ", ".join(f"{kind} {cpu:.0f}" for kind, cpu in kinds.most_common(3))
            print(f"{sum(kinds.values()):8.1f}  {name}  ({parts})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
