"""Durable jobs through an :class:`AsyncOverlord`: submit, status, wait, attach, cancel.

    async with AsyncOverlord("builder*") as ol:
        jobs = JobClient(ol)
        job_id = await jobs.submit("mock", "build", [srpm_url, "fedora-40-x86_64"])
        job_id = await jobs.submit_to_pool("builders", "mock", "build", [...], tags={"arch": "x86_64"})
        code, results = await jobs.wait(job_id)

The job outlives this process: ``JobClient(...).status(job_id)`` in another one, on the
same host and user, collects it (docs/jobs.md).
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from typing import Any, Callable, Sequence

from func_amqp.config import ENV_JOB_OWNER
from func_amqp.errors import Func_Client_Exception, RemoteCallError
from func_amqp.overlord.caller import CONTROL_TIMEOUT, AsyncOverlord, EventCallback, event_listener, minion_call_id
from func_amqp.overlord.jobs import (
    JOB_ID_FINISHED,
    JOB_ID_LOST_IN_SPACE,
    JOB_ID_REMOTE_ERROR,
    STORE_POLL_INTERVAL,
    JobCollector,
    JobStore,
    deciding_entries,
    default_owner,
    job_status,
    new_job_id,
    new_record,
    submit,
)
from func_amqp.protocol import names
from func_amqp.protocol.messages import CancelRequest, JobState
from func_amqp.utils import remote_error_value

RecordCallback = Callable[[dict[str, Any]], None]

DONE_CODES = frozenset({JOB_ID_FINISHED, JOB_ID_REMOTE_ERROR, JOB_ID_LOST_IN_SPACE})


class JobClient:
    """The jobs of one owner (default ``user.host``), through a connected overlord."""

    def __init__(self, overlord: AsyncOverlord, *, owner: str | None = None) -> None:
        self.overlord = overlord
        self.owner = owner or os.environ.get(ENV_JOB_OWNER) or overlord.config.job_owner or default_owner()
        if not names.valid_minion_name(self.owner):
            raise Func_Client_Exception(f"invalid job owner {self.owner!r}: use lower-case letters, digits, '.', '-' and '_'")
        self.store = JobStore(overlord.paths.job_store_dir)
        self._collector: JobCollector | None = None
        self._events_ready = False
        self._events_lock = asyncio.Lock()

    @property
    def collector(self) -> JobCollector:
        if self._collector is None:
            rpc = self.overlord.rpc
            self._collector = JobCollector(
                rpc.transport, self.store, self.owner, self.overlord.config.max_message_bytes, rpc.verify, rpc.signer_name
            )
        return self._collector

    def _ttl(self, ttl: float | None) -> float:
        value = float(ttl) if ttl is not None else self.overlord.config.job_ttl
        if not value > 0:
            raise Func_Client_Exception(f"a job's time to live must be greater than 0 seconds, got {ttl}")
        return value

    # --- submitting -------------------------------------------------------------------

    async def submit(self, module: str, method: str, args: Sequence[Any] = (), *, ttl: float | None = None) -> str:
        """Send a job to every minion the overlord's spec names, up or down; its id."""
        targets = await self.overlord.minions()
        job_id = new_job_id(self.overlord.server_spec, module, method)
        record = new_record(job_id, self.owner, self.overlord.server_spec, module, method, list(args), self._ttl(ttl), None, None, targets)
        await self._send(record)
        return job_id

    async def submit_to_pool(
        self, pool: str, module: str, method: str, args: Sequence[Any] = (), *, tags: dict[str, str] | None = None, ttl: float | None = None
    ) -> str:
        """Send a job that exactly one free member of ``pool`` with ``tags`` runs; its id."""
        tags = dict(tags or {})
        for text in (pool, *tags, *tags.values()):
            if not names.valid_tag(text):
                raise Func_Client_Exception(
                    f"invalid pool or tag {text!r}: use lower-case letters, digits, '.', '-' and '_'"
                )
        if len(tags) > names.MAX_TAGS:
            raise Func_Client_Exception(f"a pool job may require at most {names.MAX_TAGS} tags, got {len(tags)}")
        try:
            names.pool_key(pool, tags)
        except ValueError as exc:
            raise Func_Client_Exception(str(exc)) from None
        spec = names.pool_target(pool)
        job_id = new_job_id(spec, module, method)
        record = new_record(job_id, self.owner, spec, module, method, list(args), self._ttl(ttl), pool, tags, [spec])
        await self._send(record)
        return job_id

    async def _send(self, record: dict[str, Any]) -> None:
        rpc = self.overlord.rpc
        async with self._events_lock:  # once, however many submit at the same time
            if not self._events_ready:
                await rpc.transport.open_job_events(self.owner, None)
                self._events_ready = True
        await submit(rpc.transport, self.store, rpc.signed, record, retry_until=time.time() + self.overlord.timeout)

    # --- reading ----------------------------------------------------------------------

    async def record(self, job_id: str) -> dict[str, Any] | None:
        """The job as recorded, after reading the events waiting for this owner."""
        await self.collector.drain()
        return self.store.get(job_id)

    async def records(self) -> list[dict[str, Any]]:
        await self.collector.drain()
        return self.store.all()

    async def status(self, job_id: str) -> tuple[int, Any]:
        """func's ``(code, results)``: RUNNING 0, FINISHED 1, LOST_IN_SPACE 2, PARTIAL 3, REMOTE_ERROR 4."""
        return job_status(await self.record(job_id))

    async def wait(self, job_id: str, timeout: float | None = None, on_change: RecordCallback | None = None) -> tuple[int, Any]:
        """Until every minion's part of the job has ended (or ``timeout``): its status.

        ``on_change`` gets the record each time it changes, also by another process.
        """
        give_up = time.monotonic() + timeout if timeout is not None else None
        seen: dict[str, Any] | None = None
        async with self.collector.reading():
            while True:
                record = self.store.get(job_id)
                if record is not None and record != seen:
                    seen = copy.deepcopy(record)
                    if on_change is not None:
                        on_change(record)
                code, results = job_status(record)
                remaining = give_up - time.monotonic() if give_up is not None else STORE_POLL_INTERVAL
                if code in DONE_CODES or remaining <= 0:
                    return code, results
                await self.collector.wait_change(min(STORE_POLL_INTERVAL, remaining))

    async def attach(self, job_id: str, on_event: EventCallback, *, timeout: float | None = None, on_change: RecordCallback | None = None) -> tuple[int, Any]:
        """:meth:`wait`, with live progress and log lines from every minion running it."""
        followed: set[str] = set()
        tasks: set[asyncio.Task[Any]] = set()
        follow_for = timeout or self.overlord.timeout

        def changed(record: dict[str, Any]) -> None:
            for name, entry in deciding_entries(record).items():
                if name in followed or name.startswith("@") or JobState(entry["state"]) not in _FOLLOWABLE:
                    continue
                followed.add(name)
                cid = minion_call_id(job_id, name)
                tasks.add(asyncio.ensure_future(self._follow(name, cid, follow_for, on_event)))
            if on_change is not None:
                on_change(record)

        try:
            return await self.wait(job_id, timeout, changed)
        finally:
            for task in tasks:
                task.cancel()

    async def _follow(self, minion: str, cid: str, timeout: float, on_event: EventCallback) -> None:
        try:
            await self.overlord.rpc.follow(minion, cid, timeout, event_listener(minion, cid, on_event))
        except RemoteCallError:
            pass  # finished before we attached, or not reachable: the job's events still say how it ended

    # --- cancelling -------------------------------------------------------------------

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop the job wherever it has not ended: ``{minion: what happened}``.

        Running: the minion cancels it and reports it CANCELLED. Waiting in a minion's
        queue: a cancel waits behind it, so it never starts. Waiting in a pool: the
        cancel waits in every member's cancel queue (for members that are down too), and
        whichever takes the job reports it CANCELLED without starting it.
        """
        record = await self.record(job_id)
        if record is None:
            raise Func_Client_Exception(f"no job {job_id!r} is recorded here; 'func-amqp jobs list' shows the jobs there are")
        self.store.update(job_id, _mark_cancel_requested)
        rpc = self.overlord.rpc
        answers: dict[str, Any] = {}
        for name, entry in deciding_entries(record).items():
            state = JobState(entry["state"])
            if state.final:
                answers[name] = f"already {state.value}"
                continue
            if name.startswith("@"):  # every member keeps it until the job expires, also while down
                cid = f"{job_id}:{names.ANY_MINION}"
                cancel = rpc.signed(CancelRequest(cid, record["expires"]), cid, names.ANY_MINION)
                await rpc.transport.submit_job((names.CANCELS_EXCHANGE, ""), cancel)
                answers[name] = "every member of the pool will refuse to start it"
                continue
            cid = minion_call_id(job_id, name)
            if state is JobState.SENT and not record.get("pool"):
                queued = rpc.signed(CancelRequest(cid, record["expires"]), cid, name)
                await rpc.transport.submit_job((names.JOBS_EXCHANGE, name), queued)
            try:
                answers[name] = await rpc.cancel(name, cid, CONTROL_TIMEOUT)
            except RemoteCallError as exc:
                answers[name] = "a cancel waits for it in its queue" if state is JobState.SENT else remote_error_value(exc)
        return answers


def _mark_cancel_requested(record: dict[str, Any]) -> bool:
    record["cancel_requested"] = time.time()
    return True


_FOLLOWABLE = frozenset({JobState.ACCEPTED, JobState.STARTED, JobState.PROGRESS})
