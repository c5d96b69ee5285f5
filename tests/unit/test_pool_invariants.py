"""Stateful fuzzing of PoolManager over the fake connector: its bookkeeping holds under any
interleaving of acquires, releases, cancellations, timeouts, dead connections, refused
connects and maintenance.

The pool runs on a loop with virtual time: deadlines fire when a rule advances the clock
(timer by timer, in order), never by sleeping, so a run is fast and deterministic. The
pool's server-side cancel requests still go out on the pool's own threads, but reach the
fake server a virtual latency later (which may exceed ``cancel_timeout``), at a point the
loop waits for: runs stay deterministic. After every step the loop is spun until it is
quiescent (nothing runnable, no timer due), then the invariants are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import selectors
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pgpool_core import PoolError, PoolManager, PoolState, RetryPolicy
from pgpool_core.testing import FakeConnection, FakeConnector

from fake_support import URL, until

MAX_SIZE = 3
MAX_WAITING = 3
#: Jobs alive at once: enough to fill the pool and its queue, and overflow it.
MAX_LIVE_JOBS = MAX_SIZE + MAX_WAITING + 1
CANCEL_TIMEOUT = 0.05
STOP_TIMEOUT = 0.1
#: Loop iterations a step may take to become quiescent.
SPIN_LIMIT = 100_000
#: Real seconds the loop waits for a cancel thread to reach the point it waits for.
THREAD_WAIT = 10.0
#: Virtual seconds the wind-down may take for every job to end once holders let go.
WIND_DOWN_LIMIT = 10.0
#: How early the pool's deadline timer may fire (pgpool_core._timers._SLACK).
TIMER_SLACK = 0.001
#: Timers fired within one advance of the clock before it counts as a runaway.
TIMER_LIMIT = 2_000

POOL_OPTIONS: dict[str, Any] = {
    "max_size": MAX_SIZE,
    "max_waiting": MAX_WAITING,
    "acquire_timeout": 0.1,
    "query_timeout": 0.3,
    "connect_timeout": 0.2,
    "cancel_timeout": CANCEL_TIMEOUT,
    "max_idle": 0.2,
    "max_lifetime": 0.6,
    "validate_idle_after": 0.1,
}
TIMEOUTS = st.sampled_from([None, 0.05, 0.25])
PICK = st.integers(min_value=0, max_value=MAX_LIVE_JOBS - 1)
HOLDERS = ("execute", "transaction", "connection")
#: What a job may legitimately end with besides success and cancellation.
EXPECTED = (PoolError, psycopg2.OperationalError)


class _NonBlockingSelector(selectors.SelectSelector):
    """Refuses to block: on a virtual clock a real wait would never see time pass."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout > 0:
            raise RuntimeError(f"the event loop would block (timeout={timeout}): nothing to run")
        return super().select(timeout)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when told to."""

    def __init__(self) -> None:
        super().__init__(_NonBlockingSelector())
        self._virtual_now = 1000.0

    def time(self) -> float:
        return self._virtual_now

    def jump_to(self, when: float) -> None:
        """Move the clock forward to ``when`` (never back)."""
        self._virtual_now = max(self._virtual_now, when)

    def _timers(self) -> list[asyncio.TimerHandle]:
        return [h for h in cast(Any, self)._scheduled if not h.cancelled()]

    def has_work(self) -> bool:
        """True while a callback is ready to run or a timer is due."""
        if cast(Any, self)._ready:
            return True
        horizon = self._virtual_now + cast(Any, self)._clock_resolution
        return any(h.when() <= horizon for h in self._timers())

    def next_timer(self) -> float | None:
        """When the earliest pending timer fires, if any."""
        return min((h.when() for h in self._timers()), default=None)


@dataclass(eq=False)
class CancelRequest:
    """One server-side cancel request for ``conn``, sent by the pool on a thread of its own."""

    conn: FakeConnection
    loop_thread: threading.Thread
    parked: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def send(self) -> None:
        """The pool's sender: wait until the request is due, then reach the fake server."""
        self.thread = threading.current_thread()
        self.parked.set()
        if self.thread is not self.loop_thread:  # never block the loop itself
            self.go.wait(THREAD_WAIT)
        self.conn.cancel()


class CancelRequests:
    """The fake server's end of cancel requests: each arrives ``latency`` virtual seconds
    after the pool sent it. The loop waits (for real, briefly) for the sending thread twice:
    until it is parked in :meth:`CancelRequest.send`, and, when the request is due, until it
    has ended, so what the thread hands the loop always lands at the same point of a run."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.latency = 0.0
        self.pending: list[CancelRequest] = []

    def prepare(self, conn: FakeConnection) -> Callable[[], None]:
        """``conn.prepare_cancel()``: called on the loop just before the pool starts its
        thread."""
        request = CancelRequest(conn, threading.current_thread())
        self.pending.append(request)
        self.loop.call_soon(self._parked, request)
        return request.send

    def _parked(self, request: CancelRequest) -> None:
        if not request.parked.wait(THREAD_WAIT):
            raise RuntimeError("the pool prepared a cancel request but never sent it")
        self.loop.call_later(self.latency, self._deliver, request)

    def _deliver(self, request: CancelRequest) -> None:
        request.go.set()
        assert request.thread is not None
        if request.thread is not request.loop_thread:
            request.thread.join(THREAD_WAIT)
            if request.thread.is_alive():
                raise RuntimeError("the pool's cancel thread did not end")
        self.pending.remove(request)

    def release_all(self) -> None:
        """Let every parked sender go (clean-up)."""
        for request in self.pending:
            request.go.set()
            if request.thread is not None and request.thread is not request.loop_thread:
                request.thread.join(THREAD_WAIT)


@dataclass(eq=False)
class CountingConnector(FakeConnector):
    """A fake connector that counts the connects in flight and routes its connections'
    cancel requests through ``cancels``."""

    in_flight: int = 0
    cancels: CancelRequests | None = None

    async def connect(self, timeout: float) -> FakeConnection:
        self.in_flight += 1
        try:
            conn = await super().connect(timeout)
        finally:
            self.in_flight -= 1
        if self.cancels is not None:
            prepare = functools.partial(self.cancels.prepare, conn)
            conn.prepare_cancel = prepare  # type: ignore[method-assign]
        return conn


@dataclass(frozen=True)
class Book:
    """A snapshot of the pool's bookkeeping (slots have ``conn``): ``size`` counts open
    connections plus those ``opening``; ``returning`` busy ones are on their way back."""

    size: int
    idle: list[Any]
    busy: list[Any]
    opening: int
    returning: int
    waiters: list[asyncio.Future[Any]]

    @classmethod
    def of(cls, pool: PoolManager) -> Book:
        """Read from the pool's attributes, or from its ``_bag`` where it keeps them there."""
        bag: Any = getattr(pool, "_bag", None)
        if bag is not None:
            return cls(
                bag.size,
                list(bag.idle),
                list(bag.busy),
                bag.opening,
                bag.returning,
                list(bag.waiters),
            )
        p: Any = pool
        return cls(
            p._size,
            list(p._idle),
            list(p._busy_slots),
            p._connecting,
            p._returning,
            list(p._waiters),
        )


@dataclass(eq=False)
class Job:
    """One caller: checks a connection out (or runs a statement) and ends."""

    number: int
    kind: str  # a HOLDER, "hang" or "die"
    timeout: float | None
    begin: bool = False  # connection holder: leaves a transaction open for the release
    release: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    started_at: float = 0.0
    queued: bool = False  # had to wait for a connection
    served: bool = False
    served_at: float | None = None
    released: bool = False
    cancelled: bool = False
    killed: bool = False
    conn: FakeConnection | None = None  # what a connection holder was given
    outcome: str = ""
    unexpected: BaseException | None = None

    @property
    def sql(self) -> str:
        word = "hold" if self.kind in HOLDERS else self.kind
        return f"SELECT {word} {self.number}"

    @property
    def live(self) -> bool:
        return self.task is not None and not self.task.done()

    def __repr__(self) -> str:
        state = "live" if self.live else self.outcome
        return f"<Job {self.number} {self.kind} timeout={self.timeout} {state}>"


class ServeLog:
    """A pool observer recording which job got a connection, in the order they got it."""

    def __init__(self, on_serve: Callable[[asyncio.Task[Any] | None], None]) -> None:
        self._on_serve = on_serve

    def connection_created(self, pool: PoolManager, seconds: float) -> None:
        """Not needed."""

    def connection_waited(self, pool: PoolManager, seconds: float) -> None:
        """Called in the requesting task the moment its request is served."""
        self._on_serve(asyncio.current_task())

    def connection_used(self, pool: PoolManager, seconds: float) -> None:
        """Not needed."""

    def acquire_timed_out(self, pool: PoolManager) -> None:
        """Not needed."""

    def operation_finished(
        self, pool: PoolManager, seconds: float, error: BaseException | None
    ) -> None:
        """Not needed."""


class PoolMachine(RuleBasedStateMachine):
    """Drives one PoolManager over a CountingConnector on its own virtual-time loop."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.cancels = CancelRequests(self.loop)
        self.fake = CountingConnector(cancels=self.cancels)
        self.fake.on(r"^SELECT 1$", rows=[{"?column?": 1}])
        self.fake.on(r"^SELECT hang ", hang=True)
        self.fake.on(r"^SELECT die ", close_connection=True)
        self._pool: PoolManager | None = None
        self.abrupt_stop = False
        self.jobs: list[Job] = []
        self.by_task: dict[asyncio.Task[Any], Job] = {}
        self.numbers = itertools.count(1)
        self.events: list[tuple[str, Job]] = []  # ("serve" | "leave", job), in order
        self.events_checked = 0
        self.resolved: set[Job] = set()
        self.stray_serves = 0
        self.killed_conns: set[FakeConnection] = set()
        self.failed = False

    @property
    def pool(self) -> PoolManager:
        assert self._pool is not None
        return self._pool

    @property
    def book(self) -> Book:
        return Book.of(self.pool)

    # -- driving the loop --------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Remember that a step failed, so teardown only cleans up."""
        try:
            yield
        except BaseException:
            self.failed = True
            raise

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        self.loop.run_until_complete(coro)

    async def _quiesce(self) -> None:
        """Spin until nothing is runnable: no ready callback, no due timer."""
        await until(lambda: not self.loop.has_work(), SPIN_LIMIT)

    def _act(self, action: Callable[[], object]) -> None:
        """Run ``action`` on the loop, then spin until quiescent."""

        async def step() -> None:
            action()
            await self._quiesce()

        self._run(step())

    async def _advance(self, seconds: float) -> None:
        """Move virtual time forward, stopping at each timer on the way (in order)."""
        target = self.loop.time() + seconds
        for _ in range(TIMER_LIMIT):
            await self._quiesce()
            when = self.loop.next_timer()
            if when is None or when > target:
                break
            self.loop.jump_to(when)
        else:
            raise AssertionError(f"timers kept firing for {seconds} s of virtual time")
        self.loop.jump_to(target)
        await self._quiesce()

    async def _drive_until(self, condition: Callable[[], bool], what: str) -> None:
        """Let virtual time pass until ``condition()`` holds (at most WIND_DOWN_LIMIT)."""
        step = 0.05
        for _ in range(int(WIND_DOWN_LIMIT / step)):
            await self._quiesce()
            if condition():
                return
            await self._advance(step)
        raise AssertionError(f"{what} within {WIND_DOWN_LIMIT} virtual seconds")

    # -- jobs --------------------------------------------------------------------------------

    def _served(self, task: asyncio.Task[Any] | None) -> None:
        job = self.by_task.get(task) if task is not None else None
        if job is None:
            self.stray_serves += 1
            return
        self.events.append(("serve", job))
        job.served = True
        job.served_at = self.loop.time()

    async def _job_body(self, job: Job) -> None:
        pool = self.pool
        try:
            if job.kind == "connection":
                async with pool.connection(timeout=job.timeout) as conn:
                    assert isinstance(conn, FakeConnection)
                    job.conn = conn
                    if job.begin:
                        await conn.send("BEGIN", None)
                    await job.release.wait()
            elif job.kind == "transaction":
                async with pool.transaction(timeout=job.timeout) as tx:
                    await tx.execute(job.sql)
            else:
                await pool.execute(job.sql, timeout=job.timeout)
            job.outcome = "ok"
        except asyncio.CancelledError:
            job.outcome = "cancelled"
            raise
        except EXPECTED as exc:
            job.outcome = type(exc).__name__
        except BaseException as exc:  # reported by no_unexpected_errors
            job.outcome = f"unexpected {type(exc).__name__}"
            job.unexpected = exc
        finally:
            self.events.append(("leave", job))

    def _start(self, job: Job) -> None:
        if job.kind in ("execute", "transaction"):
            self.fake.on(rf"^{job.sql}$", gate=job.release)

        def start() -> None:
            job.task = self.loop.create_task(self._job_body(job), name=f"job-{job.number}")
            self.by_task[job.task] = job

        job.started_at = self.loop.time()
        self.jobs.append(job)
        self._act(start)
        # Still running without a connection after its first step: it waits in the queue.
        job.queued = job.live and not job.served

    def _live_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.live]

    def _holders(self) -> list[Job]:
        """Live jobs holding a connection that a release lets go."""
        return [
            j for j in self.jobs if j.live and j.served and j.kind in HOLDERS and not j.released
        ]

    def _job_conn(self, job: Job) -> FakeConnection | None:
        """The connection ``job`` was given: its handle, or the one its statement went to."""
        if job.kind == "connection":
            return job.conn
        sent = [c for c in self.fake.connections if job.sql in c.statements]
        assert len(sent) <= 1, f"{job}'s statement was sent on {sent}"
        return sent[0] if sent else None

    def _held(self, *, strict: bool = True) -> dict[Job, FakeConnection]:
        """Every live served job and the connection it holds."""
        held: dict[Job, FakeConnection] = {}
        for job in self.jobs:
            if job.live and job.served:
                conn = self._job_conn(job)
                if conn is not None:
                    held[job] = conn
                else:
                    assert not strict, f"{job} was served but never sent its statement"
        return held

    def _killable(self) -> list[tuple[Job, FakeConnection]]:
        return [(j, c) for j, c in self._held(strict=False).items() if not (j.killed or c.closed)]

    def _timed_out(self, job: Job) -> bool:
        """Whether ``job``'s statement deadline has passed (timeout= bounds the whole call,
        else query_timeout bounds the statement from the moment it was served)."""
        if job.kind == "connection" or job.served_at is None:
            return False
        if job.timeout is not None:
            deadline = job.started_at + job.timeout
        else:
            deadline = job.served_at + self.pool.settings.query_timeout
        return self.loop.time() >= deadline - TIMER_SLACK

    # -- rules -------------------------------------------------------------------------------

    @initialize(
        min_size=st.sampled_from([0, 1]),
        cancel_latency=st.sampled_from([0.0, 0.01, 2 * CANCEL_TIMEOUT]),
        abrupt_stop=st.booleans(),
    )
    def open_pool(self, min_size: int, cancel_latency: float, abrupt_stop: bool) -> None:
        """Start a pool (max 3, min 0 or 1) whose cancel requests take ``cancel_latency``."""
        with self._guard():
            self.cancels.latency = cancel_latency
            self.abrupt_stop = abrupt_stop
            self._pool = PoolManager(
                URL,
                connector=self.fake,
                min_size=min_size,
                clock=self.loop.time,
                jitter=lambda: 1.0,
                retry=RetryPolicy(initial=0.05, maximum=0.2, jitter=0.0),
                **POOL_OPTIONS,
            )
            self.pool.add_observer(ServeLog(self._served))

            async def start() -> None:
                await self.pool.start()
                await self._quiesce()

            self._run(start())

    @precondition(lambda self: len(self._live_jobs()) < MAX_LIVE_JOBS)
    @rule(kind=st.sampled_from(HOLDERS), timeout=TIMEOUTS, begin=st.booleans())
    def acquire(self, kind: str, timeout: float | None, begin: bool) -> None:
        """Start a job that checks a connection out (gated execute, transaction, connection())."""
        with self._guard():
            self._start(
                Job(next(self.numbers), kind, timeout, begin=begin and kind == "connection")
            )

    @precondition(lambda self: len(self._live_jobs()) < MAX_LIVE_JOBS)
    @rule(timeout=TIMEOUTS)
    def run_hanging_statement(self, timeout: float | None) -> None:
        """Start a statement that only its timeout (a server-side cancel) ends."""
        with self._guard():
            self._start(Job(next(self.numbers), "hang", timeout))

    @precondition(lambda self: len(self._live_jobs()) < MAX_LIVE_JOBS)
    @rule()
    def run_dying_statement(self) -> None:
        """Start a statement during which the server closes the connection."""
        with self._guard():
            self._start(Job(next(self.numbers), "die", None))

    @precondition(lambda self: bool(self._holders()))
    @rule(pick=PICK)
    def release(self, pick: int) -> None:
        """Let one holder finish: it ends at once, unless past its deadline (cancel in flight)."""
        with self._guard():
            holders = self._holders()
            job = holders[pick % len(holders)]
            job.released = True
            self._act(job.release.set)
            assert not job.live or self._timed_out(job), f"{job} still running after its release"

    @precondition(lambda self: any(not j.cancelled for j in self._live_jobs()))
    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        """Cancel one job's task, whether it waits for a connection or holds one."""
        with self._guard():
            jobs = [j for j in self._live_jobs() if not j.cancelled]
            job = jobs[pick % len(jobs)]
            job.cancelled = True
            assert job.task is not None
            self._act(job.task.cancel)

    @rule(seconds=st.sampled_from([0.01, 0.04, 0.12, 0.4]))
    def advance_time(self, seconds: float) -> None:
        """Let virtual time pass: acquire, statement, connect and backoff deadlines fire."""
        with self._guard():
            self._run(self._advance(seconds))

    @precondition(lambda self: bool(self.book.idle))
    @rule(pick=PICK)
    def drop_idle_connection(self, pick: int) -> None:
        """The server drops an idle connection; the pool finds out when it next uses it."""
        with self._guard():
            idle = self.book.idle
            conn = idle[pick % len(idle)].conn
            assert isinstance(conn, FakeConnection)
            self._act(conn.drop)

    @precondition(lambda self: bool(self._killable()))
    @rule(pick=PICK)
    def kill_held_connection(self, pick: int) -> None:
        """The server terminates the backend of a connection a job holds."""
        with self._guard():
            held = self._killable()
            job, conn = held[pick % len(held)]
            job.killed = True
            self.killed_conns.add(conn)
            self._act(conn.close)

    @rule(count=st.integers(min_value=1, max_value=2))
    def fail_connects(self, count: int) -> None:
        """The next connect attempts are refused."""
        with self._guard():
            self.fake.fail_next += count

    @precondition(lambda self: self.fake.gate is None)
    @rule()
    def block_connects(self) -> None:
        """Connect attempts hang until unblocked (or connect_timeout passes)."""
        with self._guard():
            self.fake.gate = asyncio.Event()

    @precondition(lambda self: self.fake.gate is not None)
    @rule()
    def unblock_connects(self) -> None:
        """Blocked connect attempts go through."""
        with self._guard():
            gate, self.fake.gate = self.fake.gate, None
            assert gate is not None
            self._act(gate.set)

    @rule(idle_for=st.sampled_from([0.0, 0.25, 0.7]))
    def maintenance(self, idle_for: float) -> None:
        """After ``idle_for`` seconds, run one maintenance pass (evict, expire, refill)."""
        with self._guard():
            self._run(self._advance(idle_for))
            self._act(self.pool.run_maintenance)

    # -- invariants --------------------------------------------------------------------------

    def _live_waiters(self) -> list[asyncio.Future[Any]]:
        return [w for w in self.book.waiters if not w.done()]

    def _waiting_jobs(self) -> list[Job]:
        return [j for j in self.jobs if j.live and not j.served]

    @invariant()
    def sizes_add_up(self) -> None:
        """_size = idle + busy + opening <= max_size; an open pool keeps min_size."""
        with self._guard():
            pool, book = self.pool, self.book
            idle, busy, opening = len(book.idle), len(book.busy), book.opening
            assert book.size == idle + busy + opening, (book.size, idle, busy, opening)
            assert 0 <= book.size <= pool.settings.max_size, book.size
            assert 0 <= book.returning <= busy, (book.returning, busy)
            if pool.state is PoolState.OPEN:
                assert book.size >= pool.settings.min_size, (book.size, pool.settings.min_size)

    @invariant()
    def connections_match_the_fake(self) -> None:
        """Open fake connections = idle + busy; connects in flight = opening; idle never closed."""
        with self._guard():
            book = self.book
            idle = [s.conn for s in book.idle]
            busy = [s.conn for s in book.busy]
            assert len({id(c) for c in idle + busy}) == len(idle) + len(busy), (idle, busy)
            assert not [c for c in idle if c.closed], f"closed connection counted idle: {idle}"
            dead_busy = {c for c in busy if c.closed}
            assert dead_busy <= self.killed_conns, f"busy yet closed, not by us: {dead_busy}"
            assert {id(c) for c in self.fake.open_connections} == {
                id(c) for c in idle + busy if not c.closed
            }, (self.fake.open_connections, idle, busy)
            assert book.opening == self.fake.in_flight, (book.opening, self.fake.in_flight)
            if self.fake.gate is None:
                assert self.fake.in_flight == 0, "a connect hangs without being blocked"

    @invariant()
    def exclusive_hand_out(self) -> None:
        """Busy connections: one live holder each, or on their way back (cancel, rollback)."""
        with self._guard():
            book = self.book
            held = self._held()
            conns = {id(c) for c in held.values()}
            assert len(conns) == len(held), f"shared connection: {held}"
            busy = {id(s.conn) for s in book.busy}
            assert conns <= busy, f"held yet not busy: {held} {book.busy}"
            assert len(busy - conns) == book.returning, (held, book.busy, book.returning)
            idle = {id(s.conn) for s in book.idle}
            assert not idle & busy

    @invariant()
    def no_waiter_left_behind(self) -> None:
        """Live waiters are exactly the waiting jobs, and each has something coming."""
        with self._guard():
            pool, book = self.pool, self.book
            waiters = self._live_waiters()
            waiting = self._waiting_jobs()
            assert len(book.waiters) == len(waiters), "finished waiters left in the queue"
            assert len(waiters) == len(waiting), (waiters, waiting)
            assert all(j.queued for j in waiting), waiting
            if waiters:
                assert not book.idle, "a request waits while a connection is idle"
            if pool.state is PoolState.RECONNECTING:
                retry = pool._tasks.reconnecting
                assert retry is not None, "down, and no reconnect scheduled"
                assert not retry.done(), "down, and the reconnect task has ended"
            if waiters and pool.state is PoolState.OPEN:
                assert book.busy or book.opening, "nothing will serve the waiters"
                supply = book.opening + book.returning
                assert supply >= len(waiters) or book.size == pool.settings.max_size, (
                    "unmet demand: no connect started",
                    book.size,
                    book.opening,
                    book.returning,
                    len(waiters),
                )

    @invariant()
    def fifo(self) -> None:
        """Requests are served in arrival order: none while an earlier one still waits."""
        with self._guard():
            assert self.stray_serves == 0, "a request the test did not make was served"
            for kind, job in self.events[self.events_checked :]:
                self.events_checked += 1
                if kind == "serve":
                    assert job not in self.resolved, f"{job} served twice"
                    skipped = [
                        j
                        for j in self.jobs
                        if j.number < job.number and j.queued and j not in self.resolved
                    ]
                    assert not skipped, f"{job} served before earlier waiters {skipped}"
                self.resolved.add(job)

    @invariant()
    def stats_agree(self) -> None:
        """stats() reports the same sizes as the bookkeeping."""
        with self._guard():
            book, stats = self.book, self.pool.stats()
            assert stats["pool_size"] == len(book.idle) + len(book.busy), stats
            assert stats["pool_size"] == book.size - book.opening, stats
            assert stats["pool_available"] == len(book.idle), stats
            assert stats["requests_waiting"] == len(self._waiting_jobs()), stats
            assert stats["pool_max"] == MAX_SIZE

    @invariant()
    def no_unexpected_errors(self) -> None:
        """Jobs end only with pool or connection errors; the loop reported nothing."""
        with self._guard():
            for job in self.jobs:
                if job.unexpected is not None:
                    raise AssertionError(f"{job} failed unexpectedly") from job.unexpected
            assert not self.loop_errors, self.loop_errors

    # -- teardown ----------------------------------------------------------------------------

    def _let_go(self) -> None:
        """Release every holder and every blocked connect; connects succeed again."""
        for job in self.jobs:
            job.release.set()
        self.fake.fail_next = 0
        if self.fake.gate is not None:
            self.fake.gate.set()
            self.fake.gate = None

    async def _stop(self) -> None:
        """stop() returns "within timeout plus the cancel bound", as its docstring says."""
        started = self.loop.time()
        finished: list[float] = []
        stopper = self.loop.create_task(self.pool.stop(STOP_TIMEOUT))
        stopper.add_done_callback(lambda _: finished.append(self.loop.time()))
        await self._drive_until(stopper.done, "pool.stop() never returned")
        stopper.result()
        took = finished[0] - started
        assert took <= STOP_TIMEOUT + min(CANCEL_TIMEOUT, 1.0) + 1e-9, took
        assert self.pool.state is PoolState.CLOSED

    async def _wind_down(self) -> None:
        """Every job ends once holders let go; stop() returns and closes everything."""
        pool = self.pool
        if self.abrupt_stop:  # stop with work in flight: it is cut at the deadline
            await self._stop()
            self._let_go()
            await self._drive_until(lambda: not self._live_jobs(), "jobs never ended")
        else:
            self._let_go()
            await self._drive_until(
                lambda: not self._live_jobs() and not self.book.returning,
                "jobs never ended, or their connections never came back",
            )
            self.sizes_add_up()
            self.connections_match_the_fake()
            self.no_waiter_left_behind()
            self.fifo()
            assert not self.book.busy
            assert not self.book.waiters
            await self._stop()
        # Cancel requests still on their way (daemon threads) are let arrive.
        await self._drive_until(lambda: not self.cancels.pending, "cancel requests never ended")
        assert self.loop.next_timer() is None, "a timer is left armed after stop()"
        assert pool.state is PoolState.CLOSED
        assert not self.fake.open_connections, self.fake.open_connections
        book = self.book
        assert (book.size, book.opening, self.fake.in_flight) == (0, 0, 0)
        assert not book.idle
        assert not book.busy
        assert not book.waiters
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not pending, pending
        self.no_unexpected_errors()

    async def _clean_up(self) -> None:
        """Best effort after a failure: end everything so the loop closes cleanly."""
        self._let_go()
        if self._pool is not None and self.pool.state is not PoolState.CLOSED:
            self.loop.create_task(self.pool.stop(0.01))
        with contextlib.suppress(Exception):
            await self._drive_until(
                lambda: len(asyncio.all_tasks()) == 1 and not self.cancels.pending,
                "clean-up",
            )
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current:
                task.cancel()
        with contextlib.suppress(Exception):
            await until(lambda: len(asyncio.all_tasks()) == 1, SPIN_LIMIT)

    def teardown(self) -> None:
        """Stop the pool, check nothing is left open or pending, close the loop."""
        try:
            if self._pool is not None and not self.failed:
                self._run(self._wind_down())
        finally:
            try:
                if self._pool is not None:
                    self._run(self._clean_up())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.cancels.release_all()
                self.loop.close()


PoolMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolInvariants = PoolMachine.TestCase
