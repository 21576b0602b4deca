"""In-memory transport: the broker's semantics inside one event loop, for fast tests.

``memory://NAME`` URLs share one :class:`MemoryHub` per name in the process. It keeps
the behaviours the upper layers rely on: unroutable sends to absent minions, one
minion per name, prefetch, per-message deadlines, dead-lettering, topic events.
It is a test twin, not a broker: nothing crosses a process boundary.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import time
import uuid
from dataclasses import dataclass, field

from func_amqp.errors import TransportError, Unroutable
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope
from func_amqp.transport.base import Delivery, Handler, Reattached, Transport

_hubs: dict[str, "MemoryHub"] = {}


@dataclass
class _Minion:
    handler: Handler
    slots: asyncio.Semaphore
    owner: "MemoryTransport"


@dataclass
class MemoryHub:
    """The shared state behind one ``memory://NAME`` URL."""

    minions: dict[str, _Minion] = field(default_factory=dict)
    replies: dict[str, tuple[Handler, "MemoryTransport"]] = field(default_factory=dict)
    events: list[tuple[str, Handler, "MemoryTransport"]] = field(default_factory=list)
    dead_letters: list[Envelope] = field(default_factory=list)


def hub(url: str) -> MemoryHub:
    return _hubs.setdefault(url, MemoryHub())


def _topic_match(pattern: str, key: str) -> bool:
    return fnmatch.fnmatchcase(key, pattern.replace("#", "*"))


class _MemoryDelivery:
    __slots__ = ("envelope", "_hub", "_slots", "_settled")

    def __init__(self, envelope: Envelope, hub_: MemoryHub, slots: asyncio.Semaphore | None) -> None:
        self.envelope = envelope
        self._hub = hub_
        self._slots = slots
        self._settled = slots is None

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        if self._slots is not None:
            self._slots.release()
        return True

    async def ack(self) -> None:
        self._settle()

    async def reject(self) -> None:
        if self._settle():
            self._hub.dead_letters.append(self.envelope)


class MemoryTransport(Transport):
    def __init__(self, url: str = "memory://default") -> None:
        self.url = url
        self._hub = hub(url)
        self._connected = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._reattached: list[Reattached] = []

    def reattach(self) -> None:
        """What a reconnect does over a transport that may lose replies meanwhile
        (AMQP 1.0): tell each of this client's reply addresses that it receives again."""
        for callback in list(self._reattached):
            callback()

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        h = self._hub
        for name in [n for n, m in h.minions.items() if m.owner is self]:
            del h.minions[name]
        for name in [n for n, (_, owner) in h.replies.items() if owner is self]:
            del h.replies[name]
        h.events[:] = [e for e in h.events if e[2] is not self]
        for task in list(self._tasks):
            task.cancel()

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def wait_connected(self, timeout: float) -> bool:
        return self._connected

    def _check(self) -> None:
        if not self._connected:
            raise TransportError("the transport is not connected; call connect() first")

    def _spawn(self, handler: Handler, delivery: _MemoryDelivery) -> None:
        task: asyncio.Future[None] = asyncio.ensure_future(handler(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _deliver(self, minion: _Minion, env: Envelope, *, broadcast: bool = False) -> None:
        env = copy.deepcopy(env)
        if broadcast:  # broadcasts and control requests have their own queue and window
            self._spawn(minion.handler, _MemoryDelivery(env, self._hub, None))
            return

        async def run(delivery: Delivery) -> None:
            await minion.slots.acquire()
            if env.deadline is not None and env.deadline < time.time():
                minion.slots.release()  # expired in the queue: dropped, as a TTL would
                return
            await minion.handler(_MemoryDelivery(env, self._hub, minion.slots))

        self._spawn(run, _MemoryDelivery(env, self._hub, None))

    async def serve_minion(self, name: str, handler: Handler, *, prefetch: int) -> None:
        self._check()
        if name in self._hub.minions:
            raise TransportError(f"a minion named {name!r} is already connected to the broker")
        self._hub.minions[name] = _Minion(handler, asyncio.Semaphore(prefetch), self)

    async def stop_serving(self) -> None:
        for name in [n for n, m in self._hub.minions.items() if m.owner is self]:
            del self._hub.minions[name]

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        self._check()
        entry = self._hub.replies.get(reply_to)
        if entry is None:
            raise Unroutable(f"cannot reply to {reply_to!r}: no queue is bound at that address")
        self._spawn(entry[0], _MemoryDelivery(copy.deepcopy(envelope), self._hub, None))

    async def publish_event(self, key: str, envelope: Envelope) -> None:
        self._check()
        for pattern, handler, _ in list(self._hub.events):
            if _topic_match(pattern, key):
                self._spawn(handler, _MemoryDelivery(copy.deepcopy(envelope), self._hub, None))

    async def open_reply_queue(self, handler: Handler, *, on_reattached: Reattached | None = None) -> str:
        self._check()
        name = names.REPLY_QUEUE_PREFIX + uuid.uuid4().hex
        self._hub.replies[name] = (handler, self)
        if on_reattached is not None:
            self._reattached.append(on_reattached)
        return name

    async def send(self, target: str, envelope: Envelope, *, control: bool = False) -> None:
        self._check()
        minion = self._hub.minions.get(target)
        if minion is None:
            raise Unroutable(f"minion {target!r} is not connected: no queue is bound at that address")
        self._deliver(minion, envelope, broadcast=control)

    async def broadcast(self, envelope: Envelope) -> None:
        self._check()
        for minion in list(self._hub.minions.values()):
            self._deliver(minion, envelope, broadcast=True)

    async def subscribe_events(self, pattern: str, handler: Handler) -> None:
        self._check()
        self._hub.events.append((pattern, handler, self))
