"""How fast this machine's cores are right now: a fixed piece of work, timed (issue 26 item 7).

The same `make test` took 9:20 one day and 13:24 another on this 2-core VM (1096 vs 1502 CPU-s by
bench/suite_cpu.py, every kind of process ~1.37x): the host's cores, not the code. A whole run's
time means little without the machine's speed beside it, so bench/suite_cpu.py runs this before and
after the suite. Two parts, each the best of three (the least disturbed), one thread:
- python: interpreted code (dicts, strings, a loop), as in the servers and the tests themselves;
- torch: a small conv net's forward, as in the maps the tests compute.

    .venv/bin/python bench/machine_probe.py
"""
from __future__ import annotations

import os
import platform
import sys
import time


def _python_work() -> None:
    seen: dict[str, int] = {}
    for i in range(3_000_000):
        key = f"k{i % 997}"
        seen[key] = seen.get(key, 0) + i


def _torch_work() -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(*(torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)))
    x = torch.randn(4, 32, 64, 64)
    with torch.no_grad():
        for _ in range(20):
            net(x)


def _best_of(work, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return min(times)


def probe() -> dict[str, float]:
    """CPU seconds for each fixed piece of work (smaller is faster), on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"python": _best_of(_python_work), "torch": _best_of(_torch_work)}
    finally:
        torch.set_num_threads(threads)


def line(result: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.items())


def interpreter() -> str:
    """Which Python ran the probe: its python part read 18 % less on Debian's optimised build than
    on pyenv's default one, on the same host (bench/interpreter.py), so compare it per interpreter."""
    return f"Python {platform.python_version()} at {os.path.realpath(sys.executable)}"


if __name__ == "__main__":
    print(f"machine probe (CPU s, one thread, best of 3): {line(probe())} ({interpreter()})")
