"""The AMQP 1.0 transport's pure parts: message mapping, URLs, the topology file."""

from __future__ import annotations

import asyncio
import time
from unittest import mock

import pytest

from func_amqp.broker.definitions import definitions
from func_amqp.errors import ConfigError, ProtocolError
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import AgentLocateRequest, MethodRequest
from func_amqp.broker.node import amqp10_url
from func_amqp.transport import transport_for_url
from func_amqp.transport.amqp10 import APP_ID_PROPERTY, Amqp10Transport, _Reactor, proton_url, to_envelope, to_message

proton = pytest.importorskip("proton")


def test_a_request_survives_the_mapping_both_ways() -> None:
    request = MethodRequest("test", "add", [1, 2], time.time() + 30, "web1")
    env = codec.encode(request, correlation_id="c1", reply_to="/exchange/amq.direct/func.reply.x")
    message = proton.Message()
    message.decode(to_message(env).encode())  # over the wire format and back
    back = to_envelope(message)
    assert back.body == env.body and back.headers == env.headers
    assert (back.correlation_id, back.reply_to, back.app_id) == ("c1", env.reply_to, env.app_id)
    assert back.content_type == env.content_type and back.type == env.type
    assert codec.decode(back, 1 << 20) == codec.decode(env, 1 << 20)
    assert 29 < message.ttl <= 30  # the deadline travels as the message's time to live


def test_the_app_id_travels_as_an_application_property() -> None:
    message = to_message(Envelope(body=b"{}", app_id=names.APP_ID))
    assert message.properties[APP_ID_PROPERTY] == names.APP_ID
    assert APP_ID_PROPERTY not in to_envelope(message).headers


@pytest.mark.parametrize("body", [None, 42, {"a": 1}, ["x"]])
def test_a_body_that_is_not_bytes_becomes_empty_for_the_codec_to_refuse(body: object) -> None:
    message = proton.Message(body=body)
    env = to_envelope(message)
    assert env.body == b""
    with pytest.raises(ProtocolError):
        codec.decode(env, 1 << 20)


def test_headers_of_other_types_are_dropped() -> None:
    message = proton.Message(body=b"{}", properties={"ok": "v", "n": 3, "nested": {"a": 1}, "list": [1]})
    assert to_envelope(message).headers == {"ok": "v", "n": 3}


def test_urls() -> None:
    assert proton_url("amqp10://u:p@host:5672/vh?x=1") == "amqp://u:p@host:5672"
    assert amqp10_url("amqp://guest:guest@127.0.0.1:5672/") == "amqp10://guest:guest@127.0.0.1:5672/"
    # the private TLS node: Proton checks DNS names only, and EXTERNAL needs no query
    assert amqp10_url("amqps://127.0.0.1:5671/?auth=external") == "amqp10s://localhost:5671/"
    with pytest.raises(ConfigError):
        amqp10_url("stomp://host/")
    assert proton_url("amqp10s://localhost:5671/") == "amqps://localhost:5671"
    assert isinstance(transport_for_url("amqp10://host:5672/"), Amqp10Transport)
    with pytest.raises(ConfigError, match="amqp10://"):
        transport_for_url("stomp://host/")


def test_a_named_locate_round_trips_and_a_bad_name_is_refused() -> None:
    env = codec.encode(AgentLocateRequest(time.time() + 5, "web1"), correlation_id="p")
    assert codec.decode(env, 1 << 20).name == "web1"
    assert codec.decode(codec.encode(AgentLocateRequest(time.time() + 5)), 1 << 20).name == ""
    env.body = b'{"_name": 5}'
    with pytest.raises(ProtocolError):
        codec.decode(env, 1 << 20)


def test_definitions_hold_every_shared_exchange_durably() -> None:
    held = {e["name"]: e for e in definitions()["exchanges"]}
    for name, kind, arguments in names.EXCHANGES:
        assert held[name]["type"] == kind and held[name]["durable"] and held[name]["arguments"] == (arguments or {})
    assert held[names.DEAD_LETTER_EXCHANGE]["type"] == "fanout"
    assert definitions()["queues"][0]["arguments"] == names.DEAD_LETTER_QUEUE_ARGUMENTS


def test_tls_without_a_certificate_is_refused_before_connecting() -> None:
    with pytest.raises(ConfigError, match="no certificate"):
        Amqp10Transport("amqp10s://broker.example.org:5671/")


@pytest.mark.parametrize("ending", ["on_session_error", "on_transport_closed", "on_connection_remote_close", "on_disconnected"])
def test_every_way_a_connection_ends_leads_to_a_reconnect(ending: str) -> None:
    """RabbitMQ, stopping, may end the session before the connection, and Proton then
    reports no disconnect: each ending of the current connection schedules a reconnect,
    an ending of a connection already replaced does nothing."""
    loop = asyncio.new_event_loop()
    try:
        reactor = _Reactor("amqp10://guest:guest@127.0.0.1:1/", loop, None)
        reactor.ever_opened = True
        current = mock.MagicMock(name="connection", state=0)
        reactor.connection = current
        stale = mock.Mock(connection=mock.MagicMock(name="old connection"))
        getattr(reactor, ending)(stale)
        assert not reactor._reconnect_pending and reactor.connection is current
        event = mock.Mock(connection=current)
        event.session.remote_condition = None
        event.connection.remote_condition = None
        event.transport.condition = None
        with mock.patch.object(reactor.container, "schedule") as schedule:
            getattr(reactor, ending)(event)
        assert reactor._reconnect_pending and reactor.connection is None
        schedule.assert_called_once()
    finally:
        loop.close()
