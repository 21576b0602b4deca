"""Keys and files of the public-key infrastructure, and a host's own identity.

The host side is certmaster's ``create_minion_keys``: in the PKI directory a host keeps
``<name>.pem`` (its private key, mode 0600), ``<name>.csr`` (its certificate request),
``<name>.cert`` (its certificate) and ``ca.cert`` (the CA's certificate). The helpers
here (key generation and strength, atomic writes, private directories) are shared with
the certificate authority in :mod:`func_amqp.security.ca`, so both sides apply the same
rules.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from func_amqp.errors import FuncAmqpError
from func_amqp.protocol.names import valid_minion_name

log = logging.getLogger(__name__)

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]

ORGANIZATION = "func-amqp"
"""The O= of every subject this PKI issues or requests."""

KEY_TYPE_EC = "ec"
KEY_TYPE_RSA = "rsa"
KEY_TYPE_ED25519 = "ed25519"
KEY_TYPES = (KEY_TYPE_EC, KEY_TYPE_RSA, KEY_TYPE_ED25519)
DEFAULT_KEY_TYPE = KEY_TYPE_EC

RSA_KEY_SIZE = 3072
"""Size of the RSA keys generated, and the smallest accepted."""
RSA_PUBLIC_EXPONENT = 65537
ALLOWED_CURVES = ("secp256r1", "secp384r1")
EC_CURVE = ec.SECP256R1

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
PRIVATE_DIR_MODE = 0o700
_GROUP_OTHER = 0o077

KEY_SUFFIX = ".pem"
CSR_SUFFIX = ".csr"
CERT_SUFFIX = ".cert"
CA_CERT_FILE = "ca.cert"
TEMP_PREFIX = ".tmp-"
"""Temporary files start with this, so listings by suffix never see them."""

MAX_CN_LENGTH = 64
"""X.509's upper bound for a common name, which host names become."""

CA_COMMAND = "func-amqp ca"


def clean_command(name: str) -> str:
    """The command an administrator runs to forget a host's request and certificate."""
    return f"'{CA_COMMAND} --clean {name}'"


def clean_advice(name: str) -> str:
    """certmaster's hint when a certificate and a key do not belong together."""
    return f"run {clean_command(name)} on the certmaster first?"


class PkiError(FuncAmqpError, ValueError):
    """A key, request or certificate cannot be used; the message says what to do."""


class CertificateMismatch(PkiError):
    """A certificate does not belong to the key it is stored or requested with."""


# --- names ----------------------------------------------------------------------------


def host_name(name: str) -> str:
    """``name`` lower-cased, or :class:`PkiError`: it becomes a file name and a CN."""
    low = name.lower()
    if not valid_minion_name(low) or ".." in low:
        raise PkiError(f"not a valid host name: {name!r}")
    if len(low) > MAX_CN_LENGTH:
        raise PkiError(f"host name longer than {MAX_CN_LENGTH} characters, too long for a certificate: {name!r}")
    return low


# --- keys -----------------------------------------------------------------------------


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """A new private key of an accepted type and strength."""
    if key_type == KEY_TYPE_EC:
        return ec.generate_private_key(EC_CURVE())
    if key_type == KEY_TYPE_RSA:
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_SIZE)
    if key_type == KEY_TYPE_ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    raise PkiError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")


def check_key_strength(key: object) -> None:
    """Raise :class:`PkiError` unless ``key`` (public) is RSA >= 3072, P-256/P-384 or Ed25519."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_KEY_SIZE:
            raise PkiError(f"RSA key of {key.key_size} bits is too weak; at least {RSA_KEY_SIZE} required")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise PkiError(f"elliptic curve {key.curve.name} not accepted; use P-256 or P-384")
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    raise PkiError(f"key type {type(key).__name__} not accepted; use EC P-256/P-384, Ed25519 or RSA >= {RSA_KEY_SIZE}")


def signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """SHA-256, except Ed25519 which hashes internally (cryptography wants None)."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def public_key_der(key: object) -> bytes:
    """The SubjectPublicKeyInfo DER of a public key, or of a private key's public half."""
    public = key.public_key() if hasattr(key, "private_bytes") else key  # type: ignore[attr-defined]
    return public.public_bytes(  # type: ignore[no-any-return, attr-defined, union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(a: object, b: object) -> bool:
    return public_key_der(a) == public_key_der(b)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(path: Path) -> PrivateKey:
    """Read a PEM key, tightening its mode to 0600 (with a warning) if others may read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _GROUP_OTHER:
        log.warning("%s had mode %04o; changed to %04o", path, mode, KEY_MODE)
        path.chmod(KEY_MODE)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the private key {path}: {exc}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise PkiError(f"{path} holds a {type(key).__name__}, which is not accepted")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM certificate: {exc}") from None


def parse_certificate(pem: bytes, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"the {what} is not a PEM certificate: {exc}") from None


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def common_name(name: x509.Name) -> str:
    """The single CN of a subject; :class:`PkiError` if there is none or several."""
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        raise PkiError(f"the subject must have exactly one CN, it has {len(values)}")
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise :class:`PkiError` unless ``ca_cert`` is a CA and signed ``cert``."""
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PkiError("the CA certificate is not a certificate authority (no basicConstraints CA:TRUE)")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(
            f"the certificate for {cert.subject.rfc4514_string()} was not issued by "
            f"{ca_cert.subject.rfc4514_string()}"
        ) from None


# --- files ----------------------------------------------------------------------------


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700); tighten it if group or others may enter."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _GROUP_OTHER:
        path.chmod(PRIVATE_DIR_MODE)


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC_MODE, *, exclusive: bool = False) -> bool:
    """Write ``data`` so readers see the old file or the new one, never a part.

    The temporary file has ``mode`` before it holds any data. With ``exclusive`` an
    existing file is kept and False returned, so two writers agree on one key.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


# --- this host's identity -------------------------------------------------------------


class HostIdentity:
    """This host's key, request and certificate: certmaster's ``create_minion_keys``."""

    def __init__(self, pki_dir: Path, name: str) -> None:
        self.pki_dir = Path(pki_dir)
        self.name = host_name(name)

    @property
    def key_path(self) -> Path:
        return self.pki_dir / f"{self.name}{KEY_SUFFIX}"

    @property
    def csr_path(self) -> Path:
        return self.pki_dir / f"{self.name}{CSR_SUFFIX}"

    @property
    def cert_path(self) -> Path:
        return self.pki_dir / f"{self.name}{CERT_SUFFIX}"

    @property
    def ca_path(self) -> Path:
        return self.pki_dir / CA_CERT_FILE

    def ensure_key(self, key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
        """The host's key, created on first use; a weak key left from before is refused."""
        if not self.key_path.exists():
            ensure_private_dir(self.pki_dir)
            key = generate_key(key_type)
            if write_atomic(self.key_path, key_pem(key), KEY_MODE, exclusive=True):
                log.info("created the %s key %s", key_type, self.key_path)
                return key
        key = load_private_key(self.key_path)
        try:
            check_key_strength(key.public_key())
        except PkiError as exc:
            raise PkiError(f"{self.key_path}: {exc}; remove it (and {self.cert_path.name}) to make a new one") from None
        return key

    def csr_pem(self, key_type: str = DEFAULT_KEY_TYPE) -> bytes:
        """The certificate request for the key, kept in ``<name>.csr`` while it fits."""
        key = self.ensure_key(key_type)
        existing = self._stored_csr(key)
        if existing is not None:
            return existing
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, self.name),
            ]
        )
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, signing_hash(key))
        pem = csr.public_bytes(serialization.Encoding.PEM)
        write_atomic(self.csr_path, pem, PUBLIC_MODE)
        return pem

    def _stored_csr(self, key: PrivateKey) -> bytes | None:
        """The stored request if it is for this name and key; else None (make a new one)."""
        try:
            pem = self.csr_path.read_bytes()
            csr = x509.load_pem_x509_csr(pem)
            fits = same_public_key(csr.public_key(), key) and common_name(csr.subject) == self.name
        except (OSError, ValueError):
            return None
        return pem if fits else None

    def store(self, cert_pem_bytes: bytes, ca_pem: bytes) -> None:
        """Keep the signed certificate and the CA's, after checking both fit this host."""
        cert = parse_certificate(cert_pem_bytes)
        ca_cert = parse_certificate(ca_pem, "CA certificate")
        key = load_private_key(self.key_path)
        if not same_public_key(cert.public_key(), key):
            raise CertificateMismatch(
                f"the certificate for {self.name} does not match the key {self.key_path}; "
                + clean_advice(self.name)
            )
        if common_name(cert.subject) != self.name:
            raise CertificateMismatch(f"the certificate is for {common_name(cert.subject)!r}, not {self.name!r}")
        check_issued_by(cert, ca_cert)
        write_atomic(self.ca_path, cert_pem(ca_cert), PUBLIC_MODE)
        write_atomic(self.cert_path, cert_pem(cert), PUBLIC_MODE)

    def is_complete(self) -> bool:
        """Key, certificate and CA certificate are all present (certmaster's test)."""
        return all(p.exists() for p in (self.key_path, self.cert_path, self.ca_path))

    def load(self) -> tuple[PrivateKey, x509.Certificate, x509.Certificate]:
        """The key, certificate and CA certificate, checked to belong together."""
        if not self.is_complete():
            raise PkiError(
                f"{self.name} has no complete identity in {self.pki_dir} "
                f"(needs {self.key_path.name}, {self.cert_path.name} and {CA_CERT_FILE}); "
                "it is created when the minion's request is signed"
            )
        key = load_private_key(self.key_path)
        cert = load_certificate(self.cert_path)
        ca_cert = load_certificate(self.ca_path)
        if not same_public_key(cert.public_key(), key):
            raise CertificateMismatch(
                f"{self.cert_path} does not match the key {self.key_path}; " + clean_advice(self.name)
            )
        check_issued_by(cert, ca_cert)
        return key, cert, ca_cert
