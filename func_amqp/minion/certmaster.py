"""certmaster on the bus: the one agent that answers callers without certificates.

certmaster served ``wait_for_cert(csr)`` over plain XML-RPC so that a new minion could
ask for its certificate. Here the same method is served by an agent named
``certmaster`` (``func-amqp certmaster``), next to the CA. It takes unsigned requests by
design, and serves only certificate requests and the revocation list (besides the
built-in ``system.*`` introspection every agent answers).
"""

from __future__ import annotations

import asyncio
import logging

from func_amqp.config import Paths
from func_amqp.minion.audit import AuditLog
from func_amqp.minion.modules.func_module import FuncModule
from func_amqp.minion.security import OpenAccess
from func_amqp.minion.server import AmqpInterface
from func_amqp.minion.service import MinionService, ServiceSettings
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.credentials import ca_host_tls_identity
from func_amqp.security.tls import BrokerTls, client_tls, wants_tls
from func_amqp.transport import transport_for_url

_log = logging.getLogger(__name__)

CERTMASTER_MODULE = "certmaster"


class Certmaster(FuncModule):
    """certmaster's method, and the CRL so minions can refuse revoked callers."""

    version = "1.0.0"
    api_version = "1.0.0"
    description = "Certificate requests for new minions, and the revocation list"
    _single = True  # one instance bound to the CA, not a fresh one per call
    authority: CertificateAuthority

    def wait_for_cert(self, csr_pem: str) -> list[object]:
        """certmaster's answer: [signed, certificate PEM, CA certificate PEM]."""
        result = self.authority.submit(csr_pem.encode("utf-8"))
        if result.reason:
            _log.info("certificate request not signed: %s", result.reason)
        return [
            result.signed,
            (result.certificate or b"").decode("ascii"),
            (result.ca_certificate or b"").decode("ascii"),
        ]

    def get_crl(self) -> str:
        """The current certificate revocation list, PEM."""
        return self.authority.crl_pem().decode("ascii")


def certmaster_interface(authority: CertificateAuthority) -> AmqpInterface:
    module = Certmaster()
    module.authority = authority
    return AmqpInterface({CERTMASTER_MODULE: module})


def _tls(paths: Paths, authority: CertificateAuthority, name: str, url: str) -> BrokerTls | None:
    """On a TLS broker the agent logs in as ``name`` (a minion-role broker user)."""
    if not wants_tls(url):
        return None
    key_file, cert_file = ca_host_tls_identity(paths, name)
    return client_tls(authority.cert_path, cert_file, key_file)


async def serve_certmaster(paths: Paths, name: str, broker_url: str, stop: asyncio.Event) -> None:
    """Serve certificate requests for the CA in ``paths`` until ``stop`` is set."""
    authority = CertificateAuthority.from_paths(paths)
    if not authority.exists():
        authority.init()
        _log.info("created the certificate authority in %s", authority.directory)
    transport = transport_for_url(broker_url, _tls(paths, authority, name, broker_url))
    await transport.connect()
    try:
        service = MinionService(
            transport,
            certmaster_interface(authority),
            ServiceSettings(name=name, max_concurrent_calls=4, discoverable=False),
            gate=OpenAccess(),
            audit=AuditLog(None),
        )
        await service.start()
        _log.info("certmaster %s serving certificate requests (autosign: %s)", name, authority.autosign)
        await stop.wait()
        await service.stop()
    finally:
        await transport.close()
