"""The certificate authority: certmaster's CA, requests and signing, kept in files.

Layout of the CA directory (mode 0700)::

    ca.key            the CA's private key (0600)
    ca.crt            the CA's self-signed certificate
    serial            the next serial number, hexadecimal (as openssl's serial file)
    csrs/<cn>.csr     requests waiting for ``func-amqp ca --sign``
    certs/<cn>.crt    signed certificates
    revoked.json      every revocation and the CRL number: the source of crl.pem
    crl.pem           the certificate revocation list, signed by the CA
    .lock             serialises writers (fcntl) so no two certificates share a serial

:meth:`CertificateAuthority.submit` is certmaster's ``wait_for_cert``; the other
methods are ``certmaster-ca``'s verbs. Every file is replaced atomically, so a reader
never sees half a certificate.
"""

from __future__ import annotations

import fcntl
import fnmatch
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from func_amqp.config import Paths, _Section
from func_amqp.errors import ConfigError
from func_amqp.security.keys import (
    CA_COMMAND,
    DEFAULT_KEY_TYPE,
    KEY_MODE,
    KEY_TYPES,
    MAX_CN_LENGTH,
    ORGANIZATION,
    PUBLIC_MODE,
    PkiError,
    PrivateKey,
    PublicKey,
    cert_pem,
    check_key_strength,
    clean_command,
    common_name,
    ensure_private_dir,
    generate_key,
    host_name,
    key_pem,
    load_certificate,
    load_private_key,
    public_key_der,
    same_public_key,
    signing_hash,
    write_atomic,
)

log = logging.getLogger(__name__)

CERTMASTER_CONF = "certmaster.conf"

CA_KEY_NAME = "ca.key"
CA_CERT_NAME = "ca.crt"
SERIAL_NAME = "serial"
CSR_DIR_NAME = "csrs"
CERT_DIR_NAME = "certs"
CRL_NAME = "crl.pem"
REVOKED_NAME = "revoked.json"
LOCK_NAME = ".lock"
CSR_EXT = ".csr"
CERT_EXT = ".crt"

CA_CN_SUFFIX = "-CA-KEY"
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=825)
CRL_VALIDITY = timedelta(days=7)
CRL_REFRESH_MARGIN = timedelta(days=1)
"""crl() re-signs the list when its next update is closer than this."""
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this early, so a host whose clock lags a little accepts them."""
FIRST_SERIAL = 1
MAX_PATTERN_LENGTH = 255
SUBJECT_HASH_CACHE = 1024
OPENSSL_TIMEOUT = 30.0

NO_CA_ADVICE = f"create it with '{CA_COMMAND} --init'"


class RequestRejected(PkiError):
    """A certificate request is malformed, badly signed, badly named or its key too weak.

    Asking again with the same request cannot succeed, unlike a pending request.
    """


@dataclass(frozen=True)
class CaConfig(_Section):
    """certmaster.conf's ``[main]``: the keys that still mean something here."""

    autosign: bool = False
    key_type: str = DEFAULT_KEY_TYPE

    @classmethod
    def for_paths(cls, paths: Paths) -> "CaConfig":
        return cls.load(paths.config_dir / CERTMASTER_CONF)

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.key_type not in KEY_TYPES:
            where = f" in {source}" if source else ""
            raise ConfigError(f"'key_type'{where} must be one of {', '.join(KEY_TYPES)}, got {self.key_type!r}")


@dataclass(frozen=True)
class SignResult:
    """The answer to a request: certmaster's ``[ok, cert_pem, ca_cert_pem]`` plus why."""

    signed: bool
    certificate: bytes | None = None
    ca_certificate: bytes | None = None
    reason: str = ""


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate, as kept in revoked.json and listed in the CRL."""

    cn: str
    serial: int
    revoked_at: datetime
    key_sha256: str

    def to_json(self) -> dict[str, object]:
        return {
            "cn": self.cn,
            "serial": self.serial,
            "revoked_at": self.revoked_at.isoformat(),
            "key_sha256": self.key_sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "Revocation":
        return cls(
            cn=str(data["cn"]),
            serial=int(str(data["serial"])),
            revoked_at=datetime.fromisoformat(str(data["revoked_at"])),
            key_sha256=str(data["key_sha256"]),
        )


@dataclass
class _RevocationState:
    crl_number: int
    revoked: list[Revocation]


# --- names and patterns ---------------------------------------------------------------


def check_pattern(pattern: str) -> str:
    """A host-name glob from outside, lower-cased; it may never name a path."""
    low = pattern.lower()
    if not low or len(low) > MAX_PATTERN_LENGTH or ".." in low or any(c in low for c in "/\\\0"):
        raise PkiError(f"not a host name or glob: {pattern!r}")
    return low


def _match(names: Iterable[str], patterns: Iterable[str] | None) -> list[str]:
    """The names any glob matches (all names when ``patterns`` is None), sorted."""
    names = sorted(set(names))
    if patterns is None:
        return names
    globs = [check_pattern(p) for p in patterns]
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def default_ca_cn() -> str:
    """certmaster's ``<hostname>-CA-KEY``, from the short host name if the full one is too long."""
    host = socket.gethostname().lower()
    if len(host) + len(CA_CN_SUFFIX) > MAX_CN_LENGTH:
        host = host.split(".")[0][: MAX_CN_LENGTH - len(CA_CN_SUFFIX)]
    return f"{host}{CA_CN_SUFFIX}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- requests -------------------------------------------------------------------------


def parse_request(csr_pem: bytes) -> tuple[x509.CertificateSigningRequest, str]:
    """The request and its lower-cased CN, or :class:`RequestRejected` saying why."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise RequestRejected("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise RequestRejected("the request's signature does not match its key")
    try:
        cn = host_name(common_name(csr.subject))
        check_key_strength(csr.public_key())
    except PkiError as exc:
        raise RequestRejected(f"request refused: {exc}") from None
    return csr, cn


def _key_sha256(key: object) -> str:
    return hashlib.sha256(public_key_der(key)).hexdigest()


def _subject(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _leaf_key_usage(public_key: object) -> x509.KeyUsage:
    """digitalSignature; RSA keys may also encipher keys (RSA key transport), EC keys
    agree them (the MAC keys of security/pair_keys.py)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


# --- the authority --------------------------------------------------------------------


class CertificateAuthority:
    """certmaster's CA in one directory; safe to use from several processes at once."""

    def __init__(self, directory: Path, *, autosign: bool = False, key_type: str = DEFAULT_KEY_TYPE) -> None:
        self.directory = Path(directory)
        self.autosign = autosign
        self.key_type = key_type

    @classmethod
    def from_paths(cls, paths: Paths) -> "CertificateAuthority":
        """The CA in ``paths.ca_dir``, configured by ``<config_dir>/certmaster.conf``."""
        config = CaConfig.for_paths(paths)
        return cls(paths.ca_dir, autosign=config.autosign, key_type=config.key_type)

    # file names

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY_NAME

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT_NAME

    @property
    def serial_path(self) -> Path:
        return self.directory / SERIAL_NAME

    @property
    def csr_dir(self) -> Path:
        return self.directory / CSR_DIR_NAME

    @property
    def cert_dir(self) -> Path:
        return self.directory / CERT_DIR_NAME

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_NAME

    @property
    def revoked_path(self) -> Path:
        return self.directory / REVOKED_NAME

    def csr_path(self, cn: str) -> Path:
        return self.csr_dir / f"{host_name(cn)}{CSR_EXT}"

    def signed_path(self, cn: str) -> Path:
        return self.cert_dir / f"{host_name(cn)}{CERT_EXT}"

    # the CA itself

    def exists(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists()

    def init(self, cn: str | None = None, key_type: str | None = None) -> x509.Certificate:
        """Create the CA unless it exists; return its certificate either way.

        A key left without its certificate (an interrupted init) gets one; a
        certificate without its key cannot be repaired and is reported.
        """
        with self._locked():
            if self.exists():
                return self.ca_certificate()
            if self.cert_path.exists():
                raise PkiError(
                    f"{self.cert_path} exists but {self.key_path} is missing; restore the key or remove the directory"
                )
            if self.key_path.exists():
                key = load_private_key(self.key_path)
            else:
                key = generate_key(key_type or self.key_type)
                write_atomic(self.key_path, key_pem(key), KEY_MODE)
            cert = self._self_signed(key, cn or default_ca_cn())
            self.csr_dir.mkdir(exist_ok=True)
            self.cert_dir.mkdir(exist_ok=True)
            write_atomic(self.cert_path, cert_pem(cert), PUBLIC_MODE)
            if not self.serial_path.exists():
                write_atomic(self.serial_path, f"{FIRST_SERIAL:02X}\n".encode())
            self._write_crl(key, cert, self._load_state())
        log.info("created the certificate authority %s in %s", cert.subject.rfc4514_string(), self.directory)
        return cert

    @staticmethod
    def _self_signed(key: PrivateKey, cn: str) -> x509.Certificate:
        if not 0 < len(cn) <= MAX_CN_LENGTH:
            raise PkiError(f"the CA's name must have 1 to {MAX_CN_LENGTH} characters, got {cn!r}")
        subject = _subject(cn)
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, signing_hash(key))
        )

    def ca_certificate(self) -> x509.Certificate:
        if not self.cert_path.exists():
            raise PkiError(f"no certificate authority in {self.directory}; {NO_CA_ADVICE}")
        return load_certificate(self.cert_path)

    def ca_certificate_pem(self) -> bytes:
        return cert_pem(self.ca_certificate())

    def _load_ca(self) -> tuple[PrivateKey, x509.Certificate]:
        """The CA's key and certificate, checked to belong together and to be valid now."""
        if not self.exists():
            raise PkiError(f"no certificate authority in {self.directory}; {NO_CA_ADVICE}")
        key = load_private_key(self.key_path)
        cert = load_certificate(self.cert_path)
        if not same_public_key(key, cert.public_key()):
            raise PkiError(f"{self.cert_path} does not belong to {self.key_path}")
        if cert.not_valid_after_utc <= _now():
            raise PkiError(f"the CA certificate {self.cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        return key, cert

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the CA's lock: one writer at a time, across threads and processes."""
        ensure_private_dir(self.directory)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, KEY_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # requests (certmaster's wait_for_cert)

    def submit(self, csr_pem: bytes) -> SignResult:
        """Answer a host's request: its certificate if signed (or autosigned), else why not.

        Raises :class:`RequestRejected` for a request that can never be signed.
        """
        csr, cn = parse_request(csr_pem)
        with self._locked():
            ca_key, ca_cert = self._load_ca()
            if cn == common_name(ca_cert.subject).lower():
                raise RequestRejected(f"{cn!r} is the certificate authority's own name; no host may bear it")
            return self._submit_locked(csr, cn, ca_key, ca_cert)

    def _submit_locked(
        self, csr: x509.CertificateSigningRequest, cn: str, ca_key: PrivateKey, ca_cert: x509.Certificate
    ) -> SignResult:
        key = csr.public_key()
        if self._revoked_key(key):
            return SignResult(False, reason=f"the key belongs to a revoked certificate of {cn}; make a new key")
        existing = self._current_certificate(cn)
        if existing is not None:
            if same_public_key(existing.public_key(), key):
                return SignResult(True, cert_pem(existing), cert_pem(ca_cert), "already signed")
            reason = f"a certificate for {cn} exists with a different key; run {clean_command(cn)} first"
            log.warning("request refused: %s", reason)
            return SignResult(False, reason=reason)
        pending = self._pending_request(cn)
        if pending is not None and not same_public_key(pending.public_key(), key):
            reason = f"a request for {cn} with a different key is pending; run {clean_command(cn)} first"
            log.warning("request refused: %s", reason)
            return SignResult(False, reason=reason)
        if self.autosign:
            cert = self._issue(csr, cn, ca_key, ca_cert)
            return SignResult(True, cert_pem(cert), cert_pem(ca_cert), "signed automatically")
        if pending is None:
            write_atomic(self.csr_path(cn), csr.public_bytes(serialization.Encoding.PEM))
            log.info("request from %s waits to be signed", cn)
        return SignResult(False, reason=f"waiting for an administrator: {CA_COMMAND} --sign {cn}")

    def _current_certificate(self, cn: str) -> x509.Certificate | None:
        """The signed certificate unless it has expired: an expired one may be renewed."""
        cert = self.certificate(cn)
        if cert is not None and cert.not_valid_after_utc <= _now():
            return None
        return cert

    def _pending_request(self, cn: str) -> x509.CertificateSigningRequest | None:
        try:
            return x509.load_pem_x509_csr(self.csr_path(cn).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            raise PkiError(f"{self.csr_path(cn)} is damaged; remove it with {clean_command(cn)}") from None

    # certmaster-ca's verbs

    def list_pending(self, patterns: Iterable[str] | None = None) -> list[str]:
        return _match(self._names(self.csr_dir, CSR_EXT), patterns)

    def list_signed(self, patterns: Iterable[str] | None = None) -> list[str]:
        return _match(self._names(self.cert_dir, CERT_EXT), patterns)

    @staticmethod
    def _names(directory: Path, suffix: str) -> list[str]:
        """Host names of the files in ``directory``; anything else there is ignored."""
        try:
            stems = [p.name[: -len(suffix)] for p in directory.iterdir() if p.name.endswith(suffix)]
        except FileNotFoundError:
            return []
        return [s for s in stems if s == s.lower() and _is_host_name(s)]

    def sign(self, patterns: Iterable[str]) -> list[str]:
        """Sign the pending requests the globs match; return their host names."""
        patterns = list(patterns)
        with self._locked():
            ca_key, ca_cert = self._load_ca()
            names = self.list_pending(patterns)
            requests = {cn: self._signable(cn) for cn in names}
            for cn, csr in requests.items():
                self._issue(csr, cn, ca_key, ca_cert)
        return names

    def _signable(self, cn: str) -> x509.CertificateSigningRequest:
        """A pending request checked again: files may have been put there by hand."""
        path = self.csr_path(cn)
        try:
            csr, csr_cn = parse_request(path.read_bytes())
        except RequestRejected as exc:
            raise RequestRejected(f"{path}: {exc}; remove it with {clean_command(cn)}") from None
        if csr_cn != cn:
            raise RequestRejected(f"{path} asks for {csr_cn!r}, not {cn!r}; remove it with {clean_command(cn)}")
        if self._revoked_key(csr.public_key()):
            raise RequestRejected(f"{path} carries a revoked certificate's key; remove it with {clean_command(cn)}")
        return csr

    def issue_server(
        self,
        cn: str,
        public_key: PublicKey,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
    ) -> x509.Certificate:
        """Certify a service this CA's hosts connect to, such as the private broker.

        Clients verify a server by the name or address they dialled, so the certificate
        lists ``dns_names`` and ``ip_addresses`` besides ``cn``. It is stored under
        ``cn`` like a host's, so ``--list-signed`` shows it and ``--revoke`` retires it.
        """
        cn = host_name(cn)
        check_key_strength(public_key)
        dns = list(dict.fromkeys([cn, *(host_name(name) for name in dns_names)]))
        try:
            ips = [ipaddress.ip_address(address) for address in ip_addresses]
        except ValueError as exc:
            raise PkiError(f"not an IP address: {exc}") from None
        alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        alt_names += [x509.IPAddress(ip) for ip in ips]
        with self._locked():
            ca_key, ca_cert = self._load_ca()
            if self._revoked_key(public_key):
                raise PkiError(f"the key belongs to a revoked certificate of {cn}; make a new key")
            return self._issue(public_key, cn, ca_key, ca_cert, alt_names=alt_names)

    def _issue(
        self,
        request: x509.CertificateSigningRequest | PublicKey,
        cn: str,
        ca_key: PrivateKey,
        ca_cert: x509.Certificate,
        *,
        alt_names: Sequence[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        """Sign, store the certificate and drop the request. The caller holds the lock.

        ``request`` is a host's request, or the bare public key of a certificate the CA
        makes itself; ``alt_names`` replaces the default subject alternative name ``cn``.
        """
        public = request.public_key() if isinstance(request, x509.CertificateSigningRequest) else request
        now = _now()
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(_subject(cn))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(self._next_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(public), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(alt_names or [x509.DNSName(cn)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, signing_hash(ca_key))
        )
        self.cert_dir.mkdir(exist_ok=True)
        write_atomic(self.signed_path(cn), cert_pem(cert))
        self.csr_path(cn).unlink(missing_ok=True)
        log.info("signed %s, serial %X", cn, cert.serial_number)
        return cert

    def _next_serial(self) -> int:
        """Take the next serial from the serial file. The caller holds the lock."""
        try:
            serial = int(self.serial_path.read_text().strip(), 16)
        except FileNotFoundError:
            serial = FIRST_SERIAL
        except ValueError:
            raise PkiError(f"{self.serial_path} does not hold a hexadecimal serial number") from None
        write_atomic(self.serial_path, f"{serial + 1:02X}\n".encode())
        return serial

    def clean(self, patterns: Iterable[str]) -> list[str]:
        """Remove the requests and certificates the globs match (certmaster-ca --clean).

        Cleaning does not revoke: a copy of a cleaned certificate stays valid.
        """
        patterns = list(patterns)
        with self._locked():
            names = _match(self.list_pending() + self.list_signed(), patterns)
            for cn in names:
                self.csr_path(cn).unlink(missing_ok=True)
                self.signed_path(cn).unlink(missing_ok=True)
                log.info("cleaned %s", cn)
        return names

    def certificate(self, cn: str) -> x509.Certificate | None:
        """The signed certificate of ``cn``, or None."""
        path = self.signed_path(cn)
        if not path.exists():
            return None
        return load_certificate(path)

    # revocation

    def revoke(self, patterns: Iterable[str]) -> list[str]:
        """Revoke the signed certificates the globs match, and re-sign the CRL.

        The certificate leaves certs/ so the host may enrol again with a new key; its
        revocation stays in revoked.json and the CRL.
        """
        patterns = list(patterns)
        with self._locked():
            ca_key, ca_cert = self._load_ca()
            names = self.list_signed(patterns)
            state = self._load_state()
            now = _now()
            for cn in names:
                cert = load_certificate(self.signed_path(cn))
                state.revoked.append(Revocation(cn, cert.serial_number, now, _key_sha256(cert.public_key())))
            if names:
                self._write_crl(ca_key, ca_cert, state)
            for cn in names:
                self.signed_path(cn).unlink(missing_ok=True)
                log.info("revoked %s", cn)
        return names

    def list_revoked(self) -> list[Revocation]:
        return list(self._load_state().revoked)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        """Whether this CA revoked ``cert`` (by serial; the CA issued every serial once)."""
        return any(r.serial == cert.serial_number for r in self._load_state().revoked)

    def _revoked_key(self, key: object) -> bool:
        digest = _key_sha256(key)
        return any(r.key_sha256 == digest for r in self._load_state().revoked)

    def _load_state(self) -> _RevocationState:
        """revoked.json; a damaged file stops everything rather than forget revocations."""
        try:
            data = json.loads(self.revoked_path.read_text(encoding="utf-8"))
            return _RevocationState(int(data["crl_number"]), [Revocation.from_json(r) for r in data["revoked"]])
        except FileNotFoundError:
            return _RevocationState(0, [])
        except (ValueError, KeyError, TypeError) as exc:
            raise PkiError(f"{self.revoked_path} is damaged ({exc}); restore it from a backup") from None

    def _write_crl(
        self, ca_key: PrivateKey, ca_cert: x509.Certificate, state: _RevocationState
    ) -> x509.CertificateRevocationList:
        """Record ``state`` with the next CRL number, then sign and write crl.pem from it."""
        state.crl_number += 1
        data = {"crl_number": state.crl_number, "revoked": [r.to_json() for r in state.revoked]}
        write_atomic(self.revoked_path, (json.dumps(data, indent=2) + "\n").encode())
        now = _now()
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(state.crl_number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        )
        for r in state.revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(r.serial).revocation_date(r.revoked_at).build()
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(ca_key, signing_hash(ca_key))
        write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return crl

    def crl(self) -> x509.CertificateRevocationList:
        """The current CRL, re-signed first when missing, out of date or about to expire."""
        crl = self._stored_crl()
        if crl is not None and not self._crl_stale(crl):
            return crl
        with self._locked():
            crl = self._stored_crl()
            if crl is not None and not self._crl_stale(crl):
                return crl
            ca_key, ca_cert = self._load_ca()
            return self._write_crl(ca_key, ca_cert, self._load_state())

    def crl_pem(self) -> bytes:
        return self.crl().public_bytes(serialization.Encoding.PEM)

    def _stored_crl(self) -> x509.CertificateRevocationList | None:
        try:
            return x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def _crl_stale(self, crl: x509.CertificateRevocationList) -> bool:
        next_update = crl.next_update_utc
        if next_update is None or next_update - _now() < CRL_REFRESH_MARGIN:
            return True
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            return True
        return number != self._load_state().crl_number

    # ACL names

    @staticmethod
    def subject_hash(cert: x509.Certificate) -> str:
        """OpenSSL's subject hash of ``cert`` (see :func:`subject_hash`)."""
        return subject_hash(cert)

    def cert_hash_names(self, patterns: Iterable[str] | None = None) -> list[str]:
        """``<CN>-<subject hash>`` of the signed certificates: the key func's ACL files use."""
        names = []
        for cn in self.list_signed(patterns):
            cert = self.certificate(cn)
            if cert is not None:
                names.append(f"{cn}-{subject_hash(cert)}")
        return names


def _is_host_name(name: str) -> bool:
    try:
        host_name(name)
    except PkiError:
        return False
    return True


# --- OpenSSL's subject hash -----------------------------------------------------------


def subject_hash(cert: x509.Certificate) -> str:
    """OpenSSL's ``x509 -hash`` of the subject: 8 hex digits, as func's ACL names use.

    Asks the ``openssl`` program, else pyOpenSSL, else computes it here the same way.
    """
    return _subject_hash_of_der(cert.public_bytes(serialization.Encoding.DER))


@functools.lru_cache(maxsize=SUBJECT_HASH_CACHE)
def _subject_hash_of_der(der: bytes) -> str:
    openssl = shutil.which("openssl")
    value = _openssl_subject_hash(openssl, der) if openssl else None
    if value is None:
        value = _pyopenssl_subject_hash(der)
    if value is None:
        value = canonical_subject_hash(x509.load_der_x509_certificate(der))
    return value


_HASH_RE = re.compile(r"^[0-9a-f]{8}$")


def _openssl_subject_hash(openssl: str, der: bytes) -> str | None:
    try:
        done = subprocess.run(
            [openssl, "x509", "-inform", "DER", "-noout", "-hash"],
            input=der,
            capture_output=True,
            timeout=OPENSSL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("openssl x509 -hash failed: %s", exc)
        return None
    value = done.stdout.decode("ascii", "replace").strip()
    if done.returncode != 0 or not _HASH_RE.fullmatch(value):
        log.debug("openssl x509 -hash failed: %s", done.stderr.decode("utf-8", "replace").strip())
        return None
    return value


def _pyopenssl_subject_hash(der: bytes) -> str | None:
    try:
        from OpenSSL import crypto  # type: ignore[import-not-found]
    except ImportError:
        return None
    cert = crypto.load_certificate(crypto.FILETYPE_ASN1, der)
    return f"{cert.subject_name_hash() & 0xFFFFFFFF:08x}"


# OpenSSL's X509_NAME_hash: SHA-1 over the canonical encoding of the name, which is the
# DER of each RDN's SET (no outer SEQUENCE) with every string value turned into a
# lower-cased UTF8String whose ASCII whitespace is trimmed and collapsed.

_TAG_SEQUENCE = 0x30
_TAG_SET = 0x31
_TAG_VERSION = 0xA0
_TAG_UTF8 = 0x0C
_STRING_CODECS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "latin-1",  # PrintableString
    0x14: "latin-1",  # T61String, one byte per character as OpenSSL reads it
    0x16: "latin-1",  # IA5String
    0x1A: "latin-1",  # VisibleString
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}
_ASCII_SPACE = " \t\n\v\f\r"
_SPACE_RUN = re.compile(f"[{re.escape(_ASCII_SPACE)}]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def canonical_subject_hash(cert: x509.Certificate) -> str:
    """The subject hash computed in Python, from the subject exactly as encoded."""
    canon = canonical_name(_subject_der(cert.tbs_certificate_bytes))
    return f"{int.from_bytes(hashlib.sha1(canon).digest()[:4], 'little'):08x}"


def canonical_name(name_der: bytes) -> bytes:
    """OpenSSL's canonical encoding of a DER Name."""
    _, start, end = _tlv_at(name_der, 0)
    rdns = []
    for _, rdn_start, rdn_end, _ in _children(name_der, start, end):
        entries = sorted(_canonical_entry(name_der, s, e) for _, s, e, _ in _children(name_der, rdn_start, rdn_end))
        rdns.append(_encode(_TAG_SET, b"".join(entries)))
    return b"".join(rdns)


def _canonical_entry(der: bytes, start: int, end: int) -> bytes:
    (_, _, _, oid), (tag, v_start, v_end, raw) = list(_children(der, start, end))[:2]
    codec = _STRING_CODECS.get(tag)
    if codec is None:
        return _encode(_TAG_SEQUENCE, oid + raw)
    try:
        text = der[v_start:v_end].decode(codec)
    except UnicodeDecodeError:
        raise PkiError("the certificate's subject holds a badly encoded string") from None
    text = _SPACE_RUN.sub(" ", text.strip(_ASCII_SPACE)).translate(_ASCII_LOWER)
    return _encode(_TAG_SEQUENCE, oid + _encode(_TAG_UTF8, text.encode("utf-8")))


def _subject_der(tbs: bytes) -> bytes:
    """The subject Name of a TBSCertificate: after version, serial, algorithm, issuer, validity."""
    _, start, end = _tlv_at(tbs, 0)
    fields = list(_children(tbs, start, end))
    first = 1 if fields[0][0] == _TAG_VERSION else 0
    return fields[first + 4][3]


def _tlv_at(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start, end) of the contents of the DER element at ``pos``."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise PkiError("truncated DER in the certificate")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, bytes]]:
    """(tag, contents start, contents end, whole element) of each element in a range."""
    pos = start
    while pos < end:
        tag, c_start, c_end = _tlv_at(der, pos)
        yield tag, c_start, c_end, der[pos:c_end]
        pos = c_end


def _encode(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content
