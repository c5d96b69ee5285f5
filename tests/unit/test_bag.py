"""The Bag on its own: decisions without a loop, a driver or a pool."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pgpool_core._bag import Bag, Slot


class Conn:
    def __init__(self) -> None:
        self.closed = False


class Waiter:
    """Stands for a caller's future: the bag only asks whether it is done."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.finished = False

    def done(self) -> bool:
        return self.finished


def _slot(now: float = 0.0, *, expires: float = 100.0, generation: int = 0) -> Slot:
    return Slot(Conn(), now, expires, now, generation=generation)  # type: ignore[arg-type]


def test_plan_connects_covers_waiters_and_min_size_within_max() -> None:
    """Connects are planned for min_size, then for waiters not covered by connects or
    returns, never past max_size."""
    bag: Bag[Any] = Bag(min_size=1, max_size=3)
    assert bag.plan_connects() == 1
    for n in range(5):
        bag.add_waiter(Waiter(n))
    bag.begin_return()
    assert bag.plan_connects() == 2  # 5 waiters - 1 opening - 1 returning, capped at 3
    assert (bag.size, bag.opening) == (3, 3)


def test_check_in_serves_the_oldest_live_waiter_then_idles() -> None:
    """FIFO; finished waiters are skipped; with none left the slot goes idle."""
    bag: Bag[Any] = Bag(0, 2)
    first, second = Waiter(1), Waiter(2)
    bag.add_waiter(first)
    bag.add_waiter(second)
    first.finished = True
    slot = _slot()
    assert bag.check_in(slot, 1.0) is second
    assert slot in bag.busy
    other = _slot()
    assert bag.check_in(other, 2.0) is None
    assert list(bag.idle) == [other]
    assert other.last_used == 2.0


def test_take_idle_is_lifo_and_returns_the_dead_to_close() -> None:
    """The most recently used live slot is taken; expired and closed ones come back to close."""
    bag: Bag[Any] = Bag(0, 4)
    old, expired, closed = _slot(), _slot(expires=1.0), _slot()
    closed.conn.closed = True  # type: ignore[misc]
    for slot in (old, expired, closed):
        bag.check_in(slot, 0.0)
    taken, dead = bag.take_idle(5.0)
    assert taken is old
    assert dead == [closed, expired]


def test_waiters_before_a_cutoff_are_taken_in_order() -> None:
    """A failed connect fails only the waiters that arrived before it started."""
    bag: Bag[Any] = Bag(0, 1)
    early = [Waiter(n) for n in range(3)]
    for waiter in early:
        bag.add_waiter(waiter)
    cutoff = bag.arrivals
    late = Waiter(9)
    bag.add_waiter(late)
    assert bag.waiters_before(cutoff) == early
    assert list(bag.waiters) == [late]


def test_retire_generation_and_connected() -> None:
    """A failover drain returns the idle slots to close; a connect from before it is stale."""
    bag: Bag[Any] = Bag(0, 2)
    assert bag.plan_connects() == 0
    assert bag.reserve_connect()
    generation = bag.generation
    idle = _slot()
    bag.size += 1  # an open connection, counted as the pool counts it
    bag.check_in(idle, 0.0)
    assert bag.retire_generation() == [idle]
    assert not bag.connected(generation)
    assert (bag.size, bag.opening) == (1, 0)  # the stale connect is forgotten
    assert not bag.reusable(_slot(generation=generation), 0.0)


def test_evict_keeps_min_size_and_closes_the_expired() -> None:
    """Oldest-used first: expired always goes, idle past max_idle only while above
    min_size (the pool refills to min_size afterwards)."""
    bag: Bag[Any] = Bag(min_size=1, max_size=3)
    slots = [_slot(0.0, expires=5.0), _slot(0.0), _slot(0.0)]
    bag.size = 3
    for slot in slots:
        bag.check_in(slot, 0.0)
    assert bag.evict(now=10.0, max_idle=5.0) == slots[:2]
    assert list(bag.idle) == slots[2:]


class BagMachine(RuleBasedStateMachine):
    """Random interleavings of what the pool does with its bag; the invariants must hold
    after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.bag: Bag[Any] = Bag(min_size=1, max_size=3)
        self.now = 0.0
        self.arrived: list[Waiter] = []  # live waiters in arrival order
        self.served: list[Waiter] = []
        self.held: list[Slot] = []

    def _check_in(self, slot: Slot) -> None:
        expected = next((w for w in self.arrived if not w.done()), None)
        waiter = self.bag.check_in(slot, self.now)
        assert waiter is expected, "FIFO: the oldest live waiter is served first"
        if waiter is not None:
            waiter.finished = True
            self.arrived.remove(waiter)
            self.bag.forget_waiter(waiter)
            self.served.append(waiter)
            self.held.append(slot)

    @rule()
    def acquire(self) -> None:
        """A request: an idle connection if nobody waits, else it queues."""
        if not self.bag.waiters:
            slot, dead = self.bag.take_idle(self.now)
            for _ in dead:
                self.bag.forget()
            if slot is not None:
                self.held.append(slot)
                return
        waiter = Waiter(len(self.served) + len(self.arrived))
        self.bag.add_waiter(waiter)
        self.arrived.append(waiter)

    @precondition(lambda self: bool(self.arrived))
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        """A waiter expires or is cancelled."""
        waiter = data.draw(st.sampled_from(self.arrived))
        waiter.finished = True
        self.arrived.remove(waiter)
        self.bag.remove_waiter(waiter)

    @rule()
    def plan(self) -> None:
        """The pool starts the connects the bag plans."""
        self.bag.plan_connects()

    @precondition(lambda self: self.bag.opening > 0)
    @rule(ok=st.booleans())
    def connect_finishes(self, ok: bool) -> None:
        """A connect succeeds (the slot is checked in) or fails."""
        if not ok:
            self.bag.connect_failed()
        elif self.bag.connected(self.bag.generation):
            self._check_in(_slot(self.now, expires=self.now + 50))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), broken=st.booleans())
    def release(self, data: st.DataObject, broken: bool) -> None:
        """A holder gives its connection back: reused, or closed if broken or stale."""
        slot = data.draw(st.sampled_from(self.held))
        self.held.remove(slot)
        assert self.bag.check_out_done(slot)
        if broken or not self.bag.reusable(slot, self.now):
            self.bag.forget()
        else:
            self._check_in(slot)

    @rule()
    def failover(self) -> None:
        """A failover drain closes the idle connections."""
        for _ in self.bag.retire_generation():
            self.bag.forget()

    @rule(seconds=st.floats(min_value=0, max_value=40))
    def time_passes_and_maintenance_runs(self, seconds: float) -> None:
        """Maintenance evicts expired and long-idle connections above min_size."""
        self.now += seconds
        for _ in self.bag.evict(self.now, max_idle=20.0):
            self.bag.forget()

    @invariant()
    def sizes_add_up(self) -> None:
        """size == idle + busy + opening <= max_size."""
        bag = self.bag
        assert bag.size == len(bag.idle) + len(bag.busy) + bag.opening
        assert 0 <= bag.size <= bag.max_size
        assert bag.open == len(bag.idle) + len(bag.busy)

    @invariant()
    def every_held_slot_is_busy_and_no_slot_twice(self) -> None:
        """Handed-out connections are busy, never idle, never handed out twice."""
        assert set(self.held) == self.bag.busy
        assert len(self.held) == len(set(self.held))
        assert not set(self.bag.idle) & self.bag.busy

    @invariant()
    def no_idle_connection_while_someone_waits(self) -> None:
        """A live waiter never waits while a connection sits idle."""
        if any(not w.done() for w in self.bag.waiters):
            assert not self.bag.idle


BagMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_bag_invariants = BagMachine.TestCase
