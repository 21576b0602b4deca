"""AMQP 0-9-1 transport on aio-pika's robust connection (RabbitMQ).

Mapping (docs/protocol.md): a minion consumes an exclusive queue ``func.minion.<name>``
bound to the direct exchange ``func.minions`` under its name, and an exclusive
``func.minion.<name>.presence`` bound to the fanout ``func.broadcast``. Exclusivity means a stopped or crashed minion has no queue, so a
request to it comes straight back (``mandatory`` + publisher confirms) instead of
waiting for a timeout, and a second minion of the same name is refused. Replies go
through the default exchange to the caller's exclusive ``func.reply.<id>`` queue.
Rejected requests are dead-lettered to ``func.dead-letters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Iterator

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from func_amqp.broker.node import CONSUMER_TIMEOUT_MS
from func_amqp.errors import BrokerUnreachable, TransportError, Unroutable
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope, HeaderValue
from func_amqp.transport.base import Handler, JobHandler, Reattached, Transport, masked_url, name_taken

_log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
RECONNECT_INTERVAL = 1.0
MIN_EXPIRATION = 0.001  # seconds; AMQP expiration 0 means "deliver now or drop"
DEFAULT_EXCHANGE = ""

NOT_PERSISTENT = int(aio_pika.DeliveryMode.NOT_PERSISTENT)
PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)

# Failures that mean "the connection or channel is not usable right now".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika: "Channel closed by RPC timeout" and friends
)

LIBRARY_ERRORS: tuple[type[BaseException], ...] = (aiormq.exceptions.PublishError, aiormq.exceptions.DeliveryError, *CONNECTION_ERRORS)
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, OSError, ValueError)
"""What connecting raises for a broker that is not there, or a URL it cannot use."""


def _mapped_error(exc: BaseException, what: str) -> TransportError:
    """Ours for one of ``LIBRARY_ERRORS``: the boundary where aio-pika's failures stop."""
    if isinstance(exc, aiormq.exceptions.PublishError):
        return Unroutable(f"{what}: no queue is bound at that address")
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return TransportError(f"{what}: the broker refused the message")
    return TransportError(f"{what}: the broker connection is not usable ({exc!r})")


_CLIENT_LOGGERS = ("aiormq.connection", "aio_pika.robust_connection")


@contextlib.contextmanager
def _quiet(logger_names: tuple[str, ...]) -> Iterator[None]:
    """Silence the client library's own report of a failure we map and raise."""
    loggers = [logging.getLogger(name) for name in logger_names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def _properties(env: Envelope, persistent: bool = False) -> aiormq.spec.Basic.Properties:
    """The AMQP properties for ``env``, built directly: this runs for every message sent,
    and aio-pika's ``Message`` would only be an extra copy of the same fields."""
    expiration: str | None = None
    if env.deadline is not None:
        expiration = str(int(max(env.deadline - time.time(), MIN_EXPIRATION) * 1000))
    return aiormq.spec.Basic.Properties(
        content_type=env.content_type,
        content_encoding=names.CONTENT_ENCODING,
        headers=dict(env.headers),
        delivery_mode=PERSISTENT if persistent else NOT_PERSISTENT,
        message_id=env.message_id,
        correlation_id=env.correlation_id,
        reply_to=env.reply_to,
        timestamp=datetime.fromtimestamp(env.timestamp, timezone.utc) if env.timestamp else None,
        message_type=env.type or None,
        app_id=env.app_id,
        expiration=expiration,
    )


def _header_value(value: Any) -> HeaderValue | None:
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None  # nested tables, arrays, timestamps: not part of the protocol


def _to_envelope(msg: AbstractIncomingMessage) -> Envelope:
    headers: dict[str, HeaderValue] = {}
    for key, value in (msg.headers or {}).items():
        converted = _header_value(value)
        if converted is not None:
            headers[str(key)] = converted
    ts = msg.timestamp
    return Envelope(
        body=msg.body,
        type=msg.type or "",
        message_id=msg.message_id,
        correlation_id=msg.correlation_id,
        reply_to=msg.reply_to,
        timestamp=ts.timestamp() if isinstance(ts, datetime) else None,
        content_type=msg.content_type,
        app_id=msg.app_id,
        headers=headers,
        redelivered=bool(msg.redelivered),
    )


class _Delivery:
    """Settles one AMQP delivery; settling twice or after a reconnect is harmless."""

    __slots__ = ("envelope", "_message", "_acked")

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self.envelope = _to_envelope(message)
        self._message = message
        self._acked = False

    async def ack(self) -> None:
        """Queue basic.ack without waiting for the socket to drain: the broker never
        answers an ack, and frames leave in order, so it still precedes the reply."""
        if self._acked:
            return
        self._acked = True
        message = self._message
        with contextlib.suppress(*CONNECTION_ERRORS):
            await message.channel.basic_ack(message.delivery_tag, wait=False)  # type: ignore[arg-type]

    async def reject(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.MessageProcessError):
            await self._message.reject(requeue=False)

    async def release(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.MessageProcessError):
            await self._message.reject(requeue=True)


def _durable_queue_arguments(delivery_limit: int | None, dead_letter: bool) -> dict[str, Any]:
    """Quorum queues (replicated in a cluster, durable on one node); what a job queue
    gives up (expired jobs, a poison job past its delivery limit) goes to the owner."""
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if dead_letter:
        arguments.update({
            "x-dead-letter-exchange": names.JOB_EVENTS_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        })
    if delivery_limit is not None:
        arguments["x-delivery-limit"] = delivery_limit
    return arguments


class _JobConsumer:
    """One consumer of a durable queue; pausing cancels it, resuming consumes again."""

    def __init__(self, queue: AbstractRobustQueue, handler: JobHandler) -> None:
        self._queue = queue
        self._handler = handler
        self._tag: str | None = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await self._handler(_Delivery(message))

    async def resume(self) -> None:
        if self._tag is None:
            self._tag = await self._queue.consume(self._on_message, arguments=_CONSUMER_ARGUMENTS)

    async def pause(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._queue.cancel(tag)


_CONSUMER_ARGUMENTS: dict[str, Any] = {"x-consumer-timeout": CONSUMER_TIMEOUT_MS}
"""RabbitMQ 3.12 and later take the consumer timeout per consumer; older brokers ignore
it and need ``consumer_timeout`` in rabbitmq.conf (docs/jobs.md)."""


class _AutoAcked:
    """A delivery consumed with no_ack: nothing to settle."""

    __slots__ = ("envelope",)

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self.envelope = _to_envelope(message)

    async def ack(self) -> None:
        return None

    async def reject(self) -> None:
        return None


class Amqp091Transport(Transport):
    """The transport for ``amqp://`` and ``amqps://`` URLs."""

    keeps_jobs = True

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._connection: AbstractRobustConnection | None = None
        self._publish: AbstractRobustChannel | None = None
        self._consume: AbstractRobustChannel | None = None
        self._bindings: list[tuple[AbstractRobustQueue, str, str]] = []

    # --- connection -----------------------------------------------------------------

    async def connect(self) -> None:
        try:
            with _quiet(_CLIENT_LOGGERS):  # the failure is reported once, mapped below
                self._connection = await aio_pika.connect_robust(
                    self.url,
                    timeout=self._connect_timeout,
                    reconnect_interval=RECONNECT_INTERVAL,
                    client_properties={"connection_name": "func-amqp"},
                    ssl_context=self._ssl_context,
                )
        except CONNECT_ERRORS as exc:
            raise BrokerUnreachable(masked_url(self.url), str(exc) or type(exc).__name__) from exc
        try:
            self._publish = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._consume = await self._connection.channel(publisher_confirms=False)
            for name, kind, arguments in names.EXCHANGES:  # the robust channel declares them again after a reconnect
                await self._publish.declare_exchange(
                    name, aio_pika.ExchangeType(kind), durable=True, arguments=arguments  # type: ignore[arg-type]
                )
        except CONNECTION_ERRORS as exc:
            await self.close()
            raise TransportError(f"cannot set up the broker topology at {masked_url(self.url)}: {exc}") from exc

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await connection.close()

    @property
    def is_connected(self) -> bool:
        conn = self._connection
        return conn is not None and not conn.is_closed and conn.connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        conn = self._connection
        if conn is None:
            return False
        try:
            await asyncio.wait_for(conn.connected.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _require(self) -> tuple[AbstractRobustChannel, AbstractRobustChannel]:
        if self._publish is None or self._consume is None:
            raise TransportError("the transport is not connected; call connect() first")
        return self._publish, self._consume

    @contextlib.asynccontextmanager
    async def _mapped(self, what: str) -> AsyncIterator[None]:
        """Map the client library's failures onto ours, httpx-style."""
        try:
            yield
        except LIBRARY_ERRORS as exc:
            raise _mapped_error(exc, what) from exc

    async def _publish_to(
        self, exchange: str, key: str, env: Envelope, what: str, mandatory: bool, persistent: bool = False
    ) -> None:
        publish, _ = self._require()
        # straight to the channel underneath, without _mapped's context manager: this
        # is the hot path of every call, and aio-pika's exchange would only copy the message
        try:
            if publish.is_closed:  # reconnecting: fail now, the caller retries
                raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
            channel = await publish.get_underlay_channel()
            await channel.basic_publish(
                env.body,
                exchange=exchange,
                routing_key=key,
                properties=_properties(env, persistent),
                mandatory=mandatory,
            )
        except LIBRARY_ERRORS as exc:
            raise _mapped_error(exc, what) from exc

    # --- minion side ---------------------------------------------------------------

    async def serve_minion(self, name: str, handler: Handler, *, prefetch: int) -> None:
        publish, consume = self._require()
        async with self._mapped(f"cannot serve as minion {name!r}"):
            dlx = await publish.declare_exchange(
                names.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
            )
            dead = await publish.declare_queue(
                names.DEAD_LETTER_QUEUE,
                durable=True,
                arguments=dict(names.DEAD_LETTER_QUEUE_ARGUMENTS),
            )
            await dead.bind(dlx)
            await consume.set_qos(prefetch_count=prefetch)
            try:
                queue = await consume.declare_queue(
                    names.minion_queue(name),
                    exclusive=True,
                    arguments={"x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE},
                )
            except aiormq.exceptions.ChannelLockedResource as exc:
                raise name_taken(name) from exc
            # broadcasts get their own queue (and prefetch window): a minion whose call
            # slots are all busy still answers discovery
            presence = await consume.declare_queue(
                names.minion_presence_queue(name),
                exclusive=True,
                arguments={"x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE},
            )

            async def on_message(message: AbstractIncomingMessage) -> None:
                await handler(_Delivery(message))

            await queue.consume(on_message)
            await presence.consume(on_message)
            await queue.bind(names.MINIONS_EXCHANGE, routing_key=name)
            await presence.bind(names.BROADCAST_EXCHANGE)
            await presence.bind(names.MINIONS_EXCHANGE, routing_key=names.control_key(name))
            self._bindings = [
                (queue, names.MINIONS_EXCHANGE, name),
                (presence, names.BROADCAST_EXCHANGE, presence.name),
                (presence, names.MINIONS_EXCHANGE, names.control_key(name)),
            ]

    async def stop_serving(self) -> None:
        """Unbind, so new requests come back unroutable at once; the consumers stay to
        refuse whatever was queued before (the service answers SHUTTING_DOWN)."""
        bindings, self._bindings = self._bindings, []
        for queue, exchange, key in bindings:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await queue.unbind(exchange, routing_key=key)

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        await self._publish_to(DEFAULT_EXCHANGE, reply_to, envelope, f"cannot reply to {reply_to!r}", True)

    async def publish_event(self, key: str, envelope: Envelope) -> None:
        await self._publish_to(names.EVENTS_EXCHANGE, key, envelope, "cannot publish an event", False)

    # --- overlord side -------------------------------------------------------------

    async def open_reply_queue(self, handler: Handler, *, on_reattached: Reattached | None = None) -> str:
        _, consume = self._require()
        name = names.REPLY_QUEUE_PREFIX + uuid.uuid4().hex
        async with self._mapped("cannot open a reply queue"):
            queue = await consume.declare_queue(name, exclusive=True, auto_delete=True)

            async def on_message(message: AbstractIncomingMessage) -> None:
                await handler(_AutoAcked(message))

            await queue.consume(on_message, no_ack=True)
        return name

    async def send(self, target: str, envelope: Envelope, *, control: bool = False) -> None:
        key = names.control_key(target) if control else target
        await self._publish_to(names.MINIONS_EXCHANGE, key, envelope, f"minion {target!r} is not connected", True)

    async def broadcast(self, envelope: Envelope) -> None:
        await self._publish_to(names.BROADCAST_EXCHANGE, "", envelope, "cannot broadcast", False)

    async def subscribe_events(self, pattern: str, handler: Handler) -> None:
        _, consume = self._require()
        async with self._mapped("cannot subscribe to events"):
            queue = await consume.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(names.EVENTS_EXCHANGE, routing_key=pattern)

            async def on_message(message: AbstractIncomingMessage) -> None:
                await handler(_AutoAcked(message))

            await queue.consume(on_message, no_ack=True)

    # --- durable jobs ----------------------------------------------------------------

    async def serve_jobs(
        self, queue: str, route: tuple[str, str], handler: JobHandler, *, prefetch: int, delivery_limit: int | None = None, dead_letter: bool = True
    ) -> _JobConsumer:
        if self._connection is None:
            raise TransportError("the transport is not connected; call connect() first")
        async with self._mapped(f"cannot consume the job queue {queue!r}"):
            channel = await self._connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            declared = await channel.declare_queue(queue, durable=True, arguments=_durable_queue_arguments(delivery_limit, dead_letter))
            await declared.bind(route[0], routing_key=route[1])
            consumer = _JobConsumer(declared, handler)
            await consumer.resume()
        return consumer

    async def submit_job(self, route: tuple[str, str], envelope: Envelope) -> None:
        if route[0] not in (names.JOBS_EXCHANGE, names.POOLS_EXCHANGE, names.CANCELS_EXCHANGE):
            raise TransportError(f"no job exchange {route[0]!r}")
        await self._publish_to(route[0], route[1], envelope, f"nothing takes jobs for {route[1]!r}", True, persistent=True)

    async def publish_job_event(self, envelope: Envelope) -> None:
        owner = envelope.headers.get(names.H_OWNER)
        await self._publish_to(names.JOB_EVENTS_EXCHANGE, "", envelope, f"no event queue for job owner {owner!r}", True, persistent=True)

    async def open_job_events(self, owner: str, handler: Handler | None) -> _JobConsumer | None:
        _, consume = self._require()
        async with self._mapped(f"cannot open the job event queue of {owner!r}"):
            queue = await consume.declare_queue(
                names.job_events_queue(owner), durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(names.JOB_EVENTS_EXCHANGE, arguments={"x-match": "all", names.H_OWNER: owner})
            if handler is None:
                return None
            consumer = _JobConsumer(queue, handler)  # acks manually, like job queues
            await consumer.resume()
        return consumer
