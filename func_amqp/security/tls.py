"""TLS to the broker with the same certificates that sign messages.

An ``amqps://`` broker is verified against the func-amqp CA (or the CA in ``ca_file``),
and this process presents its own certificate, so a broker configured for EXTERNAL
login knows each minion and overlord by its certificate's common name.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from func_amqp.errors import ConfigError

TLS_SCHEMES = ("amqps", "amqp10s")


def wants_tls(url: str) -> bool:
    return url.split(":", 1)[0].lower() in TLS_SCHEMES


@dataclass(frozen=True)
class BrokerTls:
    """TLS to the broker: the files (Qpid Proton reads them itself) and the Python
    context built from them (aio-pika's), which checks them at once."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    context: ssl.SSLContext


def client_tls(ca_file: Path, cert_file: Path, key_file: Path) -> BrokerTls:
    """Verify the broker against ``ca_file``; present ``cert_file``/``key_file``."""
    return BrokerTls(ca_file, cert_file, key_file, client_context(ca_file, cert_file, key_file))


def client_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Verify the broker against ``ca_file``; present ``cert_file``/``key_file``."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot set up TLS to the broker with {cert_file} (CA {ca_file}): {exc}. "
            "Check key_file, cert_file and ca_file, or the enrolled certificate."
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
