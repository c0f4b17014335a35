"""The global session cap's estimate: full counts only now and then, never on every Create."""

from __future__ import annotations

from bits_wsgi.server.session_cap import SessionCap


class World:
    def __init__(self) -> None:
        self.now = 100.0
        self.open = 0
        self.expired = 0
        self.counts = 0
        self.sweeps = 0

    def clock(self) -> float:
        return self.now

    def count(self) -> int:
        self.counts += 1
        return self.open

    def sweep(self) -> None:
        self.sweeps += 1
        self.open -= self.expired
        self.expired = 0

    def cap(self, cap: int) -> SessionCap:
        return SessionCap(cap, self.count, self.sweep, clock=self.clock)


def create(world: World, cap: SessionCap) -> bool:
    if cap.reached():
        return False
    world.open += 1
    return True


def test_below_the_cap_creates_count_once_per_refresh() -> None:
    world = World()
    cap = world.cap(1000)
    assert all(create(world, cap) for _ in range(500))
    assert world.counts == 1  # not 500
    world.now += cap.refresh_interval
    assert create(world, cap)
    assert world.counts == 2


def test_other_processes_sessions_are_seen_at_the_next_refresh() -> None:
    world = World()
    cap = world.cap(10)
    assert create(world, cap)
    world.open += 9  # another worker or host created nine
    world.now += cap.refresh_interval
    assert not create(world, cap)


def test_at_the_cap_a_full_count_decides_and_closing_makes_room() -> None:
    world = World()
    cap = world.cap(3)
    assert [create(world, cap) for _ in range(4)] == [True, True, True, False]
    world.now += cap.recount_interval
    world.open -= 1  # closed on another process
    assert create(world, cap)


def test_at_the_cap_counts_and_sweeps_are_rate_limited() -> None:
    world = World()
    cap = world.cap(2)
    assert create(world, cap) and create(world, cap)
    counts = world.counts
    for _ in range(100):  # a flood of Creates on a full server, within a recount interval
        assert not create(world, cap)
    assert (world.counts, world.sweeps) == (counts, 0)  # refused from the estimate
    world.now += cap.recount_interval
    assert not create(world, cap)  # counted again, swept first: still full
    assert (world.counts, world.sweeps) == (counts + 2, 1)
    world.expired = 2
    world.now += cap.recount_interval
    assert not create(world, cap)  # counted, but the next sweep waits for its interval
    assert world.sweeps == 1
    world.now += cap.sweep_interval
    assert create(world, cap)  # swept: the expired sessions made room
    assert world.sweeps == 2


def test_sessions_released_here_make_room_at_once() -> None:
    world = World()
    cap = world.cap(2)
    assert create(world, cap) and create(world, cap)
    assert not create(world, cap)
    cap.released()
    world.open -= 1
    assert create(world, cap)
