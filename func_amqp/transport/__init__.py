"""Broker transports behind one seam (base.Transport), chosen by URL scheme."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from func_amqp.errors import ConfigError
from func_amqp.transport.base import Delivery, Handler, Transport

AMQP091_SCHEMES = ("amqp", "amqps")
AMQP10_SCHEME = "amqp10"
"""AMQP 1.0 (Qpid Proton): the same protocol for brokers that speak the standard."""
MEMORY_SCHEME = "memory"


def transport_for_url(url: str, ssl_context: ssl.SSLContext | None = None) -> Transport:
    """The transport that speaks ``url``'s scheme; ConfigError for anything else.

    ``ssl_context`` (for ``amqps://``) carries the client certificate and trusted CA.
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise ConfigError(f"invalid broker URL: {exc}") from None
    if scheme in AMQP091_SCHEMES:
        from func_amqp.transport.amqp091 import Amqp091Transport

        return Amqp091Transport(url, ssl_context=ssl_context)
    if scheme == AMQP10_SCHEME:
        from func_amqp.transport.amqp10 import Amqp10Transport

        return Amqp10Transport(url)
    if scheme == MEMORY_SCHEME:
        from func_amqp.transport.memory import MemoryTransport

        return MemoryTransport(url)
    raise ConfigError(
        f"unsupported broker URL {url!r}: use amqp://HOST:PORT/ or amqps://HOST:PORT/ "
        "(AMQP 0-9-1, RabbitMQ), or amqp10://HOST:PORT/ (AMQP 1.0)"
    )


def amqp10_url(url: str) -> str:
    """The same broker for the AMQP 1.0 transport: a RabbitMQ node with its AMQP 1.0
    plugin speaks both protocols on one port."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in AMQP091_SCHEMES or parts.scheme.lower() == "amqps":
        raise ConfigError(f"no AMQP 1.0 URL for {url!r}: only plain amqp:// URLs map to amqp10://")
    return parts._replace(scheme=AMQP10_SCHEME).geturl()


__all__ = ["amqp10_url", "Delivery", "Handler", "Transport", "transport_for_url"]
