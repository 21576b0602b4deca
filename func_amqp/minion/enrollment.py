"""A minion getting its certificate from the certmaster, and keeping its CRL current.

certmaster's ``request_cert``: make a key and CSR, send the CSR, ask again every
``poll_interval`` seconds until an administrator signed it (``func-amqp ca --sign``) or
autosign did; then store the certificate and the CA's. The CA certificate is trusted on
first use, as certmaster's was (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cryptography import x509

from func_amqp.errors import MinionUnreachable, RemoteCallError
from func_amqp.minion.certmaster import CERTMASTER_MODULE
from func_amqp.overlord.rpc import RpcClient
from func_amqp.security.identity import TrustSource
from func_amqp.security.keys import CA_COMMAND, HostIdentity, write_atomic

_log = logging.getLogger(__name__)


async def enroll(rpc: RpcClient, identity: HostIdentity, certmaster: str, poll_interval: float) -> None:
    """Block until ``identity`` holds a signed certificate."""
    csr = identity.csr_pem().decode("ascii")
    while True:
        try:
            signed, cert, ca = await rpc.call(certmaster, CERTMASTER_MODULE, "wait_for_cert", [csr], poll_interval)
            if signed:
                identity.store(str(cert).encode("ascii"), str(ca).encode("ascii"))
                _log.info("certificate for %s received from %s", identity.name, certmaster)
                return
            _log.warning(
                "waiting for the certificate of %s to be signed: run '%s --sign %s' on the certmaster",
                identity.name, CA_COMMAND, identity.name,
            )
        except MinionUnreachable:
            _log.warning("no certmaster named %r is connected to the broker; start 'func-amqp certmaster'", certmaster)
        except RemoteCallError as exc:
            _log.warning("the certmaster did not take the request: %s", exc)
        await asyncio.sleep(poll_interval)


def acceptable_crl(pem: bytes, ca_cert: x509.Certificate, current: x509.CertificateRevocationList | None) -> x509.CertificateRevocationList:
    """The fetched CRL, if it is the CA's and not older than the one we have.

    Whoever answers as the certmaster could send anything: an older, validly signed
    CRL would undo newer revocations, so CRL numbers may only grow.
    """
    crl = x509.load_pem_x509_crl(pem)
    if not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise ValueError("it is not signed by this minion's CA")
    if current is not None and _crl_number(crl) < _crl_number(current):
        raise ValueError(f"it is older (number {_crl_number(crl)}) than the one in use ({_crl_number(current)})")
    return crl


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


async def keep_crl_current(rpc: RpcClient, certmaster: str, trust: TrustSource, path: Path, interval: float) -> None:
    """Fetch the CRL now and every ``interval`` seconds; the trust store follows the file."""
    while True:
        try:
            answer = await rpc.call(certmaster, CERTMASTER_MODULE, "get_crl", [], interval)
            pem = str(answer).encode("utf-8")
            store = trust.store()
            acceptable_crl(pem, store.ca_certificate, store.crl)
            if not path.exists() or path.read_bytes() != pem:
                write_atomic(path, pem)
                _log.info("revocation list updated from %s", certmaster)
        except RemoteCallError as exc:
            _log.debug("revocation list not refreshed: %s", exc)
        except ValueError as exc:
            _log.error("refused a revocation list from %s: %s", certmaster, exc)
        await asyncio.sleep(interval)
