"""A session's memory is freed when its tab closes (issue 23, design 4).

Streamlit keeps a closed tab's session_state for a reconnect (server.disconnectedSessionTTL, and
then until something else touches its session store), and releases the session's scoped caches
at once: what a session holds that is big (its explainers: activations and gradients) must go
with the latter. AppTest runs the real app; the disconnect is what Streamlit's AppSession does on
one (`clear_session_caches`), while `at` keeps the session_state alive as the server would.
bench/memory.py measures the server's RSS across real tabs.
"""
from __future__ import annotations

import gc
import weakref

import pytest
from app_support import APP, TIMEOUT, run
from streamlit.runtime import caching
from streamlit.testing.v1 import AppTest

from camcore.engine import Explainer
from ui import session_memory

pytestmark = [pytest.mark.slow]

SESSION = "test session id"  # every AppTest's session id (streamlit.testing.v1.local_script_runner)


def _explainers() -> dict[int, weakref.ref]:
    gc.collect()
    return {id(o): weakref.ref(o) for o in gc.get_objects() if type(o) is Explainer}


def _holders(obj: object) -> list[str]:
    """What refers to obj (types, and a dict's keys), to say where a leak is."""
    gc.collect()
    out = []
    for ref in gc.get_referrers(obj):
        if isinstance(ref, dict):
            out.append("dict with keys " + ", ".join(map(str, list(ref)[:8])))
        elif isinstance(ref, tuple):
            up = [type(r).__qualname__ + (":" + ",".join(map(str, list(r)[:8])) if isinstance(r, dict) else "")
                  for r in gc.get_referrers(ref)]
            out.append(f"tuple of {len(ref)} in {up}")
        else:
            out.append(type(ref).__qualname__)
    return out


def _disconnect(session_id: str) -> None:
    """What Streamlit does when a tab disconnects (AppSession.clear_session_caches)."""
    caching.clear_session_data_cache(session_id)
    caching.clear_session_resource_cache(session_id)


def test_a_closed_tabs_explainers_are_freed_while_its_session_state_is_kept():
    before = _explainers()
    at = run(AppTest.from_file(APP, default_timeout=TIMEOUT))  # Explore: the shared pass of a sample
    at.sidebar.button(key="next_sample").click()
    run(at)  # and of the next one
    mine = [r for i, r in _explainers().items() if i not in before]
    assert len(mine) >= 2, "Explore made no explainer: the test no longer sees what a session holds"
    assert at.session_state["selection"] is not None  # the session_state Streamlit keeps for a reconnect
    _disconnect(SESSION)
    gc.collect()
    left = [r for r in mine if r() is not None]
    assert not left, f"{len(left)} explainers of a closed tab still alive, held by: {_holders(left[0]())}"


def test_a_slow_job_left_by_a_closed_tab_goes_with_it():
    """A slow run stopped by the tab closing leaves its job record behind (fast reruns need it
    process-wide): the session's end removes it."""
    lock, jobs = session_memory.jobs()
    with lock:
        jobs["gone"] = {"finished": None}
    session_memory.release(session_memory.SessionMemory("gone"))
    with lock:
        assert "gone" not in jobs


def test_the_shared_image_cache_is_bounded_in_bytes(tmp_path):
    """Every sample a session visits goes through the process-wide image cache: big photos must not
    add up past its byte bound, whatever the entry count (12 images of 27 MB here)."""
    import numpy as np
    from PIL import Image

    from ui import cache

    cache.image.clear()
    for i in range(12):
        path = tmp_path / f"big{i}.png"
        Image.fromarray(np.full((3000, 3000, 3), i, np.uint8)).save(path)
        cache.image(str(path), path.stat().st_mtime)
    held = sum(s.byte_length for s in caching.get_data_cache_stats_provider().get_stats()["cache_memory_bytes"]
               if s.cache_name.endswith(".image"))
    cache.image.clear()
    assert 0 < held <= cache.IMAGE_CACHE_BYTES, held


def test_the_startup_heap_is_frozen_once_and_later_garbage_is_still_collected(monkeypatch):
    """freeze_startup_heap sets what is alive aside from the collector, once per process; a cycle made
    afterwards (a session's) is still collected. app.py calls it: an AppTest run leaves it done."""
    monkeypatch.setattr(session_memory, "_startup_frozen", False)
    kept = [[object()] for _ in range(1000)]  # alive before the call: frozen with the rest
    before = gc.get_freeze_count()
    session_memory.freeze_startup_heap()
    frozen = gc.get_freeze_count()
    assert frozen >= before + 1000
    more = [[object()] for _ in range(1000)]
    session_memory.freeze_startup_heap()  # once per process: a second call freezes nothing new
    # not ==: a frozen object that dies leaves the permanent generation (another thread's, in CI)
    assert gc.get_freeze_count() <= frozen

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None
    del kept, more

    monkeypatch.setattr(session_memory, "_startup_frozen", False)
    run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert session_memory._startup_frozen, "app.py no longer freezes the heap it imported"
