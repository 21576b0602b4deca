"""The transport seam: what minions and overlords need from a broker, and nothing more.

A transport moves :class:`Envelope` objects between named parties. It is the only layer
that knows the broker's client library; above it nobody sees a channel, a link or a
delivery tag. Failures are mapped at this boundary onto :mod:`func_amqp.errors`.

Lifecycle: ``connect()`` once (raises BrokerUnreachable fast when the broker is not
there), then the serve/send calls, then ``close()``. After a broker restart a transport
reconnects by itself and restores its queues and consumers; sends made while it is
disconnected raise TransportError, and ``wait_connected()`` lets a caller retry.
"""

from __future__ import annotations

import abc
from typing import Awaitable, Callable, Protocol
from urllib.parse import urlsplit, urlunsplit

from func_amqp.errors import TransportError
from func_amqp.protocol.envelope import Envelope


class Delivery(Protocol):
    """A received message; minion requests must be settled with ack() or reject()."""

    envelope: Envelope

    async def ack(self) -> None: ...

    async def reject(self) -> None:
        """Refuse the message for good: it goes to the dead-letter queue."""


class JobDelivery(Delivery, Protocol):
    """A job from a durable queue, which may also go back to its queue."""

    async def release(self) -> None:
        """Give the message back to its queue, for another consumer."""


class WorkConsumer(Protocol):
    """A consumer of a durable job queue that its owner can pause while it is busy."""

    async def pause(self) -> None:
        """Stop receiving; deliveries already received stay with this consumer."""

    async def resume(self) -> None: ...


def masked_url(url: str) -> str:
    """The URL without its password, for messages a user sees."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: hide whatever may be credentials
        head, sep, rest = url.partition("//")
        return f"{head}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def name_taken(name: str) -> TransportError:
    return TransportError(
        f"a minion named {name!r} is already connected to the broker; "
        "give this one another name (--name or minion_name)"
    )


Handler = Callable[[Delivery], Awaitable[None]]
Reattached = Callable[[], None]
JobHandler = Callable[[JobDelivery], Awaitable[None]]


class Transport(abc.ABC):
    """Base of broker transports (AMQP 0-9-1 now; AMQP 1.0 later, same contract)."""

    url: str
    keeps_jobs: bool = False
    """True when the broker keeps durable jobs (the ``serve_jobs`` family works)."""
    reports_unroutable: bool = True
    """True when ``send`` raises Unroutable for a minion that is not connected; without
    it, callers probe the minion's presence beside the call (docs/protocol.md §15)."""

    async def __aenter__(self) -> "Transport":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect, or raise BrokerUnreachable within the connect timeout."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; pending sends fail, consumers stop."""

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    async def wait_connected(self, timeout: float) -> bool:
        """Wait until connected (after a broker restart); False on timeout."""

    # --- minion side ---------------------------------------------------------------

    @abc.abstractmethod
    async def serve_minion(self, name: str, handler: Handler, *, prefetch: int) -> None:
        """Claim the minion's request queue and deliver its requests to ``handler``.

        Raises TransportError if another minion of that name is already connected.
        At most ``prefetch`` deliveries are unsettled at once.
        """

    @abc.abstractmethod
    async def stop_serving(self) -> None:
        """Stop taking new requests (for a graceful shutdown); settled ones stay."""

    @abc.abstractmethod
    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        """Send a response; raises Unroutable when the reply address is gone."""

    @abc.abstractmethod
    async def publish_event(self, key: str, envelope: Envelope) -> None:
        """Publish an unsolicited indication (heartbeat) under ``key``."""

    # --- overlord side -------------------------------------------------------------

    @abc.abstractmethod
    async def open_reply_queue(self, handler: Handler, *, on_reattached: Reattached | None = None) -> str:
        """Create this client's reply address; replies arrive at ``handler``.

        ``on_reattached`` is called when the address receives again after a reconnect,
        if replies sent to it meanwhile may have been lost (AMQP 1.0); a transport
        whose senders learn that the address is away (AMQP 0-9-1's mandatory flag, so
        the minion retries) never calls it.
        """

    @abc.abstractmethod
    async def send(self, target: str, envelope: Envelope, *, control: bool = False) -> None:
        """Send a request to minion ``target``; raises Unroutable if none is connected.

        ``control`` requests (cancel, follow, queries) take a route of their own, so a
        minion whose call slots are all taken still receives them.
        """

    @abc.abstractmethod
    async def broadcast(self, envelope: Envelope) -> None:
        """Send a request to every connected minion."""

    @abc.abstractmethod
    async def subscribe_events(self, pattern: str, handler: Handler) -> None:
        """Receive indications whose key matches ``pattern`` (``*``/``#`` wildcards)."""

    # --- durable jobs (docs/protocol.md "Jobs") ------------------------------------------
    # Persistent, confirmed messages in durable queues that outlive both ends; a
    # transport without them (the in-memory twin) says so instead of losing jobs.

    def jobs_unavailable(self) -> TransportError:
        """Why durable jobs do not work over this transport, and what to do instead."""
        return TransportError(
            f"jobs need a broker that keeps durable queues, and {masked_url(self.url)} keeps none: "
            "point broker_url (or FUNC_AMQP_URL) at RabbitMQ"
        )

    async def serve_jobs(
        self, queue: str, route: tuple[str, str], handler: JobHandler, *, prefetch: int, delivery_limit: int | None = None, dead_letter: bool = True
    ) -> WorkConsumer:
        """Consume durable queue ``queue`` (created if missing, bound by ``route``:
        exchange and key), with manual settlement and at most ``prefetch`` unsettled;
        with ``dead_letter``, what it gives up goes back to its owner."""
        raise self.jobs_unavailable()

    async def submit_job(self, route: tuple[str, str], envelope: Envelope) -> None:
        """Publish a job (or a cancel of one) persistently and confirmed to ``route``
        (exchange, routing key); Unroutable when no queue takes it."""
        raise self.jobs_unavailable()

    async def publish_job_event(self, envelope: Envelope) -> None:
        """Publish a job event persistently to its owner's queue (its owner header)."""
        raise self.jobs_unavailable()

    async def open_job_events(self, owner: str, handler: Handler | None) -> WorkConsumer | None:
        """Create ``owner``'s durable event queue, and consume it when ``handler`` is given."""
        raise self.jobs_unavailable()
