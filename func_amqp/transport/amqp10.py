"""AMQP 1.0 transport on Qpid Proton, for brokers that speak the ISO/OASIS standard.

Proton is event driven and not thread safe, so it runs in a thread of its own (the
reactor thread); the asyncio side hands it work through an ``EventInjector`` and gets
results back through ``call_soon_threadsafe``. Proton's objects (links, deliveries) are
made, kept and dropped in the reactor thread only: the asyncio side names a link by its
name and a received delivery by a number. Nothing above this module sees a link.

Addresses (docs/protocol.md §15) follow RabbitMQ's AMQP 1.0 plugin, the family this
transport is tested against: ``/exchange/X/KEY`` targets publish to exchange X under
KEY; ``/exchange/X/KEY`` sources consume from a private queue bound to X under KEY,
deleted when the link goes. That plugin (3.10) refuses dynamic sources and links with
no target, so each client names its reply address and keeps one sender link per
target address. The shared exchanges must exist before anyone attaches: the private
node loads them at boot, another broker imports them once
(``func-amqp broker definitions``).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import functools
import itertools
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from func_amqp.errors import BrokerUnreachable, ConfigError, TransportError
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope, HeaderValue
from func_amqp.security.tls import BrokerTls, wants_tls
from func_amqp.transport.base import Handler, Reattached, Transport, masked_url

try:
    import proton
    from proton import Disposition, Message
    from proton.handlers import MessagingHandler
    from proton.reactor import ApplicationEvent, AtMostOnce, Container, EventInjector
except ImportError:  # pragma: no cover - the extra is not installed
    proton = None  # type: ignore[assignment]
    MessagingHandler = object  # type: ignore[assignment,misc]

_log = logging.getLogger(__name__)
# Proton logs every connect at INFO with the whole URL, password included; what matters
# (connected, lost, reconnected) this module logs itself, with the password masked.
logging.getLogger("proton").setLevel(logging.WARNING)

CONNECT_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
ATTACH_TIMEOUT = 5.0
RECONNECT_INTERVAL = 1.0
SETTLE_TIMEOUT = 10.0
"""How long a sent message may wait for the broker's outcome (its confirm) before the
send fails as a transport error, which callers retry while their deadline allows."""
"""How long a link may take to attach; RabbitMQ never answers one to a missing exchange."""
MAX_SENDER_LINKS = 256
"""Sender links kept open (one per target address); the least recently used closes."""
MAX_REACHABLE = 4 * MAX_SENDER_LINKS
"""Target addresses remembered as attached once (then forgotten all at once)."""
HEARTBEAT = 30.0
"""Seconds of silence after which either side may drop the connection (AMQP idle timeout)."""
REPLY_CREDIT = 1000
"""Messages a reply or event link may hold unread; credit is given back as they arrive."""
APP_ID_PROPERTY = "x-func-amqp-app-id"
"""AMQP 1.0 has no app-id: it travels as this application property."""
WAKE = "func_amqp_work"


def rabbitmq_exchange_address(exchange: str, key: str) -> str:
    return f"/exchange/{exchange}/{key}"


def proton_url(url: str) -> str:
    """The URL Proton understands: ``amqp10[s]://`` becomes ``amqp[s]://``."""
    parts = urlsplit(url)
    scheme = "amqps" if wants_tls(url) else "amqp"
    return urlunsplit(parts._replace(scheme=scheme, path="", query="", fragment=""))


def _ssl_domain(tls: BrokerTls) -> Any:
    """Verify the broker's certificate and name against the CA; present ours."""
    domain = proton.SSLDomain(proton.SSLDomain.MODE_CLIENT)
    domain.set_credentials(str(tls.cert_file), str(tls.key_file), None)
    domain.set_trusted_ca_db(str(tls.ca_file))
    domain.set_peer_authentication(proton.SSLDomain.VERIFY_PEER_NAME)
    return domain


def to_message(env: Envelope) -> "Message":
    """The AMQP 1.0 message for ``env``: headers become application properties, the
    body one data section (what a 0-9-1 peer of the same broker would also read)."""
    props: dict[str, HeaderValue] = dict(env.headers)
    if env.app_id:
        props[APP_ID_PROPERTY] = env.app_id
    msg = Message(body=env.body, inferred=True, properties=props)
    msg.id = env.message_id
    msg.correlation_id = env.correlation_id
    if env.reply_to:
        msg.reply_to = env.reply_to
    if env.content_type:
        msg.content_type = env.content_type
        msg.content_encoding = names.CONTENT_ENCODING
    if env.type:
        msg.subject = env.type
    if env.timestamp:
        msg.creation_time = env.timestamp
    if env.deadline is not None:
        msg.ttl = max(env.deadline - time.time(), 0.001)
    return msg


def to_envelope(msg: "Message") -> Envelope:
    headers: dict[str, HeaderValue] = {}
    properties: dict[Any, Any] = msg.properties or {}
    for key, value in properties.items():
        if isinstance(value, (str, int, float, bool)):
            headers[str(key)] = value
    app_id = headers.pop(APP_ID_PROPERTY, None)
    body = msg.body
    if isinstance(body, memoryview):
        body = body.tobytes()
    elif isinstance(body, str):
        body = body.encode("utf-8")
    elif not isinstance(body, bytes):
        body = b""  # not one of ours: the codec refuses it as malformed
    return Envelope(
        body=body,
        type=msg.subject or "",
        message_id=None if msg.id is None else str(msg.id),
        correlation_id=None if msg.correlation_id is None else str(msg.correlation_id),
        reply_to=msg.reply_to,
        timestamp=msg.creation_time or None,
        content_type=str(msg.content_type) if msg.content_type else None,
        app_id=str(app_id) if app_id is not None else None,
        headers=headers,
        redelivered=bool(msg.delivery_count) or not msg.first_acquirer,
    )


_Sending = tuple[asyncio.Future[None], ...]
"""A sent message's futures, resolved together by its outcome (with one loop wake-up):
the outcome, and the sender's ``attached`` when the link was already there."""


@dataclass
class _Link:
    """What the reactor keeps for one of its links."""

    link: Any
    attached: asyncio.Future[None]
    handler: Handler | None = None
    settle: bool = False
    """Received deliveries wait for ack/reject (requests); else they come settled."""
    waiting: collections.deque[tuple[Message, _Sending]] = field(default_factory=collections.deque)
    sent: dict[bytes, _Sending] = field(default_factory=dict)
    unsettled: dict[int, Any] = field(default_factory=dict)
    source: str | None = None
    """A receiver's source, to attach it again on a new connection (senders are made
    again on first use)."""
    credit: int = 0
    options: Any = None
    on_reattached: Reattached | None = None
    """Told (on the loop) when the receiver attaches again after a reconnect."""
    reattaching: bool = False


class _Reactor(MessagingHandler):  # type: ignore[misc]
    """Proton's side: every method but ``submit`` and ``to_loop`` runs in the reactor thread."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, tls: BrokerTls | None) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.url = url
        self.tls = tls
        self.loop = loop
        self.connection: Any = None
        self.container = Container(self)
        self.container.container_id = "func-amqp-" + uuid.uuid4().hex[:12]
        self.injector = EventInjector()
        self.container.selectable(self.injector)
        self._work: collections.deque[Callable[[], None]] = collections.deque()
        self.links: dict[str, _Link] = {}
        self.senders: collections.OrderedDict[str, str] = collections.OrderedDict()
        """Target address -> name of its sender link, least recently used first."""
        self._delivery_numbers = itertools.count()
        self.opened = asyncio.Event()
        self.first_error: asyncio.Future[str | None] = loop.create_future()
        """None once the first connection opened, else why it did not."""
        self.finished: asyncio.Future[None] = loop.create_future()
        self.thread = threading.Thread(target=self._run, name="func-amqp-proton", daemon=True)
        self.closing = False
        self.ever_opened = False
        self._reconnect_pending = False
        _LIVE_REACTORS.add(self)

    # --- from the asyncio side ------------------------------------------------------

    def submit(self, work: Callable[[], None]) -> None:
        self._work.append(work)
        self.injector.trigger(ApplicationEvent(WAKE))

    def to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback, *args)

    # --- reactor thread: lifecycle --------------------------------------------------

    def _run(self) -> None:
        try:
            self.container.run()
        except Exception as exc:  # the reactor itself failed: nothing more runs
            _log.error("the AMQP 1.0 client stopped: %r", exc)
            self.to_loop(self._fail_first, f"the AMQP 1.0 client stopped: {exc!r}")
        finally:
            self._fail_pending("the transport was closed")
            self.links.clear()  # Proton's objects die in this thread
            self.connection = None
            self.to_loop(self.opened.clear)
            self.to_loop(_set_result, self.finished, None)

    def on_start(self, event: Any) -> None:
        self._connect()

    def _connect(self) -> None:
        """Open a connection. Reconnecting is ours, not Proton's: RabbitMQ closes the
        connection with a close frame when it stops, after which Proton gives up."""
        self._reconnect_pending = False
        parts = urlsplit(self.url)
        options: dict[str, Any] = {}
        if self.tls is not None:
            options["ssl_domain"] = _ssl_domain(self.tls)
        # a certificate login (RabbitMQ's EXTERNAL) when TLS carries no password
        mechs = "PLAIN" if parts.password else ("EXTERNAL" if self.tls is not None else "ANONYMOUS")
        vhost = unquote(parts.path.lstrip("/"))
        if vhost:  # RabbitMQ's way of naming a virtual host in AMQP 1.0's open frame
            options["virtual_host"] = f"vhost:{vhost}"
        self.connection = self.container.connect(
            proton_url(self.url), allowed_mechs=mechs, heartbeat=HEARTBEAT, reconnect=False, **options
        )

    def stop(self) -> None:
        self.closing = True
        if self.connection is not None:
            self.connection.close()
        self.injector.close()  # the reactor returns once nothing is left to watch

    def _connection_lost(self, why: str) -> None:
        """Fail what was in flight now (not at a timeout), then connect again."""
        self.to_loop(self.opened.clear)
        self.to_loop(self._fail_first, why)
        if self.closing or self._reconnect_pending:
            return
        if not self.ever_opened:
            return  # the first connect failed: connect() reports it and stops us
        _log.warning("AMQP 1.0 connection to %s lost (%s); reconnecting", masked_url(self.url), why)
        self._fail_pending("the broker connection was lost")
        for address, name in list(self.senders.items()):
            self.links.pop(name, None)
        self.senders.clear()
        old, self.connection = self.connection, None
        if old is not None and old.state & proton.Endpoint.LOCAL_ACTIVE:
            old.close()
        self._reconnect_pending = True
        self.container.schedule(RECONNECT_INTERVAL, self)

    def on_timer_task(self, event: Any) -> None:
        if not self.closing:
            self._connect()

    def _ended(self, event: Any, why: str) -> None:
        """The connection of ``event`` ended: lost, if it is still the current one."""
        if event.connection is not None and event.connection == self.connection:
            self._connection_lost(why)

    def on_connection_remote_close(self, event: Any) -> None:
        self._ended(event, _condition_text(event.connection.remote_condition, "the broker closed the connection"))

    def on_func_amqp_work(self, event: Any) -> None:
        while self._work:
            work = self._work.popleft()
            try:
                work()
            except Exception as exc:  # one bad piece of work must not stop the reactor
                _log.warning("AMQP 1.0 operation failed: %r", exc)

    def on_connection_opened(self, event: Any) -> None:
        if self.ever_opened:
            _log.info("AMQP 1.0 connection to %s open again", masked_url(self.url))
            for name, state in self.links.items():  # consumers attach again, on new queues
                if state.source is not None:
                    state.unsettled.clear()
                    state.link = self.container.create_receiver(self.connection, state.source, name=name, options=state.options)
                    state.link.flow(state.credit)
                    state.reattaching = True
        self.ever_opened = True
        self.to_loop(self._opened)

    def _opened(self) -> None:
        self.opened.set()
        _set_result(self.first_error, None)

    def on_disconnected(self, event: Any) -> None:
        condition = event.transport.condition if event.transport else None
        self._ended(event, _condition_text(condition, "connection refused"))

    def on_session_error(self, event: Any) -> None:
        """RabbitMQ, stopping, may end the session ("shutdown") before the connection.
        Proton's default then closes the connection on our side, after which it reports
        no disconnect at all: so this is the connection lost, too."""
        self._ended(event, _condition_text(event.session.remote_condition, "the broker ended the session"))

    def on_transport_closed(self, event: Any) -> None:
        """Whatever closed the socket: the last word on a connection that is gone."""
        condition = event.transport.condition if event.transport else None
        self._ended(event, _condition_text(condition, "the connection closed"))

    def on_transport_error(self, event: Any) -> None:
        self.to_loop(self._fail_first, _condition_text(event.transport.condition, "transport error"))

    def _fail_first(self, reason: str) -> None:
        _set_result(self.first_error, reason)

    def _fail_pending(self, why: str) -> None:
        for state in self.links.values():
            sendings = [sending for _, sending in state.waiting] + list(state.sent.values())
            state.waiting.clear()
            state.sent.clear()
            state.unsettled.clear()
            for sending in sendings:
                self.to_loop(_resolve_all, sending, TransportError(why))

    # --- reactor thread: links ------------------------------------------------------

    def open_receiver(self, source: str, state: _Link, credit: int, options: Any) -> str:
        name = f"{source}#{uuid.uuid4().hex[:8]}"
        if self.connection is None:  # reconnecting: attached with the others when it is back
            state.source, state.credit, state.options = source, credit, options
            self.links[name] = state
            return name
        state.source, state.credit, state.options = source, credit, options
        state.link = self.container.create_receiver(self.connection, source, name=name, options=options)
        state.link.flow(credit)
        self.links[name] = state
        return name

    def sender(self, address: str, attached: asyncio.Future[None]) -> tuple[_Link, bool]:
        """The sender link for ``address`` (one per target, kept while it is used), and
        whether it was there already."""
        name = self.senders.get(address)
        if name is not None and name in self.links:
            self.senders.move_to_end(address)
            return self.links[name], True
        name = f"{address}#{uuid.uuid4().hex[:8]}"
        state = _Link(self.container.create_sender(self.connection, address, name=name), attached)
        self.links[name] = state
        self.senders[address] = name
        if len(self.senders) > MAX_SENDER_LINKS:
            _, oldest = self.senders.popitem(last=False)
            self.close_link(oldest)
        return state, False

    def send(self, address: str, message: Message, attached: asyncio.Future[None], outcome: asyncio.Future[None]) -> None:
        if self.connection is None:  # lost since the caller looked
            self.to_loop(_resolve_all, (attached, outcome), TransportError("not connected to the broker (reconnecting)"))
            return
        state, existing = self.sender(address, attached)
        # on a link already there, an outcome means attached: both go to the loop at once
        state.waiting.append((message, (outcome, attached) if existing else (outcome,)))
        self._pump(state)

    def withdraw(self, address: str, outcome: asyncio.Future[None]) -> None:
        """Take back a message still waiting for credit: its sender gave up on it."""
        name = self.senders.get(address)
        state = self.links.get(name) if name is not None else None
        if state is not None:
            state.waiting = collections.deque(item for item in state.waiting if outcome not in item[1])

    def _pump(self, state: _Link) -> None:
        while state.waiting and state.link.credit > 0:
            message, sending = state.waiting.popleft()
            delivery = state.link.send(message)
            state.sent[delivery.tag] = sending

    def close_link(self, name: str) -> None:
        state = self.links.pop(name, None)
        if state is not None:
            state.link.close()

    def settle_received(self, name: str, number: int, outcome: Any) -> None:
        state = self.links.get(name)
        delivery = state.unsettled.pop(number, None) if state is not None else None
        if state is None or delivery is None:
            return  # its link or connection is gone: the broker gives it to another
        delivery.update(outcome)
        delivery.settle()
        state.link.flow(1)

    def on_sendable(self, event: Any) -> None:
        state = self.links.get(event.link.name)
        if state is not None:
            self._pump(state)

    def on_message(self, event: Any) -> None:
        state = self.links.get(event.link.name)
        if state is None or state.handler is None:
            return
        envelope = to_envelope(event.message)
        if state.settle:
            number = next(self._delivery_numbers)
            state.unsettled[number] = event.delivery
            item: Any = _Delivery(self, event.link.name, number, envelope)
        else:
            event.delivery.settle()
            event.link.flow(1)
            item = _PreSettled(envelope)
        self.to_loop(_dispatch, state.handler, item)

    def on_accepted(self, event: Any) -> None:
        self._outcome(event, None)

    def on_rejected(self, event: Any) -> None:
        condition = event.delivery.remote.condition
        self._outcome(event, TransportError(f"the broker rejected the message: {condition or 'no reason given'}"))

    def on_released(self, event: Any) -> None:
        self._outcome(event, TransportError("the broker released the message: nothing took it"))

    def _outcome(self, event: Any, error: BaseException | None) -> None:
        state = self.links.get(event.link.name)
        sending = state.sent.pop(event.delivery.tag, None) if state is not None else None
        if sending is not None:
            self.to_loop(_resolve_all, sending, error)

    def on_link_opened(self, event: Any) -> None:
        state = self.links.get(event.link.name)
        if state is None:
            return
        self.to_loop(_resolve, state.attached, None)
        if state.reattaching:
            state.reattaching = False
            if state.on_reattached is not None:
                self.to_loop(state.on_reattached)

    def on_link_error(self, event: Any) -> None:
        if event.connection != self.connection or event.connection.remote_state & proton.Endpoint.REMOTE_CLOSED:
            return  # the whole connection went: its receivers attach again on the next one
        name = event.link.name
        state = self.links.pop(name, None)
        if state is None:
            return
        text = _condition_text(event.link.remote_condition, "the broker closed the link")
        _log.warning("AMQP 1.0 link %s closed by the broker: %s", name, text)
        for address, sender in list(self.senders.items()):
            if sender == name:
                del self.senders[address]
        self.to_loop(_resolve, state.attached, TransportError(text))
        for sending in [*(sending for _, sending in state.waiting), *state.sent.values()]:
            self.to_loop(_resolve_all, sending, TransportError(text))


_LIVE_REACTORS: weakref.WeakSet[_Reactor] = weakref.WeakSet()


@atexit.register
def _stop_live_reactors() -> None:
    """Stop reactors still running at exit, before Proton's own exit handler (registered
    when it was imported, before this) frees what their objects point to."""
    for reactor in list(_LIVE_REACTORS):
        if reactor.thread.is_alive():
            reactor.submit(reactor.stop)
            reactor.thread.join(STOP_TIMEOUT)


def _condition_text(condition: Any, default: str) -> str:
    if condition is None:
        return default
    return f"{condition.name}: {condition.description}" if condition.description else str(condition.name)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _resolve_all(futures: _Sending, error: BaseException | None) -> None:
    for future in futures:
        _resolve(future, error)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


_TASKS: set[asyncio.Future[None]] = set()


def _dispatch(handler: Handler, item: Any) -> None:
    task: asyncio.Future[None] = asyncio.ensure_future(handler(item))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


class _Delivery:
    """A received request, named by its link and number; settled in the reactor thread,
    which then gives the link one more credit."""

    __slots__ = ("envelope", "_reactor", "_link", "_number", "_settled")

    def __init__(self, reactor: _Reactor, link: str, number: int, envelope: Envelope) -> None:
        self.envelope = envelope
        self._reactor = reactor
        self._link = link
        self._number = number
        self._settled = False

    def _settle(self, outcome: Any) -> None:
        if not self._settled:
            self._settled = True
            reactor, link, number = self._reactor, self._link, self._number
            reactor.submit(lambda: reactor.settle_received(link, number, outcome))

    async def ack(self) -> None:
        self._settle(Disposition.ACCEPTED)

    async def reject(self) -> None:
        self._settle(Disposition.REJECTED)


class _PreSettled:
    """A reply or event: the broker sends those settled (at most once), nothing to do."""

    __slots__ = ("envelope",)

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope

    async def ack(self) -> None:
        return None

    async def reject(self) -> None:
        return None


class Amqp10Transport(Transport):
    """The transport for ``amqp10://`` and ``amqp10s://`` URLs (RabbitMQ's address form)."""

    keeps_jobs = False
    reports_unroutable = False  # an exchange drops what no queue takes, and says "accepted"

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT, tls: BrokerTls | None = None) -> None:
        if wants_tls(url) and tls is None:
            raise ConfigError(
                f"{masked_url(url)} is TLS and no certificate is set up: enrol this host or "
                "set key_file, cert_file and ca_file in the config"
            )
        if proton is None:
            raise TransportError(
                "the AMQP 1.0 transport needs Qpid Proton; install it with "
                "'pip install func-amqp[amqp10]' (or python-qpid-proton)"
            )
        self.url = url
        self._tls = tls if wants_tls(url) else None
        self._connect_timeout = connect_timeout
        self._reactor: _Reactor | None = None
        self._serving: list[str] = []
        self._reachable: set[str] = set()
        """Target addresses a sender link has attached to: a send to one waits for its
        outcome alone (for a link the reactor has to make again, that covers the attach)."""

    def jobs_unavailable(self) -> TransportError:
        return TransportError(
            f"durable jobs and builder pools are not available over AMQP 1.0 ({masked_url(self.url)}): "
            "they need quorum queues with arguments, which AMQP 1.0 clients cannot declare on "
            "RabbitMQ 3.x; a site that needs them runs on the broker's AMQP 0-9-1 URL "
            "(amqp:// or amqps://) instead (docs/brokers.md)"
        )

    # --- lifecycle ------------------------------------------------------------------

    async def connect(self) -> None:
        if self._reactor is not None:
            return
        reactor = _Reactor(self.url, asyncio.get_running_loop(), self._tls)
        self._reactor = reactor
        reactor.thread.start()
        try:
            reason = await asyncio.wait_for(asyncio.shield(reactor.first_error), self._connect_timeout)
        except asyncio.TimeoutError:
            reason = f"no AMQP 1.0 answer within {self._connect_timeout:g} s"
        if reason is not None:
            await self.close()
            raise BrokerUnreachable(
                masked_url(self.url),
                f"{reason} (over AMQP 1.0: a RabbitMQ 3.x broker needs its rabbitmq_amqp1_0 plugin)",
            )

    async def close(self) -> None:
        reactor, self._reactor = self._reactor, None
        if reactor is None:
            return
        reactor.submit(reactor.stop)
        # not a thread join: close() also runs at interpreter exit, when no thread may start
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(reactor.finished), STOP_TIMEOUT)

    @property
    def is_connected(self) -> bool:
        return self._reactor is not None and self._reactor.opened.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        reactor = self._require()
        try:
            await asyncio.wait_for(reactor.opened.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _require(self) -> _Reactor:
        if self._reactor is None:
            raise TransportError("the transport is not connected; call connect() first")
        return self._reactor

    # --- links ----------------------------------------------------------------------

    @staticmethod
    async def _attached(attached: asyncio.Future[None], what: str) -> None:
        attached.add_done_callback(_retrieved)  # a late failure after we gave up is no news
        try:
            await asyncio.wait_for(asyncio.shield(attached), ATTACH_TIMEOUT)
        except asyncio.TimeoutError:
            # RabbitMQ leaves a link to a missing exchange unanswered
            raise TransportError(
                f"{what}: the broker did not attach a link to it within {ATTACH_TIMEOUT:g} s. If the "
                "broker lacks func-amqp's exchanges, declare them once: 'func-amqp broker definitions "
                "> func-amqp.json', then 'rabbitmqctl import_definitions func-amqp.json' (the "
                "private node has them)"
            ) from None
        except TransportError as exc:
            raise TransportError(f"{what}: {exc}") from None

    async def _receive(
        self, source: str, handler: Handler, *, credit: int, settle: bool, on_reattached: Reattached | None = None
    ) -> str:
        """Consume from ``source``; returns the link's name."""
        reactor = self._require()
        loop = asyncio.get_running_loop()
        state = _Link(None, loop.create_future(), handler, settle, on_reattached=on_reattached)
        named: asyncio.Future[str] = loop.create_future()
        options = None if settle else AtMostOnce()

        def open_receiver() -> None:
            reactor.to_loop(_set_result, named, reactor.open_receiver(source, state, credit, options))

        reactor.submit(open_receiver)
        await self._attached(state.attached, f"cannot consume from {source!r}")
        return await named

    async def _send_to(self, address: str, env: Envelope, what: str) -> None:
        reactor = self._require()
        if not reactor.opened.is_set():
            raise TransportError(f"{what}: not connected to the broker (reconnecting)")
        loop = asyncio.get_running_loop()
        attached: asyncio.Future[None] = loop.create_future()
        outcome: asyncio.Future[None] = loop.create_future()
        message = to_message(env)
        outcome.add_done_callback(_retrieved)
        reactor.submit(lambda: reactor.send(address, message, attached, outcome))

        def withdraw() -> None:  # a message given up on is not sent later behind its sender's back
            reactor.withdraw(address, outcome)

        if address in self._reachable:
            attached.add_done_callback(_retrieved)
        else:
            try:
                await self._attached(attached, what)
            except TransportError:
                reactor.submit(withdraw)
                raise
            if len(self._reachable) >= MAX_REACHABLE:
                self._reachable.clear()
            self._reachable.add(address)
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await asyncio.shield(outcome)
        except asyncio.TimeoutError:
            reactor.submit(withdraw)
            raise TransportError(f"{what}: the broker did not settle the message within {SETTLE_TIMEOUT:g} s") from None
        except TransportError as exc:
            raise TransportError(f"{what}: {exc}") from None

    # --- minion side ---------------------------------------------------------------

    async def serve_minion(self, name: str, handler: Handler, *, prefetch: int) -> None:
        # calls, control requests (their own credit, so full call slots cannot hold them
        # up) and broadcasts: each a private queue bound by the broker for this link
        sources = (
            rabbitmq_exchange_address(names.MINIONS_EXCHANGE, name),
            rabbitmq_exchange_address(names.MINIONS_EXCHANGE, names.control_key(name)),
            rabbitmq_exchange_address(names.BROADCAST_EXCHANGE, name),
        )
        for source in sources:
            self._serving.append(await self._receive(source, handler, credit=prefetch, settle=True))

    async def stop_serving(self) -> None:
        """Detach the request links: the broker deletes their queues, and requests sent
        from now on find nobody (callers learn it from the presence probe)."""
        reactor = self._require()
        serving, self._serving = self._serving, []
        for name in serving:
            reactor.submit(functools.partial(reactor.close_link, name))

    async def reply(self, reply_to: str, envelope: Envelope) -> None:
        await self._send_to(reply_to, envelope, f"cannot reply to {reply_to!r}")

    async def publish_event(self, key: str, envelope: Envelope) -> None:
        await self._send_to(rabbitmq_exchange_address(names.EVENTS_EXCHANGE, key), envelope, "cannot publish an event")

    # --- overlord side -------------------------------------------------------------

    async def open_reply_queue(self, handler: Handler, *, on_reattached: Reattached | None = None) -> str:
        address = rabbitmq_exchange_address(names.AMQP10_REPLY_EXCHANGE, names.REPLY_QUEUE_PREFIX + uuid.uuid4().hex)
        await self._receive(address, handler, credit=REPLY_CREDIT, settle=False, on_reattached=on_reattached)
        return address

    async def send(self, target: str, envelope: Envelope, *, control: bool = False) -> None:
        key = names.control_key(target) if control else target
        await self._send_to(rabbitmq_exchange_address(names.MINIONS_EXCHANGE, key), envelope, f"cannot send to minion {target!r}")

    async def broadcast(self, envelope: Envelope) -> None:
        await self._send_to(rabbitmq_exchange_address(names.BROADCAST_EXCHANGE, ""), envelope, "cannot broadcast")

    async def subscribe_events(self, pattern: str, handler: Handler) -> None:
        await self._receive(rabbitmq_exchange_address(names.EVENTS_EXCHANGE, pattern), handler, credit=REPLY_CREDIT, settle=False)

