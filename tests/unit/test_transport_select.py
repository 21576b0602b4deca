"""Choosing a transport by URL scheme, and URLs with their passwords hidden."""

from __future__ import annotations

import pytest

from func_amqp.errors import ConfigError
from func_amqp.transport import Transport, transport_for_url
from func_amqp.transport.amqp091 import Amqp091Transport
from func_amqp.transport.base import masked_url
from func_amqp.transport.memory import MemoryTransport


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@localhost:5672/",
        "amqps://broker.example.org:5671/%2F",
        "amqp://localhost",
        "AMQP://LOCALHOST/",
        "Amqps://h/",
    ],
)
def test_amqp_urls_get_the_amqp091_transport(url: str) -> None:
    transport = transport_for_url(url)
    assert type(transport) is Amqp091Transport
    assert isinstance(transport, Transport)
    assert transport.url == url
    assert not transport.is_connected


@pytest.mark.parametrize("url", ["memory://", "memory://test-hub", "MEMORY://x"])
def test_memory_urls_get_the_memory_transport(url: str) -> None:
    transport = transport_for_url(url)
    assert type(transport) is MemoryTransport
    assert transport.url == url


def test_each_call_makes_a_new_transport() -> None:
    assert transport_for_url("memory://same") is not transport_for_url("memory://same")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "localhost:5672",
        "localhost",
        "http://broker/",
        "https://broker/",
        "amqp1://broker/",
        "stomp://broker/",
        "file:///var/run/broker",
        "/var/run/broker",
        "amqp+ssl://broker/",
        " amqp",
    ],
)
def test_other_schemes_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported broker URL") as info:
        transport_for_url(url)
    message = str(info.value)
    assert "amqp://HOST:PORT/" in message
    assert repr(url) in message


@pytest.mark.parametrize("url", ["amqp://[::1/", "amqp://u:p@[broker/", "amqps://[not-ipv6]/"])
def test_unparseable_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="invalid broker URL"):
        transport_for_url(url)


def test_unsupported_scheme_error_does_not_expose_parsing() -> None:
    with pytest.raises(ConfigError) as info:
        transport_for_url("http://user:pw@h/")
    assert info.value.__cause__ is None


# --- masked_url -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqps://user:s3cret@broker.example.org/%2F", "amqps://user:***@broker.example.org/%2F"),
        ("amqp://user:secret@host", "amqp://user:***@host"),
        ("amqp://user:secret@host:5672/vhost?heartbeat=30#frag", "amqp://user:***@host:5672/vhost?heartbeat=30#frag"),
        ("amqp://user:p%40ss%3Aword@host/", "amqp://user:***@host/"),
        ("amqp://user:p@ss@host/", "amqp://user:***@host/"),
        ("amqp://user:pa:ss@host/", "amqp://user:***@host/"),
        ("amqp://user:@host/", "amqp://user:***@host/"),
        ("amqp://:secret@host/", "amqp://:***@host/"),
        ("amqp://user:secret@[::1]:5672/", "amqp://user:***@[::1]:5672/"),
        ("amqp://user:secret@[fe80::1]/", "amqp://user:***@[fe80::1]/"),
        ("amqp://user:secret@Broker.Example.ORG/", "amqp://user:***@Broker.Example.ORG/"),
        ("amqp://user:secret@host:notaport/", "amqp://user:***@host:notaport/"),
    ],
)
def test_passwords_are_hidden(url: str, masked: str) -> None:
    assert masked_url(url) == masked
    assert "secret" not in masked_url(url)
    assert "s3cret" not in masked_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "amqp://localhost:5672/",
        "amqp://guest@localhost/",
        "amqp://[::1]:5672/",
        "amqps://broker.example.org/%2F?heartbeat=30",
        "memory://default",
        "memory://",
        "",
        "not a url",
        "amqp://Host.Example.ORG:5672/",
    ],
)
def test_urls_without_password_are_untouched(url: str) -> None:
    assert masked_url(url) == url


@pytest.mark.parametrize("url", ["amqp://user:secret@[::1/", "amqp://user:secret@[broker/vhost"])
def test_unparseable_urls_still_hide_credentials(url: str) -> None:
    masked = masked_url(url)
    assert "secret" not in masked
    assert "user" not in masked
    assert masked.startswith("amqp://***@")


def test_unparseable_url_without_credentials_is_untouched() -> None:
    assert masked_url("amqp://[::1/") == "amqp://[::1/"
