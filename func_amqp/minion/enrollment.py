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

from func_amqp.errors import MinionUnreachable, RemoteCallError
from func_amqp.minion.certmaster import CERTMASTER_MODULE
from func_amqp.overlord.rpc import RpcClient
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


async def keep_crl_current(rpc: RpcClient, certmaster: str, path: Path, interval: float) -> None:
    """Fetch the CRL now and every ``interval`` seconds; the trust store follows the file."""
    while True:
        try:
            pem = str(await rpc.call(certmaster, CERTMASTER_MODULE, "get_crl", [], interval)).encode("ascii")
            if not path.exists() or path.read_bytes() != pem:
                write_atomic(path, pem)
                _log.info("revocation list updated from %s", certmaster)
        except RemoteCallError as exc:
            _log.debug("revocation list not refreshed: %s", exc)
        await asyncio.sleep(interval)
