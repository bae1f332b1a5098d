"""Who holds a model's lock, and waiting for it out loud.

Every pass on a shared model holds its lock (hooks are per module: see models.LoadedModel). A
caller that has to wait for another thread (another browser session's Score-CAM, say) is told
who holds the model, doing what, since when, through its progress callback, and can cancel
while it waits: a set cancel event ends the wait with `Cancelled`. Nobody sits silently behind
the lock.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from camcore.errors import Cancelled

Progress = Callable[[float, str], None]
POLL_SECONDS = 0.2  # how often a waiter re-checks cancel and re-reports whom it waits for


@dataclass(frozen=True)
class Holder:
    model: str  # the model's key
    what: str  # e.g. "Score-CAM on layer4"
    since: float  # time.time() when it took the lock
    thread: int

    def describe(self, now: float | None = None) -> str:
        waited = max(0.0, (now or time.time()) - self.since)
        clock = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"{self.what} on {self.model}, running since {clock} ({waited:.0f} s)"


_registry_lock = threading.Lock()
_holders: dict[int, list[Holder]] = {}  # id(lock) -> the holders, outermost first (re-entrant)


def holder(lock) -> Holder | None:
    """Who holds this lock now (the outermost hold), or None when nobody does through hold()."""
    with _registry_lock:
        stack = _holders.get(id(lock))
        return stack[0] if stack else None


def waiting_message(model: str, busy: Holder | None, waited: float) -> str:
    if busy is None:
        return f"Waiting for the model {model}: another task is using it ({waited:.0f} s so far)…"
    return (f"Waiting for another session's {busy.describe()}: this starts as soon as it releases the "
            f"model ({waited:.0f} s so far). Cancel stops waiting.")


@contextmanager
def hold(lock, model: str, what: str, progress: Progress | None = None,
         cancel: threading.Event | None = None, since: float | None = None) -> Iterator[None]:
    """Hold `lock` (a model's RLock) for `what`. When another thread holds it, report whom we
    wait for through progress(0.0, message) every POLL_SECONDS, and raise Cancelled as soon as
    `cancel` is set. Re-entrant holds by the same thread never wait. since: when `what` began
    (a method that holds the model per batch), shown to waiters; default now."""
    if not lock.acquire(blocking=False):
        start = time.monotonic()
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"Cancelled while waiting for the model {model}.")
            if progress is not None:
                progress(0.0, waiting_message(model, holder(lock), time.monotonic() - start))
            if lock.acquire(timeout=POLL_SECONDS):
                break
    entry = Holder(model, what, since or time.time(), threading.get_ident())
    try:
        with _registry_lock:
            _holders.setdefault(id(lock), []).append(entry)
        yield
    finally:
        with _registry_lock:
            stack = _holders.get(id(lock), [])
            if entry in stack:
                stack.remove(entry)
            if not stack:
                _holders.pop(id(lock), None)
        lock.release()
