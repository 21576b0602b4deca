"""Who signed a message, as func's ACL files name it: ``<CN>-<subject hash>``, and the
trust store that follows the CA certificate and CRL files on disk.

The hash is OpenSSL's ``x509 -hash`` of the subject (what ``func-amqp ca
--list-cert-hash`` prints); :func:`func_amqp.security.ca.subject_hash` caches it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from func_amqp.security import ca as ca_module
from func_amqp.security.signing import Identity, TrustStore

_log = logging.getLogger(__name__)

RECHECK_INTERVAL = 1.0
"""Seconds between looks at the CA and CRL files: a revocation takes effect within it."""


def _acl_key(cn: str, subject_hash: str) -> str:
    return f"{cn.lower()}-{subject_hash}"


def acl_key(cert: x509.Certificate) -> str:
    """``<CN>-<hash>``: the key func's ACL files grant methods to."""
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    return _acl_key(str(cn), ca_module.subject_hash(cert))


def identity_acl_key(identity: Identity) -> str:
    """:func:`acl_key` of a verified signer, from the names its verification cached."""
    if identity.subject_hash is None:
        return acl_key(identity.certificate)
    return _acl_key(identity.cn, identity.subject_hash)


@dataclass
class TrustSource:
    """A TrustStore that follows its files: a re-signed CRL is picked up by itself."""

    ca_path: Path
    crl_path: Path | None = None
    _stamp: tuple[float, float] | None = None
    _store: TrustStore | None = None
    _checked_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _mtimes(self) -> tuple[float, float]:
        def mtime(path: Path | None) -> float:
            try:
                return os.stat(path).st_mtime if path else 0.0
            except FileNotFoundError:
                return 0.0

        return mtime(self.ca_path), mtime(self.crl_path)

    def store(self) -> TrustStore:
        """The current store; the files are looked at most once per ``RECHECK_INTERVAL``."""
        now = time.monotonic()
        if self._store is not None and now - self._checked_at < RECHECK_INTERVAL:
            return self._store
        stamp = self._mtimes()
        with self._lock:
            self._checked_at = now
            if self._store is None or stamp != self._stamp:
                ca_cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
                try:
                    self._store = TrustStore(ca_cert, self._crl(ca_cert), subject_hash=ca_module.subject_hash)
                except ValueError as exc:  # a CRL not from this CA
                    _log.error("ignoring the revocation list %s: %s", self.crl_path, exc)
                    if self._store is None:
                        self._store = TrustStore(ca_cert, None, subject_hash=ca_module.subject_hash)
                self._stamp = stamp
                if self._store.crl_is_stale():
                    _log.warning(
                        "the revocation list %s is past its next update: re-sign it on the CA host "
                        "(func-amqp ca --revoke, or restart the certmaster) and let it reach this host",
                        self.crl_path,
                    )
            return self._store

    def _crl(self, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
        """The CRL file, if any; a damaged one is reported and the previous one kept."""
        if self.crl_path is None or not self.crl_path.exists():
            return None
        try:
            return x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except ValueError as exc:
            _log.error("cannot read the revocation list %s: %s", self.crl_path, exc)
            return self._store.crl if self._store is not None else None

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self.store().ca_certificate
