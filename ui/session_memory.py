"""What one browser session holds that is big, freed when its tab closes (issue 23, design 4).

A session's explainers (one image's activations and gradients each: about 100 MB with DeepLabV3)
and its kept forward (a detector's graph, for switching boxes) are kept in a session-scoped
`st.cache_resource`, not in `st.session_state`. Streamlit 1.67 keeps a closed tab's session_state
for `server.disconnectedSessionTTL` (2 min) so that a reconnecting tab resumes, and after that
drops it only when something else touches its session store (another tab disconnecting): with
nothing else going on, never. A session-scoped resource is released as the tab disconnects. A
tab that reconnects after a network blip gets a fresh, empty holder: its next run computes the
shared pass again. What the session's widgets and its fragment keep (callback arguments, a
fragment's arguments) lives on with the session: they hold an explainer weakly (ui/compute.py).

The slow-work record (`jobs`) is process-wide because a click's new run must see the stopped run's
job; a session's entry goes with the session too.

A closed tab's release runs a full collection (give_back_to_os); app.py sets the process's
import-time heap aside from the collector once (freeze_startup_heap), so that each collection walks
what the sessions made, not torch's and FiftyOne's ~600k objects (bench/collector.py: 325 -> 13 ms).
"""
from __future__ import annotations

import ctypes
import gc
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from ui.state import Compute


@dataclass(eq=False)
class SessionMemory:
    session_id: str
    explainers: OrderedDict = field(default_factory=OrderedDict)  # key -> Explainer, most recent last
    kept_forward: Any = None  # camcore.engine.KeptForward: one image's forward with its graph (detectors)


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "-"


@st.cache_resource(show_spinner=False)
def jobs() -> tuple[threading.Lock, dict[str, dict]]:
    """Process-wide: each session's slow computation under way or interrupted (session id -> job).
    Not session_state: with Streamlit's fast reruns a click stops the running script and starts
    the next run at once, on another thread, while the stopped one still finishes its batch; both
    must see the same job at once."""
    return threading.Lock(), {}


def give_back_to_os() -> None:
    """Collect what cycles keep alive, and hand glibc's free pages back: numpy's and torch's big
    buffers come from malloc, which otherwise keeps them (the RSS would not fall)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_startup_frozen = False


def freeze_startup_heap() -> None:
    """Once per process, after the app's imports: set what is alive now (torch's, FiftyOne's and
    Streamlit's import-time objects, ~600k) aside from the cyclic collector, which otherwise walks
    them all in every full collection: 0.28 s each on an idle machine, one per closed tab
    (give_back_to_os) and more under load. They live as long as the process anyway; what a session
    makes later is collected as before. (Only cyclic garbage among the frozen objects is never
    collected: the first session's own bookkeeping, once per process.)"""
    global _startup_frozen
    if _startup_frozen:
        return
    _startup_frozen = True
    gc.collect()  # today's garbage is not frozen with the rest
    gc.freeze()


def release(memory: SessionMemory) -> None:
    """The session ended (its tab disconnected): drop what it held. Runs on Streamlit's event
    loop thread, never in the session's script: no st.* calls, no session_state."""
    memory.explainers.clear()
    memory.kept_forward = None
    lock, running = jobs()
    with lock:
        running.pop(memory.session_id, None)
    # off the event loop: a full collection of a torch + FiftyOne heap takes a moment
    threading.Thread(target=give_back_to_os, name="session-memory-release", daemon=True).start()


@st.cache_resource(scope="session", on_release=release, show_spinner=False)
def _holder(token: str) -> SessionMemory:
    return SessionMemory(session_id())


_BARE = SessionMemory("-")  # outside a script run (a test calling ui/compute.py directly): one holder


def current() -> SessionMemory:
    """This session's holder (made on first use in the session)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if get_script_run_ctx() is None:
        return _BARE
    # Keyed by a token of this session_state too: AppTests all run as one session id, and each
    # must start with its own memory, as a new browser tab does.
    return _holder(st.session_state.setdefault(Compute.MEMORY_TOKEN, uuid.uuid4().hex))
