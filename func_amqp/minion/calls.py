"""A running method call as the minion tracks it: followers, indications, cancel.

Module code reports from its worker thread; reports are handed to the event loop,
coalesced (the latest progress wins, log lines are batched every ``FLUSH_INTERVAL``)
and sent, in order, to every follower: the caller, and anyone who subscribed since.
The final reply goes out only after every indication before it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, NamedTuple

from func_amqp.errors import TransportError
from func_amqp.minion.progress import CallContext, Progress
from func_amqp.protocol.messages import LogIndication, ProgressIndication, Reply
from func_amqp.security.pair_keys import PairKey

_log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1
"""Seconds between indication batches: live enough for a person, cheap for the broker."""

LOG_BATCH = 500
MAX_PENDING_LINES = 20_000
"""Lines kept between two flushes; older ones are dropped with a note."""
MAX_QUEUED_BATCHES = 200
"""Log batches waiting for slow followers; beyond it new lines are dropped with a note."""


class Follower(NamedTuple):
    """Where a call's indications and final reply go."""

    reply_to: str
    correlation_id: str
    reply_key: PairKey | None = None
    """What they are MAC'd with for this follower (None: signed)."""


SendReply = Callable[[Follower, Reply], Awaitable[None]]


class InFlightCall:
    """One accepted call between its start and its final reply."""

    def __init__(self, call_id: str, full_name: str, send_indication: SendReply, *, request_id: str | None = None) -> None:
        self.call_id = call_id
        self.full_name = full_name
        self.request_id = request_id
        """The ``message_id`` of the request that started the call."""
        self.followers: list[Follower] = []
        self.last_progress: ProgressIndication | None = None
        self.finished = False
        self.on_progress: Callable[[ProgressIndication], None] | None = None
        """Told each new phase as it is sent (a job reports it to the job's owner too)."""
        self._send = send_indication
        self._loop = asyncio.get_running_loop()
        self._pending_progress: ProgressIndication | None = None
        self._pending_lines: list[str] = []
        self._dropped = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        # made by the first indication: most calls (a ping, say) report nothing
        self._outbox: asyncio.Queue[ProgressIndication | LogIndication | None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._catch_up: set[asyncio.Task[None]] = set()
        self.context = CallContext(call_id, on_progress=self._progress_from_thread, on_log=self._log_from_thread)

    # --- from the worker thread ---------------------------------------------------------

    def _progress_from_thread(self, progress: Progress) -> None:
        self._loop.call_soon_threadsafe(self._add_progress, progress)

    def _log_from_thread(self, lines: list[str]) -> None:
        self._loop.call_soon_threadsafe(self._add_lines, lines)

    # --- on the loop --------------------------------------------------------------------

    def follow(self, follower: Follower) -> None:
        """Add a follower; it gets the current phase at once, then what follows."""
        self.followers.append(follower)
        if self.last_progress is not None:
            self._queue_to(follower, self.last_progress)

    def _add_progress(self, progress: Progress) -> None:
        self._pending_progress = ProgressIndication(progress.phase, progress.current, progress.total, progress.message)
        self._schedule_flush()

    def _add_lines(self, lines: list[str]) -> None:
        self._pending_lines.extend(lines)
        overflow = len(self._pending_lines) - MAX_PENDING_LINES
        if overflow > 0:
            del self._pending_lines[:overflow]
            self._dropped += overflow
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self.finished:
            self._flush_handle = self._loop.call_later(FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._dropped:
            self._queue(LogIndication([f"[{self._dropped} log lines dropped: followers too slow]"]))
            self._dropped = 0
        lines, self._pending_lines = self._pending_lines, []
        for start in range(0, len(lines), LOG_BATCH):
            batch = lines[start : start + LOG_BATCH]
            if self._outbox is not None and self._outbox.qsize() >= MAX_QUEUED_BATCHES:
                self._dropped += len(batch)  # reported with the next flush
                continue
            self._queue(LogIndication(batch))
        if self._pending_progress is not None:
            self.last_progress, self._pending_progress = self._pending_progress, None
            self._queue(self.last_progress)
            if self.on_progress is not None:
                self.on_progress(self.last_progress)

    def _queue_to(self, follower: Follower, item: ProgressIndication) -> None:
        """The current phase for one new follower, sent in order with the rest."""
        task = self._loop.create_task(self._send_quietly(follower, item))
        self._catch_up.add(task)
        task.add_done_callback(self._catch_up.discard)

    def _queue(self, item: ProgressIndication | LogIndication) -> None:
        """Hand an indication to the pump, starting it on first use: most calls (a
        ping, say) report nothing and need no task of their own."""
        if self._outbox is None:
            self._outbox = asyncio.Queue()
            self._pump = self._loop.create_task(self._pump_outbox(self._outbox))
        self._outbox.put_nowait(item)

    async def _pump_outbox(self, outbox: asyncio.Queue[ProgressIndication | LogIndication | None]) -> None:
        while True:
            item = await outbox.get()
            if item is None:
                return
            for follower in list(self.followers):
                await self._send_quietly(follower, item)

    async def _send_quietly(self, follower: Follower, item: Reply) -> None:
        """Indications are best effort: a follower that is gone misses them."""
        try:
            await self._send(follower, item)
        except TransportError as exc:
            _log.debug("indication for %s not delivered to %s: %s", self.call_id, follower.reply_to, exc)

    async def close(self) -> None:
        """Send what is pending and stop; the final reply may go out after this."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()
        self.finished = True
        if self._catch_up:
            await asyncio.gather(*self._catch_up)
        if self._outbox is not None and self._pump is not None:
            self._outbox.put_nowait(None)
            await self._pump
