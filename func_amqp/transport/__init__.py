"""Broker transports behind one seam (base.Transport), chosen by URL scheme."""

from __future__ import annotations

from urllib.parse import urlsplit

from func_amqp.errors import ConfigError
from func_amqp.security.tls import BrokerTls
from func_amqp.transport.base import Delivery, Handler, Transport

AMQP091_SCHEMES = ("amqp", "amqps")
AMQP10_SCHEMES = ("amqp10", "amqp10s")
"""AMQP 1.0 (Qpid Proton), plain and over TLS: the same protocol for brokers that speak
the standard."""
MEMORY_SCHEME = "memory"


def transport_for_url(url: str, tls: BrokerTls | None = None) -> Transport:
    """The transport that speaks ``url``'s scheme; ConfigError for anything else.

    ``tls`` (for ``amqps://`` and ``amqp10s://``) carries the client certificate and the
    trusted CA.
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise ConfigError(f"invalid broker URL: {exc}") from None
    if scheme in AMQP091_SCHEMES:
        from func_amqp.transport.amqp091 import Amqp091Transport

        return Amqp091Transport(url, ssl_context=tls.context if tls is not None else None)
    if scheme in AMQP10_SCHEMES:
        from func_amqp.transport.amqp10 import Amqp10Transport

        return Amqp10Transport(url, tls=tls)
    if scheme == MEMORY_SCHEME:
        from func_amqp.transport.memory import MemoryTransport

        return MemoryTransport(url)
    raise ConfigError(
        f"unsupported broker URL {url!r}: use amqp://HOST:PORT/ or amqps://HOST:PORT/ "
        "(AMQP 0-9-1, RabbitMQ), or amqp10://HOST:PORT/ (AMQP 1.0)"
    )


__all__ = ["Delivery", "Handler", "Transport", "transport_for_url"]
