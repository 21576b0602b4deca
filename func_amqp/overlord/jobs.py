"""Jobs that outlive their caller: submit, collect, status, cancel (docs/jobs.md).

func's ``async`` mode forked a child that polled every minion and kept results in a
shelve file; both died with the machine's /var/tmp. Here a job is a durable message:
each targeted minion (or one member of a pool) takes it from a broker queue, and
publishes every change of its state to the job's *owner*, a durable queue named after
the submitting user and host. Whoever reads that queue next (this process, a later
``func ... --jobstatus``, ``func-amqp jobs``) folds the events into the job store, one
JSON file per job under the state directory. So a job started by one process is
collected by another, and a minion's events wait in the broker until someone reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import hashlib
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from func_amqp import utils
from func_amqp.errors import ProtocolError, RemoteError, TransportError, Unroutable
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import (
    JobEvent,
    JobState,
    JobTicket,
    MethodRequest,
    MethodResponse,
    Opcode,
)
from func_amqp.transport.base import Delivery, Transport, WorkConsumer

_log = logging.getLogger(__name__)

# func's job status codes (func/jobthing.py), returned by job_status()
JOB_ID_RUNNING = 0
JOB_ID_FINISHED = 1
JOB_ID_LOST_IN_SPACE = 2
JOB_ID_PARTIAL = 3
JOB_ID_REMOTE_ERROR = 4

QUIET_PERIOD = 0.3
"""Seconds without a new event after which the owner's queue counts as read."""

MAX_DRAIN_SECONDS = 10.0
STORE_POLL_INTERVAL = 0.5
"""While waiting, how often to look at the store for events another process collected."""

_RANK = {
    JobState.SENT: 0,
    JobState.ACCEPTED: 1,
    JobState.STARTED: 2,
    JobState.PROGRESS: 3,
}
"""Order of the states before the final one: an older event never overwrites a newer one."""


def default_owner() -> str:
    """``user.host``, made a valid queue-safe name: jobs are collected where they were sent."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry, in a container say
        user = f"uid{os.getuid()}"
    raw = f"{user}.{socket.gethostname()}".lower()
    return re.sub(r"[^a-z0-9._-]+", "-", raw)[:200].strip("._-") or "overlord"


def new_job_id(spec: str, module: str, method: str) -> str:
    """func's job id: ``<spec>-<module>-<method>-<time>``, with ``-`` inside a part made ``_``."""
    parts = [part.replace("-", "_") for part in (spec, module, method)]
    return "-".join([*parts, repr(time.time())])


# --- what a job record says ------------------------------------------------------------


def result_value(result: dict[str, Any] | None) -> Any:
    """A stored result as func returns it: the value, or a REMOTE_ERROR list."""
    if not result:
        return utils.remote_error(JobState.SENT.value, "no result yet")
    reply = codec.job_result_from_values(result)
    if isinstance(reply, MethodResponse):
        return reply.result
    return utils.remote_error_value(RemoteError(reply.code, reply.text, reply.exception_type, reply.traceback))


def deciding_entries(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The minions whose outcome is the job's: all of them for a direct job; for a pool
    job the member that took it last (earlier takers were interrupted)."""
    minions: dict[str, dict[str, Any]] = record["minions"]
    if not record.get("pool"):
        return minions
    current = {name: entry for name, entry in minions.items() if not entry.get("superseded")}
    return current or minions


def job_status(record: dict[str, Any] | None) -> tuple[int, Any]:
    """func's ``(code, results)`` for a job record."""
    if record is None:
        return JOB_ID_LOST_IN_SPACE, 0
    entries = deciding_entries(record)
    finished = {name: entry_value(e) for name, e in entries.items() if JobState(e["state"]).final}
    if entries and len(finished) == len(entries):
        if all(JobState(e["state"]) is JobState.NEVER_REACHED for e in entries.values()):
            return JOB_ID_REMOTE_ERROR, finished
        return JOB_ID_FINISHED, finished
    return (JOB_ID_PARTIAL, finished) if finished else (JOB_ID_RUNNING, {})


def entry_value(entry: dict[str, Any]) -> Any:
    """One minion's outcome as func returns it: its result, or a REMOTE_ERROR that says
    why there is none (expired, never reached, dead-lettered)."""
    if entry.get("result"):
        return result_value(entry["result"])
    state = JobState(entry["state"])
    return utils.remote_error(f"job {state.value}", entry.get("detail") or state.value.replace("_", " "))


def apply_event(record: dict[str, Any], event: JobEvent) -> bool:
    """Fold ``event`` into ``record``; False if it changes nothing (old or repeated)."""
    minions: dict[str, dict[str, Any]] = record["minions"]
    if record.get("pool"):
        placeholder = names.pool_target(record["pool"])
        given_up = event.minion == placeholder and event.state.final  # by the broker
        if event.minion != placeholder:
            minions.pop(placeholder, None)  # taken: the placeholder goes
        for name, other in minions.items():
            if name == event.minion or JobState(other["state"]).final or other.get("superseded"):
                continue
            if given_up or event.attempt > other.get("attempt", 1):
                other["superseded"] = True
                other["detail"] = "interrupted; " + (event.detail if given_up else f"delivery {event.attempt} went to {event.minion}")
    entry = minions.get(event.minion)
    if entry is not None:
        current = JobState(entry["state"])
        if current.final:
            return False
        if not event.state.final and (entry.get("superseded") or _RANK.get(event.state, 0) < _RANK.get(current, 0)):
            return False
        if event.state is current and event.at <= entry.get("at", 0):
            return False  # a repeat (the minion re-sends after a reconnect) or older news
    values = codec.job_event_values(event)
    new = {"state": event.state.value, "at": event.at, "attempt": event.attempt, "detail": event.detail}
    if "result" in values:
        new["result"] = values["result"]
    if "progress" in values:
        new["progress"] = values["progress"]
    elif entry is not None and "progress" in entry:
        new["progress"] = entry["progress"]
    if entry is not None and entry.get("superseded"):
        new["superseded"] = True
        new["detail"] = entry["detail"]
    minions[event.minion] = new
    return True


# --- the store ---------------------------------------------------------------------------


class JobStore:
    """One JSON file per job under ``directory``; writers serialise on a lock file."""

    _lock_fds: dict[Path, int] = {}
    """One open lock file per directory and process, shared by its stores."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, job_id: str) -> Path:
        return self.directory / (hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive against every other process writing here. The lock file stays open:
        every job event takes this lock, thousands a minute. Only the event loop's
        thread writes, so one lock per process is enough."""
        fd = self._lock_fds.get(self.directory)
        if fd is None:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = self._lock_fds[self.directory] = os.open(self.directory / ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def get(self, job_id: str) -> dict[str, Any] | None:
        try:
            record = codec.loads(self._path(job_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ProtocolError) as exc:
            _log.warning("cannot read the record of job %s: %s", job_id, exc)
            return None
        return record if isinstance(record, dict) and record.get("id") == job_id else None

    def put(self, record: dict[str, Any]) -> None:
        with self._locked():
            self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        """Replace the record in one step. Under the lock, so one temporary name per
        process is enough (cheaper than a fresh random one for every event)."""
        path = self._path(record["id"])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # the wire's JSON, so that bytes in arguments and results are kept as they came
        tmp.write_bytes(codec.dumps(record) + b"\n")
        os.replace(tmp, path)

    def update(self, job_id: str, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """Read, ``change`` and write back under the lock; None for an unknown job."""
        with self._locked():
            record = self.get(job_id)
            if record is not None and change(record):
                self._write(record)
            return record

    def apply(self, event: JobEvent) -> dict[str, Any] | None:
        return self.update(event.job_id, lambda record: apply_event(record, event))

    def all(self) -> list[dict[str, Any]]:
        """Every job recorded, oldest first."""
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = codec.loads(path.read_bytes())
            except (OSError, ProtocolError):
                continue
            if isinstance(record, dict) and "id" in record:
                records.append(record)
        return sorted(records, key=_created)

    def forget(self, job_id: str) -> bool:
        with self._locked():
            try:
                self._path(job_id).unlink()
            except FileNotFoundError:
                return False
        return True


def _created(record: dict[str, Any]) -> float:
    created = record.get("created")
    return float(created) if isinstance(created, (int, float)) and not isinstance(created, bool) else 0.0


# --- reading the owner's queue ----------------------------------------------------------


Verifier = Callable[[Envelope, str], bool]
"""Whether an envelope is signed by the named party (no trust store: always true)."""


class JobCollector:
    """Folds the events in the owner's durable queue into the store, as they arrive."""

    def __init__(self, transport: Transport, store: JobStore, owner: str, max_bytes: int, verify: Verifier, me: str) -> None:
        self.transport = transport
        self.store = store
        self.owner = owner
        self._max_bytes = max_bytes
        self._verify = verify
        self._me = me
        self._consumer: WorkConsumer | None = None
        self._changed = asyncio.Condition()
        self._last = time.monotonic()
        self._readers = 0

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Consume the owner's queue while inside: events wait in the broker otherwise,
        for whichever process reads next."""
        self._readers += 1
        try:
            if self._readers == 1:
                if self._consumer is None:
                    self._consumer = await self.transport.open_job_events(self.owner, self._on_delivery)
                else:
                    await self._consumer.resume()
            yield
        finally:
            self._readers -= 1
            if self._readers == 0 and self._consumer is not None:
                await self._consumer.pause()

    async def drain(self) -> None:
        """Read what is waiting in the owner's queue now."""
        async with self.reading():
            began = time.monotonic()
            self._last = began
            while time.monotonic() - self._last < QUIET_PERIOD and time.monotonic() - began < MAX_DRAIN_SECONDS:
                await asyncio.sleep(QUIET_PERIOD / 3)

    async def wait_change(self, timeout: float) -> None:
        """Until an event arrives or ``timeout`` passes."""
        async with self._changed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def _on_delivery(self, delivery: Delivery) -> None:
        self._last = time.monotonic()
        try:
            event = self.event_from(delivery.envelope)
        except ProtocolError as exc:
            _log.warning("dropped a malformed job event: %s", exc)
            event = None
        if event is not None:
            self.store.apply(event)
        await delivery.ack()
        async with self._changed:
            self._changed.notify_all()

    def event_from(self, env: Envelope) -> JobEvent | None:
        """The job event in ``env``: a minion's signed event, or one of our own requests
        that the broker dead-lettered (expired, or past its delivery limit)."""
        opcode = codec.check_envelope(env, self._max_bytes)
        if opcode is Opcode.METHOD_REQUEST:
            request = codec.decode(env, self._max_bytes)
            assert isinstance(request, MethodRequest)
            if request.job is None or not self._verify(env, self._me):
                _log.warning("dropped a dead-lettered request that is not one of this owner's jobs")
                return None
            reason = str(env.headers.get(names.H_DEATH_REASON, "rejected"))
            state = JobState.EXPIRED if reason == "expired" else JobState.DEAD_LETTERED
            count = env.headers.get(names.H_DELIVERY_COUNT)
            detail = {
                "expired": "its time to live passed while it waited in the queue",
                "rejected": "refused by the minion: malformed, or its signature not accepted there (the minion's log says why)",
                "delivery_limit": f"given up after {names.POOL_DELIVERY_LIMIT} deliveries (each taker stopped or crashed)",
            }.get(reason, f"dead-lettered by the broker ({reason})")
            attempt = count + 1 if isinstance(count, int) and not isinstance(count, bool) else 1
            return JobEvent(request.job.job_id, request.target, state, time.time(), attempt, detail=detail)
        message = codec.decode(env, self._max_bytes)
        if not isinstance(message, JobEvent):
            _log.warning("dropped a message that is not a job event from the job event queue")
            return None
        if not self._verify(env, message.minion):
            return None
        return message


# --- submitting ---------------------------------------------------------------------------


Signer = Callable[[Any, str, str], Envelope]
"""Encode and sign a request: (message, correlation id, signed target) -> envelope."""


def new_record(job_id: str, owner: str, spec: str, module: str, method: str, args: list[Any], ttl: float, pool: str | None, tags: dict[str, str] | None, targets: list[str]) -> dict[str, Any]:
    now = time.time()
    return {
        "id": job_id,
        "owner": owner,
        "spec": spec,
        "module": module,
        "method": method,
        "args": args,
        "created": now,
        "expires": now + ttl,
        "pool": pool,
        "tags": dict(tags or {}),
        "minions": {t: {"state": JobState.SENT.value, "at": now, "attempt": 1, "detail": ""} for t in targets},
        "cancel_requested": None,
    }


async def submit(
    transport: Transport,
    store: JobStore,
    sign: Signer,
    record: dict[str, Any],
    *,
    retry_until: float,
) -> dict[str, Any]:
    """Record the job in ``store`` and send it to each of its targets. The owner's
    event queue must exist already (``open_job_events``): events need a place to wait."""
    job = JobTicket(record["id"], record["owner"])
    store.put(record)
    pool = record.get("pool")

    async def one(target: str) -> None:
        request = MethodRequest(record["module"], record["method"], record["args"], record["expires"], target, job)
        env = sign(request, f"{job.job_id}:{target}", target)
        route = (names.POOLS_EXCHANGE, names.pool_key(pool, record["tags"])) if pool else (names.JOBS_EXCHANGE, target)
        while True:
            try:
                await transport.submit_job(route, env)
                return
            except Unroutable:
                detail = (
                    f"no member of pool {pool!r} has the tags {record['tags']}" if pool
                    else f"minion {target} has no job queue: it has never run with jobs enabled"
                )
            except TransportError as exc:
                remaining = retry_until - time.time()
                if remaining > 0 and await transport.wait_connected(remaining):
                    await asyncio.sleep(0.2)
                    continue
                detail = f"the job could not be sent: {exc}"
            store.apply(JobEvent(job.job_id, target, JobState.NEVER_REACHED, time.time(), detail=detail))
            return

    await asyncio.gather(*(one(t) for t in record["minions"]))
    return store.get(job.job_id) or record


def code_name(code: int) -> str:
    return {
        JOB_ID_RUNNING: "running",
        JOB_ID_FINISHED: "finished",
        JOB_ID_LOST_IN_SPACE: "lost in space",
        JOB_ID_PARTIAL: "partial",
        JOB_ID_REMOTE_ERROR: "remote error",
    }.get(code, str(code))


__all__ = [
    "JOB_ID_FINISHED",
    "JOB_ID_LOST_IN_SPACE",
    "JOB_ID_PARTIAL",
    "JOB_ID_REMOTE_ERROR",
    "JOB_ID_RUNNING",
    "JobCollector",
    "JobStore",
    "apply_event",
    "default_owner",
    "job_status",
    "new_job_id",
    "new_record",
    "submit",
]
