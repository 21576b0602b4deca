"""Broker transports behind one seam (base.Transport), chosen by URL scheme."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from func_amqp.errors import ConfigError
from func_amqp.transport.base import Delivery, Handler, Transport

AMQP091_SCHEMES = ("amqp", "amqps")
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
    if scheme == MEMORY_SCHEME:
        from func_amqp.transport.memory import MemoryTransport

        return MemoryTransport(url)
    raise ConfigError(
        f"unsupported broker URL {url!r}: use amqp://HOST:PORT/ or amqps://HOST:PORT/"
    )


__all__ = ["Delivery", "Handler", "Transport", "transport_for_url"]
