"""Which test files ran side by side in the last run (issue 26 item 7): read the per-worker timeline
that tests/conftest.py writes to test-artifacts/timeline/ and print each file's span per worker, then,
for every failed test (or the tests named on the command line), what ran on the other workers meanwhile.

    .venv/bin/python tests/timeline.py [NODEID_PART ...]
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

TIMELINE = Path(__file__).resolve().parents[1] / "test-artifacts" / "timeline"


@dataclass(frozen=True)
class Run:
    worker: str
    start: float
    end: float
    outcome: str
    cpu: float  # the worker's own CPU seconds
    child_cpu: float  # CPU seconds of the processes it started and waited for
    nodeid: str

    @property
    def file(self) -> str:
        return self.nodeid.split("::", 1)[0]


def read_runs(folder: Path = TIMELINE) -> list[Run]:
    runs = []
    for path in sorted(folder.glob("*.tsv")):
        for line in path.read_text().splitlines():
            worker, start, end, outcome, cpu, child_cpu, nodeid = line.split("\t", 6)
            runs.append(Run(worker, float(start), float(end), outcome, float(cpu), float(child_cpu), nodeid))
    return sorted(runs, key=lambda r: r.start)


def file_spans(runs: list[Run]) -> list[tuple[str, str, float, float, float, float]]:
    """(worker, file, first start, last end, own CPU s, children's CPU s), in order of start."""
    spans: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        span = spans.setdefault((r.worker, r.file), [r.start, r.end, 0.0, 0.0])
        span[:] = min(span[0], r.start), max(span[1], r.end), span[2] + r.cpu, span[3] + r.child_cpu
    return sorted(((w, f, *span) for (w, f), span in spans.items()), key=lambda t: t[2])


def beside(runs: list[Run], target: Run) -> list[tuple[str, float]]:
    """Files on other workers that overlapped `target`, with the seconds of overlap."""
    overlap: dict[str, float] = {}
    for r in runs:
        if r.worker != target.worker:
            both = min(r.end, target.end) - max(r.start, target.start)
            if both > 0:
                overlap[f"{r.worker} {r.file}"] = overlap.get(f"{r.worker} {r.file}", 0.0) + both
    return sorted(overlap.items(), key=lambda kv: -kv[1])


def print_servers(folder: Path = TIMELINE / "servers") -> None:
    """Each `streamlit run` server the browser tests started: CPU s at health and in all, its life."""
    lines = [line.split("\t") for path in sorted(folder.glob("*.tsv")) for line in path.read_text().splitlines()]
    if lines:
        print("\nworker  start-cpu  cpu  alive  server log  (modules served)")
    for worker, startup, total, alive, log, modules in lines:
        print(f"{worker:6} {float(startup):9.1f} {float(total):5.0f} {float(alive):6.0f}  {log}  ({modules})")
    if lines:
        print(f"{len(lines)} servers, {sum(float(x[2]) for x in lines):.0f} s CPU")


def main(names: list[str]) -> None:
    runs = read_runs()
    if not runs:
        sys.exit(f"no timeline in {TIMELINE}: run the tests first")
    t0 = runs[0].start
    print("worker  start    end   secs   cpu  kids  file")
    for worker, file, start, end, cpu, kids in file_spans(runs):
        print(f"{worker:6} {start - t0:6.0f} {end - t0:6.0f} {end - start:6.0f} {cpu:5.0f} {kids:5.0f}  {file}")
    print_servers()
    picked = [r for r in runs if (any(n in r.nodeid for n in names) if names else r.outcome == "failed")]
    for r in picked:
        print(f"\n{r.outcome} {r.nodeid} ({r.worker}, {r.start - t0:.0f}-{r.end - t0:.0f} s) beside:")
        for name, secs in beside(runs, r):
            print(f"  {secs:6.0f} s  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
