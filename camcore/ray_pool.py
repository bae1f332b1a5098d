"""The Ray that a process's distributed runs share, and the workers they keep warm.

A local Ray that a run starts (no cluster address) stays up until the process ends or
`shutdown()` is called, and so do its workers with their models loaded: a process's next run of
the same model and weights (a notebook's second batch) starts at once instead of paying a Ray start
and a worker start per actor again (on two cores ~10 and ~8 CPU-s: Ray's daemons, then each
worker's imports and model); another model's run still saves the Ray start. A cluster that a
run joins, or a Ray the caller started, is left as it was found: its workers end with each run,
so no idle worker of ours holds a shared cluster's CPUs or GPUs between runs.

Ray is never imported here: the caller (camcore.distributed) passes its module in.
"""
from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

WORKER_CALL_TIMEOUT = 60  # seconds a warm worker has to answer before it counts as lost


@dataclass
class _Kept:
    """The local Ray this process started, what it was started with, and its idle workers."""
    ray: Any
    started_with: Hashable  # (address, worker environment)
    shape: Hashable = None  # what every kept worker was made for: (model, weights, GPUs, CPUs)
    workers: list = field(default_factory=list)


_kept: _Kept | None = None
_lock = threading.Lock()
_exit_registered = False


@dataclass
class RayRun:
    """One distributed run's hold on Ray: where its workers come from and what happens to them after."""
    ray: Any
    keeps: bool  # a local Ray of this process: workers and Ray stay for the next run
    disconnects: bool  # this run connected to a cluster (or a Ray) it must leave at its end

    def workers(self, shape: Hashable, count: int, start: Callable[[], Any]) -> list:
        """`count` workers made for `shape`: the kept ones that still answer first (each told
        `begin()`: a new run), then new ones from start()."""
        warm = _take(shape) if self.keeps else []
        ready: list = []
        for actor in warm:
            if len(ready) < count and _begins(self.ray, actor):
                ready.append(actor)
            elif len(ready) >= count:
                _give_back(self.ray, shape, [actor])  # not needed this run: stays idle and warm
            else:
                _kill(self.ray, actor)  # lost while idle (killed, out of memory)
        return ready + [start() for _ in range(count - len(ready))]

    def end(self, shape: Hashable, actors: list, alive: list | None) -> None:
        """After the run: the workers in `alive` stay warm where the run keeps them; every other
        worker is ended (all of them when `alive` is None: the run failed). Leaves a cluster that
        this run joined."""
        kept = [a for a in actors if a in alive] if self.keeps and alive is not None else []
        for actor in actors:
            if actor not in kept:
                _kill(self.ray, actor)
        if kept:
            _give_back(self.ray, shape, kept)
        if self.disconnects:
            self.ray.shutdown()


def begin_run(ray, address: str | None, env: dict[str, str], connect: Callable[..., bool]) -> RayRun:
    """Hold Ray for one run: the kept local Ray when it was started for the same address and
    worker environment; else (after ending a kept one that differs) connect(ray, address, env),
    which returns True when it started or joined Ray itself (False: the caller's Ray was up)."""
    global _kept
    started_with = (address, tuple(sorted(env.items())))
    with _lock:
        if _kept is not None and (_kept.started_with != started_with or not ray.is_initialized()):
            _end_kept()
        if _kept is not None:
            return RayRun(ray, keeps=True, disconnects=False)
        connected = connect(ray, address, env)
        if connected and address is None:
            _kept = _Kept(ray, started_with)
            _register_exit()
            return RayRun(ray, keeps=True, disconnects=False)
        return RayRun(ray, keeps=False, disconnects=connected)


def shutdown() -> None:
    """End the local Ray that this process's runs started and kept, with its warm workers (at
    exit too). Nothing when none is kept."""
    with _lock:
        _end_kept()


def kept_workers() -> int:
    """How many warm workers wait for the next run."""
    with _lock:
        return len(_kept.workers) if _kept is not None else 0


def _take(shape: Hashable) -> list:
    """The kept workers when they were made for `shape` (handed over, no longer kept); workers
    made for another shape are ended first, so that their CPUs and GPUs are free for new ones."""
    with _lock:
        if _kept is None:
            return []
        workers, _kept.workers = _kept.workers, []
        if _kept.shape == shape:
            return workers
        for actor in workers:
            _kill(_kept.ray, actor)
        return []


def _give_back(ray, shape: Hashable, actors: list) -> None:
    with _lock:
        if _kept is None or _kept.ray is not ray:  # shut down meanwhile
            for actor in actors:
                _kill(ray, actor)
            return
        if _kept.shape != shape:
            for actor in _kept.workers:
                _kill(ray, actor)
            _kept.workers = []
        _kept.shape = shape
        _kept.workers.extend(actors)


def _begins(ray, actor) -> bool:
    """The kept worker answers: told that a new run begins."""
    try:
        ray.get(actor.begin.remote(), timeout=WORKER_CALL_TIMEOUT)
        return True
    except Exception:  # RayActorError (the process is gone), GetTimeoutError
        return False


def _kill(ray, actor) -> None:
    try:
        ray.kill(actor)
    except Exception:  # already gone, or Ray was shut down under it: nothing left to end
        pass


def _end_kept() -> None:
    """Under _lock: end the kept workers and the Ray they run on."""
    global _kept
    if _kept is None:
        return
    kept, _kept = _kept, None
    for actor in kept.workers:
        _kill(kept.ray, actor)
    if kept.ray.is_initialized():
        kept.ray.shutdown()


def _register_exit() -> None:
    global _exit_registered
    if not _exit_registered:
        atexit.register(shutdown)  # after ray.init registered Ray's own: this one runs first
        _exit_registered = True
