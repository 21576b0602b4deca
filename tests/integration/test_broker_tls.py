"""The private broker's TLS-only mode and its per-certificate users, against real nodes."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from func_amqp.broker import node
from func_amqp.broker.node import ROLE_MINION, ROLE_OVERLORD, PrivateBroker, amqp10_url, user_permissions
from func_amqp.cli.admin import main
from func_amqp.config import ENV_STATE_DIR, Paths
from func_amqp.errors import BrokerError, ConfigError, TransportError
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.keys import HostIdentity
from func_amqp.security.tls import client_tls
from func_amqp.transport.amqp091 import Amqp091Transport
from func_amqp.transport.amqp10 import Amqp10Transport
from func_amqp.transport.base import Delivery
from tests.broker_support import node_state_dir

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), *node.EXTRA_PROGRAM_DIRS])

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        shutil.which(node.SERVER_PROGRAM, path=SBIN_PATH) is None,
        reason="rabbitmq-server is not installed",
    ),
]

CONNECT_TIMEOUT = 10.0
DELIVERY_TIMEOUT = 10.0
# What a refused TLS handshake looks like to aio-pika: the broker's alert or a reset.
HANDSHAKE_REFUSED = (aiormq.exceptions.AMQPConnectionError, ssl.SSLError, ConnectionError)
# A login the broker turns away after the handshake: an unknown user fails
# authentication, a user without permissions gets Connection.Close for its open.
LOGIN_REFUSED = (aiormq.exceptions.AMQPError, ConnectionError)


@dataclass
class TlsNode:
    """A node started in TLS mode, with the CA whose certificates it accepts."""

    broker: PrivateBroker
    paths: Paths
    ca: CertificateAuthority
    url: str

    def identity(self, cn: str) -> HostIdentity:
        """``cn``'s key and certificate, signed by the node's CA."""
        identity = HostIdentity(self.paths.state_dir / "clients" / cn, cn)
        if not identity.is_complete():
            result = self.ca.submit(identity.csr_pem())
            assert result.signed and result.certificate and result.ca_certificate, result.reason
            identity.store(result.certificate, result.ca_certificate)
        return identity

    def context(self, cn: str | None) -> ssl.SSLContext:
        """A client context trusting the CA, presenting ``cn``'s certificate (None: none)."""
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        if cn is not None:
            identity = self.identity(cn)
            context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        return context

    async def connect(self, cn: str | None) -> AbstractConnection:
        return await aio_pika.connect(self.url, ssl_context=self.context(cn), timeout=CONNECT_TIMEOUT)

    def transport_url(self, cn: str) -> str:
        """The node's URL carrying ``cn``'s files, as aiormq reads them from the query."""
        identity = self.identity(cn)
        files = {"cafile": identity.ca_path, "certfile": identity.cert_path, "keyfile": identity.key_path}
        return f"{self.url}&{urlencode({k: str(v) for k, v in files.items()})}"


def _paths(state: Path) -> Paths:
    return Paths(config_dir=state / "config", state_dir=state / "state")


@pytest.fixture
def tls_node() -> Iterator[TlsNode]:
    """A TLS node of its own for each test, stopped afterwards whatever the test did."""
    with node_state_dir() as state:
        paths = _paths(state)
        ca = CertificateAuthority(paths.ca_dir, autosign=True)
        ca.init()
        broker = PrivateBroker(paths)
        try:
            url = broker.start(tls=True)
            yield TlsNode(broker=broker, paths=paths, ca=ca, url=url)
        finally:
            broker.stop()


async def _refused(action: object) -> None:
    """``action`` (an awaitable) fails with ACCESS_REFUSED."""
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await action  # type: ignore[misc]


async def _ignore(message: AbstractIncomingMessage) -> None:
    """A consumer that only needs to exist."""


async def _get(queue: AbstractQueue) -> AbstractIncomingMessage:
    """The next message on ``queue``, waiting for it a little."""
    deadline = asyncio.get_running_loop().time() + DELIVERY_TIMEOUT
    while True:
        message = await queue.get(fail=False, no_ack=True)
        if message is not None:
            return message
        assert asyncio.get_running_loop().time() < deadline, f"nothing arrived on {queue.name}"
        await asyncio.sleep(0.05)


async def _consumed(queue: AbstractQueue) -> asyncio.Queue[bytes]:
    """Consume ``queue`` (basic.consume, as the transport does); bodies arrive here."""
    bodies: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(message: AbstractIncomingMessage) -> None:
        await bodies.put(message.body)

    await queue.consume(collect, no_ack=True)
    return bodies


async def _declare_exchanges(channel: AbstractChannel) -> None:
    """The shared exchanges, as every client declares them on connecting."""
    await channel.declare_exchange(names.MINIONS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    await channel.declare_exchange(names.BROADCAST_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    await channel.declare_exchange(names.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


# --- without a node ----------------------------------------------------------------------


def test_tls_mode_needs_the_ca() -> None:
    with node_state_dir() as state:
        broker = PrivateBroker(_paths(state))

        with pytest.raises(BrokerError, match="func-amqp ca --init"):
            broker.start(tls=True)

        assert not broker.status().running
        assert broker._find_node_pid() is None


@pytest.mark.parametrize(
    ("cn", "role", "message"),
    [
        ("Not A Host", ROLE_MINION, "not a valid certificate name"),
        ("m1", "admin", "unknown broker role"),
        ("guest", ROLE_MINION, "default account"),
    ],
)
def test_grant_refuses_bad_names_and_roles(cn: str, role: str, message: str) -> None:
    with node_state_dir() as state:
        with pytest.raises(BrokerError, match=message):
            PrivateBroker(_paths(state)).grant(cn, role)


def test_permissions_name_only_the_users_own_queues() -> None:
    minion = user_permissions("web-1.example.com", ROLE_MINION)
    overlord = user_permissions("ol", ROLE_OVERLORD)

    def allowed(regex: str, name: str) -> bool:
        return re.search(regex, name) is not None

    own = names.minion_queue("web-1.example.com")
    assert all(allowed(r, own) for r in (minion.configure, minion.write, minion.read))
    assert not allowed(minion.configure, "func.minion.web-1xexample.com")
    assert not allowed(minion.read, names.minion_queue("web-2.example.com"))
    assert allowed(minion.event_write, "agent.heartbeat.web-1.example.com")
    assert not allowed(minion.event_write, "agent.heartbeat.web-1.example.com.x")
    assert not any(allowed(r, own) for r in (overlord.configure, overlord.write, overlord.read))
    assert allowed(overlord.configure, "amq.gen-JzTY20BRgKO-HjmUJj0wLg")
    assert allowed(overlord.read, "amq_" + "0123456789abcdef" * 2)


# --- TLS mode ----------------------------------------------------------------------------


async def test_certificate_holders_connect_others_are_refused(tls_node: TlsNode) -> None:
    port = tls_node.url.split(":")[2].split("/")[0]
    assert tls_node.url == f"amqps://127.0.0.1:{port}/?auth=external"
    assert tls_node.paths.private_broker_url_file.read_text().strip() == tls_node.url
    status = tls_node.broker.status()
    assert (status.running, status.tls, status.mode, status.url) == (True, True, "tls", tls_node.url)

    tls_node.broker.grant("m1", ROLE_MINION)
    connection = await tls_node.connect("m1")
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.minion_queue("m1"), exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"ping"), routing_key=queue.name)
        assert (await _get(queue)).body == b"ping"
    finally:
        await connection.close()

    with pytest.raises(HANDSHAKE_REFUSED):
        await tls_node.connect(None)
    with pytest.raises(HANDSHAKE_REFUSED):
        await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/", timeout=CONNECT_TIMEOUT)
    with node_state_dir() as other:
        stranger = CertificateAuthority(other / "ca", autosign=True)
        stranger.init()
        identity = HostIdentity(other / "pki", "m1")
        result = stranger.submit(identity.csr_pem())
        assert result.certificate and result.ca_certificate
        identity.store(result.certificate, result.ca_certificate)
        context = tls_node.context(None)
        context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        with pytest.raises(HANDSHAKE_REFUSED):
            await aio_pika.connect(tls_node.url, ssl_context=context, timeout=CONNECT_TIMEOUT)
    # A valid certificate is not enough: its name needs a broker user, and guest is shut.
    with pytest.raises(LOGIN_REFUSED):
        await tls_node.connect("m2")
    with pytest.raises(LOGIN_REFUSED):
        await tls_node.connect("guest")


async def test_minion_user_is_confined_to_its_own_queues(tls_node: TlsNode) -> None:
    tls_node.broker.grant("m1", ROLE_MINION)
    tls_node.broker.grant("m2", ROLE_MINION)
    m2 = await tls_node.connect("m2")
    m1 = await tls_node.connect("m1")
    try:
        other = await m2.channel()
        await _declare_exchanges(other)
        await other.declare_queue(names.minion_queue("m2"), exclusive=True)

        channel = await m1.channel()
        await _declare_exchanges(channel)
        dlx = await channel.declare_exchange(
            names.DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead = await channel.declare_queue(
            names.DEAD_LETTER_QUEUE,
            durable=True,
            arguments={"x-max-length": names.DEAD_LETTER_MAX_LENGTH, "x-overflow": "drop-head"},
        )
        await dead.bind(dlx)
        dead_letter = {"x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE}
        own = await channel.declare_queue(names.minion_queue("m1"), exclusive=True, arguments=dead_letter)
        presence = await channel.declare_queue(
            names.minion_presence_queue("m1"), exclusive=True, arguments=dead_letter
        )
        await own.bind(names.MINIONS_EXCHANGE, routing_key="m1")
        await presence.bind(names.BROADCAST_EXCHANGE)
        tag = await own.consume(_ignore)
        await own.cancel(tag)
        events = await channel.get_exchange(names.EVENTS_EXCHANGE)
        await events.publish(aio_pika.Message(b"beat"), routing_key=names.heartbeat_key("m1"))
        await own.unbind(names.MINIONS_EXCHANGE, routing_key="m1")

        await _refused((await m1.channel()).declare_queue(names.minion_queue("m2"), exclusive=True))
        refused = await m1.channel()
        m2_queue = await refused.get_queue(names.minion_queue("m2"), ensure=False)
        await _refused(m2_queue.consume(_ignore))
        refused = await m1.channel()
        await _refused(
            (await refused.get_exchange(names.MINIONS_EXCHANGE)).publish(
                aio_pika.Message(b"request"), routing_key="m2"
            )
        )
        refused = await m1.channel()
        await _refused(
            (await refused.get_exchange(names.EVENTS_EXCHANGE)).publish(
                aio_pika.Message(b"beat"), routing_key=names.heartbeat_key("m2")
            )
        )
        refused = await m1.channel()
        await _refused(refused.declare_queue("elsewhere", exclusive=True))
    finally:
        await m1.close()
        await m2.close()


async def test_overlord_user_sends_but_cannot_read_minion_queues(tls_node: TlsNode) -> None:
    tls_node.broker.grant("m1", ROLE_MINION)
    tls_node.broker.grant("ol", ROLE_OVERLORD)
    minion = await tls_node.connect("m1")
    overlord = await tls_node.connect("ol")
    try:
        m_channel = await minion.channel()
        await _declare_exchanges(m_channel)
        request_queue = await m_channel.declare_queue(names.minion_queue("m1"), exclusive=True)
        await request_queue.bind(names.MINIONS_EXCHANGE, routing_key="m1")

        channel = await overlord.channel()
        await _declare_exchanges(channel)
        replies = await channel.declare_queue(
            names.REPLY_QUEUE_PREFIX + "x", exclusive=True, auto_delete=True
        )
        reply_bodies = await _consumed(replies)
        event_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        assert event_queue.name.startswith("amq.gen-")
        await event_queue.bind(names.EVENTS_EXCHANGE, routing_key=names.HEARTBEAT_KEY_PREFIX + "*")
        event_bodies = await _consumed(event_queue)
        minions = await channel.get_exchange(names.MINIONS_EXCHANGE)
        await minions.publish(aio_pika.Message(b"request"), routing_key="m1", mandatory=True)
        broadcast = await channel.get_exchange(names.BROADCAST_EXCHANGE)
        await broadcast.publish(aio_pika.Message(b"locate"), routing_key="")
        assert (await _get(request_queue)).body == b"request"

        await m_channel.default_exchange.publish(aio_pika.Message(b"reply"), routing_key=replies.name)
        assert await asyncio.wait_for(reply_bodies.get(), DELIVERY_TIMEOUT) == b"reply"
        events = await m_channel.get_exchange(names.EVENTS_EXCHANGE)
        await events.publish(aio_pika.Message(b"beat"), routing_key=names.heartbeat_key("m1"))
        assert await asyncio.wait_for(event_bodies.get(), DELIVERY_TIMEOUT) == b"beat"

        refused = await overlord.channel()
        minion_queue = await refused.get_queue(names.minion_queue("m1"), ensure=False)
        await _refused(minion_queue.consume(_ignore))
        await _refused((await overlord.channel()).declare_queue(names.minion_queue("m9")))
        refused = await overlord.channel()
        await _refused(refused.default_exchange.publish(aio_pika.Message(b"x"), routing_key="func.minion.m1"))
        refused = await overlord.channel()
        await _refused(
            (await refused.get_exchange(names.EVENTS_EXCHANGE)).publish(
                aio_pika.Message(b"forged"), routing_key=names.heartbeat_key("m1")
            )
        )
    finally:
        await overlord.close()
        await minion.close()


async def test_transport_round_trip_within_the_granted_roles(tls_node: TlsNode) -> None:
    """What the AMQP 0-9-1 transport declares, binds and publishes fits both roles."""
    tls_node.broker.grant("m1", ROLE_MINION)
    tls_node.broker.grant("ol", ROLE_OVERLORD)
    minion = Amqp091Transport(tls_node.transport_url("m1"))
    overlord = Amqp091Transport(tls_node.transport_url("ol"))
    replies: asyncio.Queue[Envelope] = asyncio.Queue()
    events: asyncio.Queue[Envelope] = asyncio.Queue()

    async def serve(delivery: Delivery) -> None:
        await minion.reply(delivery.envelope.reply_to or "", Envelope(body=b"pong"))
        await delivery.ack()

    async def collect_reply(delivery: Delivery) -> None:
        await replies.put(delivery.envelope)

    async def collect_event(delivery: Delivery) -> None:
        await events.put(delivery.envelope)

    await minion.connect()
    await overlord.connect()
    try:
        await minion.serve_minion("m1", serve, prefetch=1)
        reply_to = await overlord.open_reply_queue(collect_reply)
        await overlord.subscribe_events(names.HEARTBEAT_KEY_PREFIX + "*", collect_event)

        await overlord.send("m1", Envelope(body=b"ping", reply_to=reply_to))
        await overlord.broadcast(Envelope(body=b"locate", reply_to=reply_to))
        await minion.publish_event(names.heartbeat_key("m1"), Envelope(body=b"beat"))

        bodies = {(await asyncio.wait_for(replies.get(), DELIVERY_TIMEOUT)).body for _ in range(2)}
        assert bodies == {b"pong"}
        assert (await asyncio.wait_for(events.get(), DELIVERY_TIMEOUT)).body == b"beat"
        await minion.stop_serving()
    finally:
        await overlord.close()
        await minion.close()


async def test_restart_keeps_tls_mode_and_url(
    tls_node: TlsNode, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_STATE_DIR, str(tls_node.paths.state_dir))
    server_cert = (tls_node.broker.directory / node.TLS_SUBDIR / node.SERVER_CERT_FILE).read_bytes()

    assert main(["broker", "status"]) == 0
    assert "mode: tls" in capsys.readouterr().out
    assert main(["broker", "start", "--no-tls"]) == 1
    assert "stop it first" in capsys.readouterr().err
    assert main(["broker", "stop"]) == 0
    assert main(["broker", "status"]) == 3
    assert "mode: tls" in capsys.readouterr().out
    assert main(["broker", "start"]) == 0
    assert capsys.readouterr().out.strip() == tls_node.url
    assert tls_node.broker.status().tls
    assert tls_node.paths.private_broker_url_file.read_text().strip() == tls_node.url
    assert (tls_node.broker.directory / node.TLS_SUBDIR / node.SERVER_CERT_FILE).read_bytes() == server_cert

    assert main(["broker", "grant", "m1", "--role", "minion"]) == 0
    connection = await tls_node.connect("m1")
    await connection.close()
    assert main(["broker", "revoke-user", "m1"]) == 0
    assert main(["broker", "revoke-user", "m1"]) == 1
    assert "no user m1" in capsys.readouterr().err
    with pytest.raises(LOGIN_REFUSED):
        await tls_node.connect("m1")


def test_amqp10_over_tls_logs_in_by_certificate(tls_node: TlsNode) -> None:
    """amqp10s:// to the TLS-only node, each process in its broker role: the client
    checks the broker's certificate and name against the CA, the broker logs each
    client in by its certificate (EXTERNAL). A request and its reply cross."""
    pytest.importorskip("proton")
    url = amqp10_url(tls_node.url)
    tls_node.broker.grant("a10-minion", ROLE_MINION)
    tls_node.broker.grant("a10-overlord", ROLE_OVERLORD)

    def transport(cn: str) -> Amqp10Transport:
        identity = tls_node.identity(cn)
        return Amqp10Transport(url, tls=client_tls(identity.ca_path, identity.cert_path, identity.key_path))

    async def round_trip() -> bytes:
        minion, overlord = transport("a10-minion"), transport("a10-overlord")
        await minion.connect()
        await overlord.connect()
        try:
            async def serve(delivery: Delivery) -> None:
                await delivery.ack()
                await minion.reply(str(delivery.envelope.reply_to), Envelope(body=b"pong " + delivery.envelope.body))

            await minion.serve_minion("a10-minion", serve, prefetch=4)
            replies: asyncio.Queue[Delivery] = asyncio.Queue()
            reply_to = await overlord.open_reply_queue(replies.put)
            await overlord.send("a10-minion", Envelope(body=b"over TLS", reply_to=reply_to))
            return (await asyncio.wait_for(replies.get(), DELIVERY_TIMEOUT)).envelope.body
        finally:
            await minion.close()
            await overlord.close()

    assert asyncio.run(round_trip()) == b"pong over TLS"

    async def stranger() -> None:  # a certificate from the CA, but no broker user
        await transport("a10-stranger").connect()

    with pytest.raises(TransportError):
        asyncio.run(stranger())
    with pytest.raises(ConfigError):  # TLS with no certificate at all: said before connecting
        Amqp10Transport(url)
