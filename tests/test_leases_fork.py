"""A lease's owner is one process: a child forked after camcore.store was imported (multiprocessing's
default on Linux, the tests' warm pools) owns leases as itself, not as its parent."""
from __future__ import annotations

import os

from fo_helpers import unique_name

from camcore.store import leases


def test_a_forked_child_does_not_hold_its_parents_lease():
    key = unique_name("fork-lease")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only tell the parent who it is (no database use across the fork)
        try:
            os.write(write, leases._owner().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read()
    os.waitpid(pid, 0)
    assert leases.try_take(key)  # the parent holds it ...
    try:
        assert not leases.try_take(key, owner=child), "the forked child took its parent's lease"
    finally:
        leases.release(key)
    assert child.split(":")[1] == str(pid), child
