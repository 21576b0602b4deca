"""Which key signs this process's messages, and which CA it trusts.

The order is func's ``setup_ssl``:
1. ``key_file``, ``cert_file`` and ``ca_file`` from the config, when all three are set;
2. the certificate authority's own key on this host (func's overlord used the certmaster
   key, which ``certmaster_overrides_acls`` lets call everything);
3. this host's own certificate in the PKI directory (minion-to-minion calls).
Without any of them, messages go unsigned and only minions that do not require
signatures will answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from func_amqp.config import Paths
from func_amqp.errors import ConfigError
from func_amqp.security.ca import CA_CERT_NAME, CA_KEY_NAME, CRL_NAME, CertificateAuthority
from func_amqp.security.identity import TrustSource
from func_amqp.security.keys import (
    CA_CERT_FILE,
    CERT_SUFFIX,
    KEY_SUFFIX,
    HostIdentity,
    load_certificate,
    load_private_key,
)
from func_amqp.security.signing import Signer
from func_amqp.security.tls import BrokerTls, client_tls, wants_tls

FETCHED_CRL = CRL_NAME
CERTMASTER_SOURCE = "certmaster"
CA_HOST_TLS_CN = "func-overlord"
CA_HOST_TLS_DIR = "tls"


@dataclass(frozen=True)
class Credentials:
    """A signer for outgoing messages and the trust for incoming ones (both optional)."""

    signer: Signer | None = None
    trust: TrustSource | None = None
    source: str = "none"
    key_file: Path | None = None
    cert_file: Path | None = None
    ca_file: Path | None = None

    @property
    def fingerprint(self) -> str:
        return self.signer.fingerprint if self.signer else ""


def _readable(*paths: Path) -> bool:
    return all(os.access(p, os.R_OK) for p in paths)


def crl_path(paths: Paths, configured: str = "") -> Path:
    """func's ``crl_location``, else the CA's CRL on its own host, else a fetched copy."""
    if configured:
        return Path(configured)
    on_ca_host = paths.ca_dir / CRL_NAME
    return on_ca_host if on_ca_host.exists() else paths.pki_dir / FETCHED_CRL


def from_files(key_file: Path, cert_file: Path, ca_file: Path, crl: Path, source: str) -> Credentials:
    signer = Signer(load_private_key(key_file), load_certificate(cert_file))
    return Credentials(signer, TrustSource(ca_file, crl), source, key_file, cert_file, ca_file)


def host_certificate(pki_dir: Path) -> tuple[Path, Path] | None:
    """The one ``<name>.pem``/``<name>.cert`` pair in the PKI directory, if exactly one."""
    pairs = [
        (cert.with_suffix(KEY_SUFFIX), cert)
        for cert in sorted(pki_dir.glob(f"*{CERT_SUFFIX}"))
        if cert.name != CA_CERT_FILE and _readable(cert.with_suffix(KEY_SUFFIX), cert)
    ]
    return pairs[0] if len(pairs) == 1 else None


def overlord_credentials(paths: Paths, key_file: str = "", cert_file: str = "", ca_file: str = "") -> Credentials:
    """Credentials for an overlord, in func's order (see the module docstring)."""
    crl = crl_path(paths)
    if key_file and cert_file and ca_file:
        return from_files(Path(key_file), Path(cert_file), Path(ca_file), crl, "config")
    ca_key, ca_cert = paths.ca_dir / CA_KEY_NAME, paths.ca_dir / CA_CERT_NAME
    if _readable(ca_key, ca_cert):
        return from_files(ca_key, ca_cert, ca_cert, crl, CERTMASTER_SOURCE)
    host = host_certificate(paths.pki_dir)
    ca = paths.pki_dir / CA_CERT_FILE
    if host is not None and _readable(ca):
        return from_files(host[0], host[1], ca, crl, "host")
    return Credentials()


def issue_locally(ca_dir: Path, identity: HostIdentity) -> HostIdentity:
    """A certificate for ``identity`` straight from the CA on this host (created if
    missing), with no certmaster round trip: for the CA host's own identities and for
    an administrator provisioning hosts by hand."""
    if not identity.is_complete():
        authority = CertificateAuthority(ca_dir, autosign=True)
        if not authority.exists():
            authority.init()
        result = authority.submit(identity.csr_pem())
        if not result.signed or result.certificate is None or result.ca_certificate is None:
            raise ConfigError(f"the CA could not issue a certificate for {identity.name!r}: {result.reason}")
        identity.store(result.certificate, result.ca_certificate)
    return identity


def ca_host_tls_identity(paths: Paths, cn: str = CA_HOST_TLS_CN) -> tuple[Path, Path]:
    """Key and certificate the CA host presents to a TLS broker, issued on first need.

    Its broker user is ``cn`` (``func-amqp broker grant func-overlord --role overlord``).
    """
    identity = issue_locally(paths.ca_dir, HostIdentity(paths.ca_dir / CA_HOST_TLS_DIR, cn))
    return identity.key_path, identity.cert_path


def broker_tls(url: str, creds: Credentials, paths: Paths) -> BrokerTls | None:
    """The TLS context for ``url`` (None for plain ``amqp://``).

    The client certificate is the signing one, except for the certmaster key: a CA
    certificate is no client certificate, so the CA host presents a leaf of its own.
    """
    if not wants_tls(url):
        return None
    key_file, cert_file, ca_file = creds.key_file, creds.cert_file, creds.ca_file
    if creds.source == CERTMASTER_SOURCE:
        key_file, cert_file = ca_host_tls_identity(paths)
    if key_file is None or cert_file is None or ca_file is None:
        raise ConfigError(
            f"{url.split('?')[0]} needs a client certificate and none is available: enrol this "
            "host (funcd) or set key_file, cert_file and ca_file in the config"
        )
    return client_tls(ca_file, cert_file, key_file)
