"""camcore.ray_pool's bookkeeping: which Ray and which workers a run gets, and what is kept after.
Ray itself is a stand-in here (starting one costs ~10 CPU-s per case); the real local Ray keeping
its workers across runs is test_distributed.py's scenario (test_a_local_ray_and_its_workers_stay_
warm_for_the_next_run_until_shutdown)."""
from __future__ import annotations

import itertools

import pytest

from camcore import ray_pool

SHAPE = ("resnet18", "auto", 0, 1)
OTHER_SHAPE = ("resnet18", "untrained", 0, 1)
ENV = {"FIFTYONE_DATABASE_URI": "mongodb://127.0.0.1:1"}


class _Call:
    def __init__(self, actor: _Actor) -> None:
        self.actor = actor

    def remote(self) -> _Actor:
        self.actor.begun += 1
        return self.actor  # ray.get(ref) below: the actor itself stands for its answer


class _Actor:
    ids = itertools.count()

    def __init__(self) -> None:
        self.id, self.dead, self.killed, self.begun = next(self.ids), False, False, 0
        self.begin = _Call(self)


class _Ray:
    """What ray_pool calls on Ray: is_initialized, shutdown, kill and get."""

    def __init__(self) -> None:
        self.up, self.connects, self.shutdowns = False, [], 0

    def connect(self, ray, address, env) -> bool:  # distributed._connect's part
        assert ray is self
        if self.up:
            return False
        self.up = True
        self.connects.append((address, dict(env)))
        return True

    def is_initialized(self) -> bool:
        return self.up

    def shutdown(self) -> None:
        self.up = False
        self.shutdowns += 1

    def kill(self, actor: _Actor) -> None:
        if not self.up:
            raise RuntimeError("Ray has not been started yet.")  # as Ray's own ray.kill says
        actor.killed = actor.dead = True

    def get(self, actor: _Actor, timeout: float) -> None:
        if actor.dead:
            raise RuntimeError("The actor died unexpectedly before finishing this task.")


@pytest.fixture
def ray():
    ray_pool.shutdown()
    fake = _Ray()
    yield fake
    ray_pool.shutdown()


def _run(ray: _Ray, count: int, shape=SHAPE, address=None, env=ENV, lose: int = 0) -> tuple[list[_Actor], list[_Actor]]:
    """One run: its workers; `lose` of them die during it. Returns (workers, the new ones)."""
    held = ray_pool.begin_run(ray, address, env, ray.connect)
    new: list[_Actor] = []

    def start() -> _Actor:
        new.append(_Actor())
        return new[-1]

    actors = held.workers(shape, count, start)
    for actor in actors[:lose]:
        actor.dead = True
    held.end(shape, actors, [a for a in actors if not a.dead])
    return actors, new


def test_a_local_rays_workers_serve_the_next_run_and_end_with_shutdown(ray):
    first, new = _run(ray, 2)
    assert new == first and ray.up and ray_pool.kept_workers() == 2
    second, new = _run(ray, 2)
    assert second == first and new == [] and len(ray.connects) == 1  # no second Ray start
    assert all(a.begun == 1 and not a.killed for a in first)  # each told a new run begins
    ray_pool.shutdown()
    assert all(a.killed for a in first) and not ray.up and ray_pool.kept_workers() == 0


def test_a_worker_lost_in_a_run_or_while_idle_is_replaced(ray):
    first, _ = _run(ray, 2, lose=1)  # killed mid-run: not kept
    assert ray_pool.kept_workers() == 1
    second, new = _run(ray, 2)
    assert second[0] is first[1] and len(new) == 1
    second[1].dead = True  # dies while idle
    third, new = _run(ray, 2)
    assert third[0] is first[1] and len(new) == 1 and second[1].killed


def test_fewer_workers_leave_the_rest_warm_and_another_shape_replaces_them(ray):
    first, _ = _run(ray, 3)
    second, new = _run(ray, 1)
    assert second == first[:1] and new == [] and ray_pool.kept_workers() == 3
    third, new = _run(ray, 2, shape=OTHER_SHAPE)  # other weights: the kept models do not serve it
    assert new == third and all(a.killed for a in first) and ray_pool.kept_workers() == 2


def test_another_environment_ends_the_kept_ray_first(ray):
    first, _ = _run(ray, 2)
    other = {"FIFTYONE_DATABASE_URI": "mongodb://127.0.0.1:2"}
    second, new = _run(ray, 2, env=other)
    assert new == second and all(a.killed for a in first)
    assert ray.shutdowns == 1 and [env for _, env in ray.connects] == [ENV, other]


def test_a_joined_cluster_keeps_nothing_and_is_left(ray):
    first, _ = _run(ray, 2, address="auto")
    assert all(a.killed for a in first) and ray_pool.kept_workers() == 0
    assert not ray.up and ray.shutdowns == 1  # the connection this run made is closed


def test_a_ray_the_caller_started_is_joined_and_left_up(ray):
    ray.up = True  # the caller's own ray.init()
    first, _ = _run(ray, 2)
    assert all(a.killed for a in first) and ray.up and ray.shutdowns == 0 and ray_pool.kept_workers() == 0


def test_a_failed_run_ends_its_workers_and_keeps_the_ray(ray):
    held = ray_pool.begin_run(ray, None, ENV, ray.connect)
    actors = held.workers(SHAPE, 2, _Actor)
    held.end(SHAPE, actors, None)
    assert all(a.killed for a in actors) and ray.up and ray_pool.kept_workers() == 0


def test_a_kept_ray_shut_down_by_the_caller_is_started_again(ray):
    first, _ = _run(ray, 2)
    ray.shutdown()  # the caller's own ray.shutdown(): the kept workers went with it
    second, new = _run(ray, 2)
    assert new == second and ray.up and len(ray.connects) == 2 and ray_pool.kept_workers() == 2
