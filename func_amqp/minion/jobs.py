"""Durable jobs on a minion: its own job queue, and the builder pools it has joined.

A job is a signed method request with a :class:`JobTicket`, taken from a durable queue
(docs/jobs.md). Unlike an interactive call it is acknowledged only once its outcome is
recorded and published to the job's owner, so a minion that dies mid-job leaves it to
the broker: a direct job comes back to this minion when it returns, a pool job goes to
another member. The :class:`JobLedger` makes the job id an idempotency key: a job this
minion has started is never started here again, whatever the broker redelivers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from func_amqp.errors import Code, FuncException, ProtocolError, SecurityError, TransportError
from func_amqp.files import write_text_atomic
from func_amqp.minion.calls import InFlightCall
from func_amqp.minion.security import Caller
from func_amqp.minion.service import MinionService, exception_reply
from func_amqp.protocol import codec, names
from func_amqp.protocol.messages import (
    CancelRequest,
    ExceptionResponse,
    JobEvent,
    JobState,
    MethodRequest,
    MethodResponse,
    ProgressIndication,
    Reply,
)
from func_amqp.transport.base import JobDelivery, WorkConsumer

_log = logging.getLogger(__name__)

LEDGER_RETENTION = 30 * 24 * 3600.0
"""Seconds a ledger remembers a job: far beyond any job's time to live."""

PROGRESS_EVENT_INTERVAL = 2.0
"""Seconds between progress events to a job's owner (followers get every phase live)."""

STARTUP_SETTLE = 1.0
"""Seconds after its job queue opens before a minion starts jobs, so that a cancel
queued behind a job for a minion that was down is seen before the job starts."""

EVENT_RETRY_INTERVAL = 1.0


class JobLedger:
    """An append-only file of the jobs this minion started, finished or was told to cancel.

    One JSON object a line: ``{"job": ID, "at": T, "started": ATTEMPT}``,
    ``{"job": ID, "at": T, "final": EVENT}`` or ``{"job": ID, "at": T, "cancelled": KEY}``.
    Appends survive the minion being killed (the kernel has them); entries older than
    :data:`LEDGER_RETENTION` are dropped when the ledger is opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, dict[str, Any]] = {}
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        horizon = time.time() - LEDGER_RETENTION
        kept: list[bytes] = []
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                record = codec.loads(line)
                job, at = record["job"], float(record["at"])
                if not isinstance(job, str) or not isinstance(record.get("final", {}), dict):
                    raise ValueError("not a ledger entry")
            except (ProtocolError, ValueError, KeyError, TypeError):
                _log.warning("skipping a damaged line in the job ledger %s", self.path)
                continue
            if at < horizon:
                continue
            self._entries.setdefault(job, {}).update(record)
            kept.append(line)
        if len(kept) != len(lines):
            write_text_atomic(self.path, "".join(f"{line.decode('utf-8')}\n" for line in kept))

    def _append(self, record: dict[str, Any]) -> None:
        record["at"] = time.time()
        self._entries.setdefault(record["job"], {}).update(record)
        with self.path.open("ab") as fh:
            fh.write(codec.dumps(record) + b"\n")

    def started(self, job_id: str) -> bool:
        return "started" in self._entries.get(job_id, {})

    def final(self, job_id: str) -> JobEvent | None:
        values = self._entries.get(job_id, {}).get("final")
        return codec.job_event_from_values(values) if values else None

    def cancelled_by(self, job_id: str) -> tuple[str, bool] | None:
        """Who asked to cancel the job before it started here: (ACL key, is the CA)."""
        entry = self._entries.get(job_id, {})
        return (entry["cancelled"], bool(entry.get("by_ca"))) if "cancelled" in entry else None

    def record_start(self, job_id: str, attempt: int) -> None:
        self._append({"job": job_id, "started": attempt})

    def record_final(self, event: JobEvent) -> None:
        self._append({"job": event.job_id, "final": codec.job_event_values(event)})

    def record_cancel(self, job_id: str, caller: Caller) -> None:
        self._append({"job": job_id, "cancelled": caller.key, "by_ca": caller.is_ca})


def tag_subsets(tags: dict[str, str]) -> list[dict[str, str]]:
    """Every subset of ``tags``: a member serves jobs that require any of them."""
    items = sorted(tags.items())
    return [dict(combo) for size in range(len(items) + 1) for combo in itertools.combinations(items, size)]


@dataclass
class _Admitted:
    delivery: JobDelivery
    request: MethodRequest
    caller: Caller
    attempt: int

    @property
    def job_id(self) -> str:
        assert self.request.job is not None
        return self.request.job.job_id

    @property
    def owner(self) -> str:
        assert self.request.job is not None
        return self.request.job.owner


@dataclass
class _Pool:
    """A pool this minion serves: its slots, its consumers, and jobs waiting for a slot."""

    name: str
    slots: int
    running: int = 0
    consumers: list[WorkConsumer] = field(default_factory=list)
    waiting: collections.deque[_Admitted] = field(default_factory=collections.deque)
    paused: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JobWorker:
    """Takes jobs from durable queues and runs them through its minion's service."""

    def __init__(
        self,
        service: MinionService,
        ledger: JobLedger,
        *,
        direct: bool = True,
        pools: dict[str, int] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.ledger = ledger
        self.direct = direct
        self.tags = dict(tags or {})
        self.pools = {name: _Pool(name, slots) for name, slots in (pools or {}).items()}
        self._consumers: list[WorkConsumer] = []
        self._waiting: dict[str, _Admitted] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[str] = set()
        """Jobs admitted here and not yet settled: a second copy of one is dropped."""
        self._settled = asyncio.Event()
        self._last_progress: dict[str, float] = {}

    @property
    def name(self) -> str:
        return self.service.settings.name

    @property
    def extra_slots(self) -> int:
        """Worker threads pool jobs need beyond the minion's own call slots."""
        return sum(pool.slots for pool in self.pools.values())

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        transport = self.service.transport
        if self.direct:
            self._consumers.append(
                await transport.serve_jobs(
                    names.job_queue(self.name),
                    (names.JOBS_EXCHANGE, self.name),
                    self._on_direct,
                    prefetch=self.service.settings.max_concurrent_calls,
                )
            )
        if self.pools:  # cancels of pool jobs nobody has taken yet, kept while it was down
            self._consumers.append(
                await transport.serve_jobs(
                    names.cancel_queue(self.name),
                    (names.CANCELS_EXCHANGE, ""),
                    self._on_cancel,
                    prefetch=self.service.settings.max_concurrent_calls,
                    dead_letter=False,  # an expired cancel has nothing left to cancel
                )
            )
        for pool in self.pools.values():
            for subset in tag_subsets(self.tags):
                key = names.pool_key(pool.name, subset)
                consumer = await transport.serve_jobs(
                    names.pool_queue(key),
                    (names.POOLS_EXCHANGE, key),
                    functools.partial(self._on_pool, pool),
                    prefetch=pool.slots,
                    delivery_limit=names.POOL_DELIVERY_LIMIT,
                )
                pool.consumers.append(consumer)
                self._consumers.append(consumer)
        if self._consumers:
            asyncio.get_running_loop().call_later(STARTUP_SETTLE, self._settled.set)
            _log.info(
                "taking jobs%s%s", " for this minion" if self.direct else "",
                "".join(f"; pool {p.name} with {p.slots} slots" for p in self.pools.values()),
            )

    async def pause(self) -> None:
        """Take no more jobs (shutdown); jobs not started go back to their queues."""
        for consumer in self._consumers:
            await consumer.pause()
        waiting, self._waiting = list(self._waiting.values()), {}
        for admitted in waiting:
            self._active.discard(admitted.job_id)
            await admitted.delivery.release()
        for pool in self.pools.values():
            pool.waiting.clear()

    # --- receiving ------------------------------------------------------------------

    # Each job runs in a task of its own, not in the client library's delivery handler:
    # aio-pika cancels those when the channel closes (a broker restart), and a job must
    # outlive its channel to report its outcome; the broker's redelivery of it is then
    # dropped (still running) or answered from the ledger (finished).

    async def _on_direct(self, delivery: JobDelivery) -> None:
        self._spawn(self._guarded(delivery, self.name, None))

    async def _on_pool(self, pool: _Pool, delivery: JobDelivery) -> None:
        self._spawn(self._guarded(delivery, names.pool_target(pool.name), pool))

    async def _on_cancel(self, delivery: JobDelivery) -> None:
        self._spawn(self._guarded(delivery, names.ANY_MINION, None))

    async def _guarded(self, delivery: JobDelivery, target: str, pool: _Pool | None) -> None:
        """Nothing a job message does may stop the minion taking jobs."""
        try:
            admitted = await self._admit(delivery, target)
            if admitted is None:
                return
            if admitted.job_id in self._active:  # the broker delivered it twice
                _log.info("job %s is already in hand here; a second copy is dropped", admitted.job_id)
                await delivery.ack()
                return
            self._active.add(admitted.job_id)
            try:
                await self._settled.wait()  # a cancel queued behind it is read by now
                if not await self._settled_before(admitted):
                    await self._take(admitted, pool)
            finally:
                if pool is None or admitted not in pool.waiting:
                    self._active.discard(admitted.job_id)
        except Exception:
            _log.exception("unexpected failure handling a job")
            await delivery.reject()

    async def _admit(self, delivery: JobDelivery, target: str) -> _Admitted | None:
        """The job in ``delivery`` if it is a well-formed job signed for this queue;
        anything else is dead-lettered, which hands a job back to its owner (who learns
        it was refused) and drops what is not a job. No event is sent for it: a minion
        must not report on a job id it cannot prove the owner sent.
        (Whether the job may start is :meth:`_settled_before`'s question.)"""
        env = delivery.envelope
        try:
            opcode = codec.check_envelope(env, self.service.settings.max_message_bytes)
            message = codec.decode(env, self.service.settings.max_message_bytes)
            if isinstance(message, CancelRequest):  # behind a job in its queue, or for a pool
                caller = self.service.gate.authenticate(env, opcode, target=target)
                self.cancel(message.call_id, caller)
                await delivery.ack()
                return None
            if not isinstance(message, MethodRequest) or message.job is None or target == names.ANY_MINION:
                raise ProtocolError("only job requests and their cancels belong in a job queue")
            caller = self.service.gate.authenticate(env, opcode, target=target, job=True)
        except (ProtocolError, SecurityError) as exc:
            _log.warning("refused a job message (%s): %s", exc.code.name, exc)
            await delivery.reject()
            return None
        return _Admitted(delivery, message, caller, _attempt(env))

    async def _settled_before(self, job: _Admitted) -> bool:
        """Answer a job this minion has seen before (or must not start) from its ledger."""
        final = self.ledger.final(job.job_id)
        if final is not None:  # done here before: its owner may have missed the event
            await self._report(job.owner, final)
            await job.delivery.ack()
            return True
        if self.ledger.started(job.job_id):
            if job.request.target.startswith("@"):  # a pool job: another member may run it
                _log.warning("job %s was started here before; giving it back to its pool", job.job_id)
                await job.delivery.release()
                return True
            await self._conclude(job, JobState.FAILED, ExceptionResponse(int(Code.INTERNAL_ERROR), "the minion stopped while running this job; it is not run twice"))
            return True
        canceller = self.ledger.cancelled_by(job.job_id)
        if canceller is not None and (canceller[1] or canceller[0] == job.caller.key):  # its submitter, or the CA
            await self._conclude(job, JobState.CANCELLED, ExceptionResponse(int(Code.CANCELLED), "the job was cancelled before it started"))
            return True
        if job.request.deadline < time.time():
            await self._conclude(job, JobState.EXPIRED, ExceptionResponse(int(Code.EXPIRED), "the job's time to live passed before it could start"))
            return True
        try:
            self.service.gate.authorize(job.caller, job.request.full_name)
            method = self.service.interface.get_dispatch_method(job.request.full_name)
            method.check_arguments(job.request.args)
        except FuncException as exc:
            await self._conclude(job, JobState.FAILED, exception_reply(exc, with_traceback=False))
            return True
        return False

    # --- running --------------------------------------------------------------------

    async def _take(self, job: _Admitted, pool: _Pool | None) -> None:
        if pool is None:
            if self.service.call_slots_full:
                await self._waiting_for_slot(job)
            await self.service.acquire_call_slot()
            if job.job_id not in self._waiting and self.ledger.final(job.job_id) is not None:
                self.service.release_call_slot()  # cancelled while it waited
                return
            self._waiting.pop(job.job_id, None)
            try:
                await self._run(job)
            finally:
                self.service.release_call_slot()
            return
        if pool.running >= pool.slots:  # delivered before the pause took effect
            await self._waiting_for_slot(job)
            pool.waiting.append(job)
            return
        await self._run_in_pool(pool, job)

    async def _waiting_for_slot(self, job: _Admitted) -> None:
        self._waiting[job.job_id] = job
        await self._report(job.owner, JobEvent(job.job_id, self.name, JobState.ACCEPTED, time.time(), job.attempt, detail="waiting for a free slot"))

    async def _run_in_pool(self, pool: _Pool, job: _Admitted) -> None:
        pool.running += 1
        await self._adjust(pool)
        await self._run_in_slot(pool, job)

    async def _run_in_slot(self, pool: _Pool, job: _Admitted) -> None:
        """Run a job whose slot is already counted, then give the slot to the next."""
        try:
            await self._run(job)
        finally:
            self._active.discard(job.job_id)
            pool.running -= 1
            while pool.waiting and pool.running < pool.slots:
                nxt = pool.waiting.popleft()
                if self._waiting.pop(nxt.job_id, None) is not None:  # not cancelled meanwhile
                    pool.running += 1
                    self._spawn(self._run_in_slot(pool, nxt))
            await self._adjust(pool)

    async def _adjust(self, pool: _Pool) -> None:
        """Consume the pool's queues only while a slot is free, so the next job goes to a
        member that can start it. With one queue its prefetch (the slots) does that
        alone; with several (tags), a job may arrive just as they fill and wait here."""
        if len(pool.consumers) < 2:
            return
        async with pool.lock:
            full = pool.running + len(pool.waiting) >= pool.slots or self.service.stopping
            if full == pool.paused:
                return
            pool.paused = full
            for consumer in pool.consumers:
                await (consumer.pause() if full else consumer.resume())

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Admitted) -> None:
        request = job.request
        method = self.service.interface.get_dispatch_method(request.full_name)
        self.ledger.record_start(job.job_id, job.attempt)
        detail = f"redelivered (delivery {job.attempt})" if job.attempt > 1 else ""
        await self._report(job.owner, JobEvent(job.job_id, self.name, JobState.STARTED, time.time(), job.attempt, detail=detail))
        call = InFlightCall(f"{job.job_id}:{self.name}", request.full_name, self.service.send_indication)
        call.on_progress = lambda progress: self._progress(job, progress)
        reply = await self.service.execute(call, request, method, job.caller)
        if self.service.stopping and isinstance(reply, ExceptionResponse) and reply.code == Code.CANCELLED:
            # stopped by a shutdown, not by its owner: left unsettled, the broker gives
            # it back (to another member of a pool; here it is reported as interrupted)
            await self.service.finish(call, reply)
            return
        state = JobState.SUCCEEDED if isinstance(reply, MethodResponse) else JobState.FAILED
        if isinstance(reply, ExceptionResponse) and reply.code == Code.CANCELLED:
            state = JobState.CANCELLED
        await self._conclude(job, state, reply)
        await self.service.finish(call, reply)

    def _progress(self, job: _Admitted, progress: ProgressIndication) -> None:
        now = time.monotonic()
        if now - self._last_progress.get(job.job_id, 0.0) < PROGRESS_EVENT_INTERVAL:
            return
        self._last_progress[job.job_id] = now
        event = JobEvent(job.job_id, self.name, JobState.PROGRESS, time.time(), job.attempt, progress=progress)
        self._spawn(self._report(job.owner, event, retry=False))

    async def _conclude(self, job: _Admitted, state: JobState, result: Reply) -> None:
        """Record the outcome, tell the owner, then acknowledge: in that order, so a crash
        between any two steps repeats the report, never the job."""
        assert isinstance(result, (MethodResponse, ExceptionResponse))
        event = JobEvent(job.job_id, self.name, state, time.time(), job.attempt, result=result)
        self.ledger.record_final(event)
        self._last_progress.pop(job.job_id, None)
        self._active.discard(job.job_id)
        await self._report(job.owner, event)
        await job.delivery.ack()

    async def _report(self, owner: str, event: JobEvent, *, retry: bool = True) -> None:
        """Publish ``event`` to ``owner``'s queue, waiting out a broker restart."""
        env = codec.encode(event, agent=self.name, owner=owner)
        self.service.gate.sign(env)
        while True:
            try:
                await self.service.transport.publish_job_event(env)
                return
            except TransportError as exc:
                if not retry:
                    _log.debug("progress event for %s not sent: %s", event.job_id, exc)
                    return
                _log.warning("job event for %s not sent yet (%s); retrying", event.job_id, exc)
                await self.service.transport.wait_connected(EVENT_RETRY_INTERVAL * 10)
                await asyncio.sleep(EVENT_RETRY_INTERVAL)

    # --- cancelling -----------------------------------------------------------------

    def cancel(self, call_id: str, caller: Caller) -> bool:
        """A cancel for a job that is not running here: stop it waiting, or remember it
        so it never starts. ``call_id`` is ``<job id>:<minion>`` or ``<job id>:*``."""
        job_id, _, who = call_id.rpartition(":")
        if not job_id or who not in (self.name, names.ANY_MINION) or self.ledger.final(job_id) is not None:
            return False
        waiting = self._waiting.pop(job_id, None)
        if waiting is not None:
            for pool in self.pools.values():
                if waiting in pool.waiting:
                    pool.waiting.remove(waiting)
            self._spawn(self._conclude(waiting, JobState.CANCELLED, ExceptionResponse(int(Code.CANCELLED), "the job was cancelled while it waited for a slot")))
            return True
        if self.ledger.started(job_id):
            return False
        self.ledger.record_cancel(job_id, caller)
        return True


def _attempt(env: Any) -> int:
    """Which delivery this is: quorum queues count them in ``x-delivery-count``."""
    count = env.headers.get(names.H_DELIVERY_COUNT)
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count + 1
    return 2 if env.redelivered else 1
