"""Final replies of calls that finished a moment ago, kept for a caller that missed one.

Over a transport that cannot tell the minion a reply found nobody (AMQP 1.0 through
RabbitMQ: an exchange takes what no queue takes), a reply sent while the caller's reply
address is away in a broker restart is lost. The caller, back on its feet, follows the
call again (``_subscribe_request``); a call finished within ``KEEP_SECONDS`` answers with
its kept reply (docs/protocol.md §12). Kept as sent (encoded bytes, which is what the
byte bound counts), bounded in count and bytes, oldest out first.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable

from func_amqp.protocol.envelope import Envelope

KEEP_SECONDS = 60.0
"""How long a final reply stays; a reconnect (1 s apart) and a follow take seconds."""
MAX_REPLIES = 1024
MAX_BYTES = 16 * 1024 * 1024
"""Encoded size of all kept replies; a reply larger than this is not kept."""


@dataclass(frozen=True)
class FinishedCall:
    full_name: str
    """``module.method``: a follower needs the ACL grant for it, as for a running call."""
    request_id: str | None
    """The ``message_id`` of the request that started the call."""
    reply: Envelope
    """The final reply as sent to the call's first follower."""
    expires: float

    @property
    def size(self) -> int:
        return len(self.reply.body)


class RecentReplies:
    """Call id -> the final reply of a call that finished within ``keep`` seconds."""

    def __init__(
        self,
        keep: float = KEEP_SECONDS,
        *,
        max_replies: int = MAX_REPLIES,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keep = keep
        self._max_replies = max_replies
        self._max_bytes = max_bytes
        self._clock = clock
        self._calls: collections.OrderedDict[str, FinishedCall] = collections.OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call_id: str, full_name: str, request_id: str | None, reply: Envelope) -> None:
        """Keep ``reply`` under ``call_id``, replacing an older one."""
        now = self._clock()
        self._forget(call_id)
        self.prune(now)
        finished = FinishedCall(full_name, request_id, reply, now + self._keep)
        if finished.size > self._max_bytes or self._max_replies <= 0:
            return
        while self._calls and (len(self._calls) >= self._max_replies or self._bytes + finished.size > self._max_bytes):
            self._forget(next(iter(self._calls)))
        self._calls[call_id] = finished
        self._bytes += finished.size

    def get(self, call_id: str) -> FinishedCall | None:
        self.prune()
        return self._calls.get(call_id)

    def prune(self, now: float | None = None) -> None:
        """Forget what has been kept long enough (also called now and then when idle)."""
        now = self._clock() if now is None else now
        while self._calls:
            call_id, oldest = next(iter(self._calls.items()))
            if oldest.expires > now:
                return
            self._forget(call_id)

    def _forget(self, call_id: str) -> None:
        finished = self._calls.pop(call_id, None)
        if finished is not None:
            self._bytes -= finished.size
