"""Message signatures: who sent an envelope, and that nobody changed what matters in it.

A broker lets anyone holding broker credentials publish to a minion's queue, so the
caller's identity travels inside every message: the sender signs a canonical byte
string (:func:`signed_bytes`) with its private key and attaches its certificate; the
receiver checks the certificate against the CA (issuer, CA signature, validity, leaf
profile, revocation) and the signature against the message. A :class:`ReplayGuard`
then refuses a signed request seen before. Pure functions of their inputs: no AMQP and
no disk access here.

Headers added by :class:`Signer` (strings)::

    x-func-amqp-nonce                128 random bits, 32 lowercase hex digits
    x-func-amqp-signature            the signature, standard base64
    x-func-amqp-certificate          the signer's certificate, standard base64 of DER
    x-func-amqp-certificate-sha256   SHA-256 of that DER, 64 lowercase hex digits

A message for a recipient whose certificate this signer's key can agree a key with
(security/pair_keys.py) may carry, instead of the signature, a MAC only that recipient
can check::

    x-func-amqp-mac                    HMAC-SHA256 tag, standard base64
    x-func-amqp-mac-recipient-sha256   the recipient certificate's SHA-256, 64 hex digits

The signature algorithm follows the certificate's key, so no header names it (nothing
for an attacker to downgrade): ECDSA P-256 with SHA-256, ECDSA P-384 with SHA-384
(DER-encoded ``Ecdsa-Sig-Value``), RSA (at least 2048 bits) with PSS, MGF1-SHA-256 and a
32-byte salt, or Ed25519.

Failures are :class:`~func_amqp.errors.SecurityError` with these codes:

- ``UNSIGNED``: a signature (or MAC), certificate or nonce header is absent (or empty).
- ``BAD_SIGNATURE``: a security header is present but malformed (wrong type, bad
  base64, undecodable DER, oversized, nonce not 32 hex digits, fingerprint header not
  matching the certificate), a signed header has the wrong type, the signature does not
  verify (forged, or any signed field or the body changed), or the signer / target is
  not the one expected. The same for a MAC that does not match, that the receiver
  cannot check (its key or the sender's cannot agree one), or that comes with a
  signature too.
- ``KEY_CHANGED``: a MAC made for a certificate other than the receiver's current one
  (it was issued again since the sender learnt it): the sender sends it signed instead.
- ``UNTRUSTED_CERTIFICATE``: not issued by this CA, outside its validity period, a CA
  certificate, no clientAuth extended key usage, keyUsage without digitalSignature, no
  single common name, or a key type this protocol does not sign with.
- ``REVOKED_CERTIFICATE``: the serial number is on the CRL.

An expired CRL (past its nextUpdate) is still used: what it lists stays revoked, and
refusing every message until someone refreshes it would turn a missed cron job into an
outage. :meth:`TrustStore.crl_is_stale` lets the caller warn about it, and
``strict_crl=True`` makes a stale CRL refuse every certificate instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from func_amqp.errors import Code, SecurityError
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.names import (
    H_CERTIFICATE,
    H_FINGERPRINT,
    H_MAC,
    H_MAC_RECIPIENT,
    H_NONCE,
    H_SIGNATURE,
)
from func_amqp.security.pair_keys import MAC_BYTES, PairKey, PairKeys, tag, tag_matches

# --- limits ------------------------------------------------------------------------------

SIGNED_BYTES_MAGIC = b"func-amqp-signed-v1\n"
"""Version tag opening every signed byte string; a new format gets a new tag."""

VERIFIED_CACHE_SIZE = 4096
"""Certificates remembered as checked against the CA (per trust store)."""

MAX_CERTIFICATE_HEADER = 16_384
"""Characters of base64 accepted in the certificate header (about 12 KiB of DER)."""

MAX_SIGNATURE_HEADER = 2_048
"""Characters of base64 accepted in the signature header (RSA-8192 needs 1,368)."""

MAX_MAC_HEADER = 64
"""Characters of base64 accepted in the MAC header (a tag needs 44)."""

NONCE_BYTES = 16
NONCE_RE = re.compile(r"[0-9a-f]{32}")
FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
MIN_RSA_BITS = 2048
RSA_SALT_LENGTH = 32
_EC_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
}

Clock = Callable[[], float]
SubjectHash = Callable[[x509.Certificate], str]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


# --- what is signed ------------------------------------------------------------------


def _text_header(env: Envelope, name: str) -> str:
    """A signed string header; absent and empty are the same (codec treats them so)."""
    value = env.headers.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"the {name} header must be a string")
    return value


def _int_header(env: Envelope, name: str) -> str:
    """A signed integer header as decimal ASCII, or empty when absent."""
    value = env.headers.get(name)
    if value is None:
        return ""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"the {name} header must be an integer")
    return str(value)


def signed_bytes(env: Envelope, nonce: str, fingerprint: str) -> bytes:
    """The exact bytes a signature covers; raises ValueError for mistyped headers.

    Format (version 1)::

        "func-amqp-signed-v1\\n"
        F(opcode) F(type) F(protocol) F(target) F(agent) F(deadline)
        F(nonce) F(message_id) F(correlation_id) F(reply_to)
        F(certificate_sha256) F(body_sha256)

    where ``F(s)`` is the length of ``UTF-8(s)`` as a 4-byte unsigned big-endian integer
    followed by ``UTF-8(s)``, and the fields are, in that order:

    - opcode: the ``qmf.opcode`` header; type: the message's AMQP ``type`` property
      (the decoder reads the header, falling back to the property, so both are signed);
    - protocol: the ``x-func-amqp-protocol`` header, decimal;
    - target: the ``x-func-amqp-target`` header (the minion a request is for);
    - agent: the ``qmf.agent`` header (the minion a reply or indication is from);
    - deadline: the ``x-func-amqp-deadline`` header, integer milliseconds, decimal;
    - nonce: the ``x-func-amqp-nonce`` header, 32 lowercase hex digits;
    - message_id, correlation_id, reply_to: the AMQP properties;
    - certificate_sha256: SHA-256 of the signer certificate's DER, lowercase hex (binds
      the signature to that certificate, so a second certificate for the same key,
      naming someone else, cannot be swapped in);
    - body_sha256: SHA-256 of the body bytes, lowercase hex.

    An absent header or property is the empty string. Decimal numbers are ASCII digits
    with a leading ``-`` when negative and no leading zeros.
    """
    fields = (
        _text_header(env, names.H_OPCODE),
        env.type or "",
        _int_header(env, names.H_PROTOCOL),
        _text_header(env, names.H_TARGET),
        _text_header(env, names.H_AGENT),
        _int_header(env, names.H_DEADLINE),
        nonce,
        env.message_id or "",
        env.correlation_id or "",
        env.reply_to or "",
        fingerprint,
        hashlib.sha256(env.body).hexdigest(),
    )
    parts = [SIGNED_BYTES_MAGIC]  # every message's signature covers this: kept lean
    for value in fields:
        data = value.encode("utf-8")
        parts += (len(data).to_bytes(4, "big"), data)
    return b"".join(parts)


def signed_deadline(env: Envelope) -> float | None:
    """The deadline the signature covers (seconds), or None; for the replay guard."""
    value = env.headers.get(names.H_DEADLINE)
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 1000
    return None


def fingerprint_of(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex."""
    return certificate.fingerprint(hashes.SHA256()).hex()


# --- algorithms ----------------------------------------------------------------------


def _sign_with(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(_EC_HASHES[key.curve.name]()))
    return key.sign(data, _pss(), hashes.SHA256())


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=RSA_SALT_LENGTH)


def _key_problem(key: PrivateKey | PublicKey) -> str | None:
    """Why this protocol does not sign with ``key``, or None if it does."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return None
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if key.curve.name in _EC_HASHES:
            return None
        return f"elliptic curve {key.curve.name} is not accepted (P-256 or P-384 only)"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size >= MIN_RSA_BITS:
            return None
        return f"an RSA key of {key.key_size} bits is too small (at least {MIN_RSA_BITS})"
    return f"keys of type {type(key).__name__} are not accepted"


def _verify_with(key: PublicKey, signature: bytes, data: bytes) -> None:
    """Raises InvalidSignature unless ``signature`` is ``key``'s over ``data``."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(_EC_HASHES[key.curve.name]()))
    else:
        key.verify(signature, data, _pss(), hashes.SHA256())


def _public_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- signing -------------------------------------------------------------------------


class Signer:
    """Signs outgoing envelopes with one key and attaches its certificate; or, for a
    recipient it shares a pair key with, tags them with a MAC instead."""

    def __init__(self, private_key: PrivateKey, certificate: x509.Certificate) -> None:
        problem = _key_problem(private_key)
        if problem:
            raise ValueError(problem)
        if _public_der(private_key.public_key()) != _public_der(certificate.public_key()):  # type: ignore[arg-type]
            raise ValueError("the private key does not belong to the certificate")
        self._key = private_key
        self.certificate = certificate
        self._certificate_b64 = base64.b64encode(
            certificate.public_bytes(serialization.Encoding.DER)
        ).decode("ascii")
        self.fingerprint = fingerprint_of(certificate)
        self.pairs = PairKeys(private_key, certificate, self.fingerprint)

    def sign(self, env: Envelope, mac_for: PairKey | None = None) -> None:
        """Add nonce, signature and certificate headers; call after all else is set.

        With ``mac_for``, a MAC for that peer replaces the signature. An envelope with
        ``deadline`` but no deadline header gets one (integer ms) so the deadline the
        receiver enforces is the signed one.
        """
        if env.deadline is not None and names.H_DEADLINE not in env.headers:
            env.headers[names.H_DEADLINE] = int(env.deadline * 1000)
        nonce = secrets.token_hex(NONCE_BYTES)
        data = signed_bytes(env, nonce, self.fingerprint)
        headers = env.headers
        headers[H_NONCE] = nonce
        headers[H_CERTIFICATE] = self._certificate_b64
        headers[H_FINGERPRINT] = self.fingerprint
        if mac_for is None:
            headers.pop(H_MAC, None)
            headers.pop(H_MAC_RECIPIENT, None)
            headers[H_SIGNATURE] = base64.b64encode(_sign_with(self._key, data)).decode("ascii")
        else:
            headers.pop(H_SIGNATURE, None)
            headers[H_MAC] = base64.b64encode(tag(mac_for.send, data)).decode("ascii")
            headers[H_MAC_RECIPIENT] = mac_for.peer_fingerprint

    def pair_key(self, peer: Identity) -> PairKey | None:
        """The keys this signer shares with ``peer`` (checked against the CA), or None
        when the two cannot agree one."""
        return self.pairs.for_peer(peer.certificate, peer.fingerprint)

    def check_mac(self, env: Envelope, sender: Identity, received: bytes, data: bytes) -> None:
        """Raise SecurityError unless ``received`` is ``sender``'s MAC over ``data``, made for this signer."""
        recipient = env.headers.get(H_MAC_RECIPIENT)
        if not isinstance(recipient, str) or not FINGERPRINT_RE.fullmatch(recipient):
            raise _bad(f"the {H_MAC_RECIPIENT} header must be 64 lowercase hex digits")
        if recipient != self.fingerprint:
            raise SecurityError(
                f"the MAC was made for certificate {recipient[:16]}..., not for this receiver's "
                f"current one ({self.fingerprint[:16]}...); send the message signed",
                Code.KEY_CHANGED,
            )
        pair = self.pair_key(sender)
        if pair is None:
            raise _bad(
                f"a MAC from {sender.cn!r} cannot be checked: the two certificates cannot agree a key "
                "(an EC key on the same curve, with keyAgreement in its key usage, on both sides)"
            )
        if len(received) != MAC_BYTES or not tag_matches(pair.receive, data, received):
            raise _bad(f"the MAC of {sender.cn!r} does not match the message (forged or tampered)")


# --- verifying -----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who signed a message, as the ACLs and the audit log name them."""

    cn: str
    subject_hash: str | None
    fingerprint: str
    certificate: x509.Certificate


_KEY_ERRORS = (ValueError, UnsupportedAlgorithm)
"""What cryptography raises for a certificate's key it cannot use."""


def _untrusted(message: str) -> SecurityError:
    return SecurityError(message, Code.UNTRUSTED_CERTIFICATE)


def _bad(message: str) -> SecurityError:
    return SecurityError(message, Code.BAD_SIGNATURE)


def _security_header(env: Envelope, name: str, limit: int) -> str:
    value = env.headers.get(name)
    if value is None or value == "":
        raise SecurityError(f"the message is not signed: no {name} header", Code.UNSIGNED)
    if not isinstance(value, str):
        raise _bad(f"the {name} header must be a string")
    if len(value) > limit:
        raise _bad(f"the {name} header is longer than {limit} characters")
    return value


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"the {name} header is not valid base64") from None


def _load_certificate(env: Envelope) -> x509.Certificate:
    """The certificate header, parsed completely.

    cryptography parses names and extensions lazily and raises many exception types
    (ValueError, KeyError, InvalidVersion, DuplicateExtension, ...) for hostile DER, so
    every part checked later is read here once, where any failure means a malformed
    header; later reads of the same parts then cannot fail.
    """
    der = _b64(_security_header(env, H_CERTIFICATE, MAX_CERTIFICATE_HEADER), H_CERTIFICATE)
    try:
        cert = x509.load_der_x509_certificate(der)
        _ = (cert.issuer.rfc4514_string(), cert.subject.rfc4514_string(), list(cert.extensions))
        _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
    except Exception:  # hostile DER: any failure is a malformed header (see above)
        raise _bad(f"the {H_CERTIFICATE} header is not a well-formed DER certificate") from None
    return cert


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise _untrusted(f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise _untrusted(f"{what} expired on {cert.not_valid_after_utc.isoformat()}")


def _check_leaf_profile(cert: x509.Certificate) -> None:
    """A signer is an end entity allowed client authentication, never a CA."""
    extensions = cert.extensions
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise _untrusted("a CA certificate cannot sign messages")
    try:
        usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise _untrusted("the certificate has no extended key usage (clientAuth required)") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise _untrusted("the certificate is not allowed client authentication (clientAuth)")
    try:
        key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not key_usage.digital_signature:
        raise _untrusted("the certificate's key usage does not allow digital signatures")


def _common_name(cert: x509.Certificate) -> str:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attributes) != 1 or not isinstance(attributes[0].value, str) or not attributes[0].value:
        raise _untrusted("the certificate's subject must have exactly one common name")
    return attributes[0].value


def _check_crl(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> None:
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise ValueError("the CRL is not issued by the CA")


class TrustStore:
    """Decides whether a signed envelope comes from a certificate this CA vouches for."""

    def __init__(
        self,
        ca_certificate: x509.Certificate,
        crl: x509.CertificateRevocationList | None = None,
        clock: Clock = time.time,
        *,
        subject_hash: SubjectHash | None = None,
        strict_crl: bool = False,
    ) -> None:
        """Raises ValueError if ``crl`` is not signed by ``ca_certificate``."""
        if crl is not None:
            _check_crl(crl, ca_certificate)
        self._ca = ca_certificate
        self._crl = crl
        # a set, read once: the CRL's own lookup scans every entry, on every message
        self._revoked = frozenset(entry.serial_number for entry in crl) if crl is not None else frozenset()
        self._verified: dict[str, tuple[Identity, PublicKey]] = {}
        self._clock = clock
        self._subject_hash = subject_hash
        self._strict_crl = strict_crl

    def crl_is_stale(self) -> bool:
        """True when the CRL is past its nextUpdate: revocations newer than it are unknown."""
        if self._crl is None or self._crl.next_update_utc is None:
            return False
        return _utc(self._clock()) > self._crl.next_update_utc

    def verify(
        self,
        env: Envelope,
        *,
        expected_signer: str | None = None,
        expected_target: str | None = None,
        receiver: Signer | None = None,
    ) -> Identity:
        """The signer of ``env``; raises SecurityError unless every check passes.

        ``expected_signer`` is the minion an overlord asked (for replies);
        ``expected_target`` is the receiving minion's own name (for requests), so a
        request signed for one minion is not accepted by another. A MAC'd message
        needs ``receiver``, the signer whose certificate it was made for. The deadline
        and replays are not checked here: pass the accepted envelope to a ReplayGuard.
        """
        mac_b64 = None
        if env.headers.get(H_MAC) in (None, ""):
            signature_b64 = _security_header(env, H_SIGNATURE, MAX_SIGNATURE_HEADER)
        else:
            mac_b64 = _security_header(env, H_MAC, MAX_MAC_HEADER)
            if env.headers.get(H_SIGNATURE) is not None:
                raise _bad(f"a message carries either {H_SIGNATURE} or {H_MAC}, not both")
        nonce = _security_header(env, H_NONCE, 2 * NONCE_BYTES)
        if not NONCE_RE.fullmatch(nonce):
            raise _bad(f"the {H_NONCE} header must be {2 * NONCE_BYTES} lowercase hex digits")
        identity, key = self._certificate(env)
        cn, fingerprint = identity.cn, identity.fingerprint
        claimed = env.headers.get(H_FINGERPRINT)
        if claimed is not None and claimed != fingerprint:
            raise _bad(f"the {H_FINGERPRINT} header does not match the certificate")
        try:
            data = signed_bytes(env, nonce, fingerprint)
        except ValueError as exc:
            raise _bad(f"a signed header is malformed: {exc}") from None
        if mac_b64 is not None:
            if receiver is None:
                raise _bad("the message carries a MAC, which only its recipient can check, not a signature")
            receiver.check_mac(env, identity, _b64(mac_b64, H_MAC), data)
        else:
            try:
                _verify_with(key, _b64(signature_b64, H_SIGNATURE), data)
            except InvalidSignature:
                raise _bad(f"the signature of {cn!r} does not match the message (forged or tampered)") from None
        self._check_expected(env, cn, expected_signer, expected_target)
        return identity

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        return self._crl

    def _certificate(self, env: Envelope) -> tuple[Identity, PublicKey]:
        """Who the signer's certificate names, and its key, checked against this CA.

        Parsing, the CA's signature on the certificate and the names derived from it
        cost most of a verification and do not change, so they are done once per
        certificate (the cache lives as long as this store, which is rebuilt when the CA
        or CRL file changes); validity and revocation are checked on every message.
        """
        header = env.headers.get(H_CERTIFICATE)
        hit = self._verified.get(header) if isinstance(header, str) else None
        if hit is None:
            cert = _load_certificate(env)
            cn, key = self._check_certificate(cert)
            identity = Identity(
                cn=cn,
                subject_hash=self._subject_hash(cert) if self._subject_hash else None,
                fingerprint=fingerprint_of(cert),
                certificate=cert,
            )
            hit = (identity, key)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[str(header)] = hit
        else:
            self._check_current(hit[0].certificate)
        return hit

    def _check_current(self, cert: x509.Certificate) -> None:
        """What can change for an already checked certificate: time and revocation."""
        now = _utc(self._clock())
        _check_validity(self._ca, now, "the CA certificate")
        if cert != self._ca:
            _check_validity(cert, now, "the certificate")
            self._check_revocation(cert)

    def _check_certificate(self, cert: x509.Certificate) -> tuple[str, PublicKey]:
        """Chain, validity, profile, revocation; the common name and the public key.

        The CA's own certificate is accepted too: as in func, whoever holds the
        certmaster key is the administrator (``certmaster_overrides_acls``).
        """
        if cert == self._ca:
            _check_validity(self._ca, _utc(self._clock()), "the CA certificate")
            return _common_name(cert), cert.public_key()  # type: ignore[return-value]
        self._check_issued_by_ca(cert)
        now = _utc(self._clock())
        _check_validity(self._ca, now, "the CA certificate")
        _check_validity(cert, now, "the certificate")
        _check_leaf_profile(cert)
        self._check_revocation(cert)
        cn = _common_name(cert)
        try:
            key = cert.public_key()
        except _KEY_ERRORS:
            raise _untrusted("the certificate's public key cannot be read") from None
        problem = _key_problem(key)  # type: ignore[arg-type]
        if problem:
            raise _untrusted(problem)
        return cn, key  # type: ignore[return-value]

    def _check_issued_by_ca(self, cert: x509.Certificate) -> None:
        if cert.issuer != self._ca.subject:
            raise _untrusted(f"the certificate is issued by {cert.issuer.rfc4514_string()!r}, not this CA")
        try:
            cert.verify_directly_issued_by(self._ca)
        except (InvalidSignature, TypeError, ValueError, UnsupportedAlgorithm):
            raise _untrusted("the certificate is not signed by this CA") from None

    def _check_revocation(self, cert: x509.Certificate) -> None:
        if self._crl is None:
            return
        if self._strict_crl and self.crl_is_stale():
            raise _untrusted("the certificate revocation list is out of date")
        if cert.serial_number in self._revoked:
            raise SecurityError(
                f"the certificate with serial {cert.serial_number:x} has been revoked",
                Code.REVOKED_CERTIFICATE,
            )

    @staticmethod
    def _check_expected(
        env: Envelope, cn: str, expected_signer: str | None, expected_target: str | None
    ) -> None:
        if expected_signer is not None and cn != expected_signer:
            raise _bad(f"the reply is signed by {cn!r}, not by {expected_signer!r}, the minion asked")
        if expected_target is not None:
            target = _text_header(env, names.H_TARGET)
            if target != expected_target:
                raise _bad(f"the request is addressed to {target!r}, not to {expected_target!r}")


# --- replays -------------------------------------------------------------------------

MAX_NONCE_LENGTH = 128
MAX_SCOPE_LENGTH = 128
DEFAULT_SKEW = 60.0
DEFAULT_MAX_LIFETIME = 86_400.0


class ReplayGuard:
    """Refuses a signed request seen before, remembering nonces until their deadline.

    Rules, in order: a request without a deadline cannot be protected, so it is refused
    (``BAD_REQUEST``), as is a deadline further ahead than ``max_lifetime``; a request
    past ``deadline + skew`` is refused as ``EXPIRED`` (the nonce may be forgotten by
    then, and the deadline is signed so a replay cannot extend it); a nonce remembered
    is refused as ``REPLAYED``. Nonces are remembered until ``deadline + skew``. Memory
    is bounded by ``max_entries``: expired nonces are dropped first, and when every slot
    holds an unexpired nonce, new requests are refused (``INTERNAL_ERROR``, try again
    later) rather than forgetting a nonce that could then be replayed. Thread-safe.
    """

    def __init__(
        self,
        clock: Clock = time.time,
        max_entries: int = 100_000,
        *,
        skew: float = DEFAULT_SKEW,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max_entries = max_entries
        self._skew = skew
        self._max_lifetime = max_lifetime
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}
        self._expiries: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        """How many nonces are remembered now (expired ones are dropped first)."""
        now = self._clock()
        with self._lock:
            self._forget_expired(now)
            return len(self._seen)

    def check(self, nonce: str, deadline: float | None, *, scope: str = "") -> None:
        """Record ``nonce``; raises SecurityError if it must not be accepted.

        ``scope`` (e.g. the signer's certificate fingerprint) keeps one signer from
        spending another's nonce first.
        """
        key = self._key(nonce, scope)
        now = self._clock()
        expiry = self._expiry(deadline, now)
        with self._lock:
            self._forget_expired(now)
            if key in self._seen:
                raise SecurityError("the request was seen before (replayed nonce)", Code.REPLAYED)
            if len(self._seen) >= self._max_entries:
                raise SecurityError(
                    f"the replay cache holds {self._max_entries} unexpired nonces; "
                    "try again when some expire",
                    Code.INTERNAL_ERROR,
                )
            self._seen[key] = expiry
            heapq.heappush(self._expiries, (expiry, key))

    def check_envelope(self, env: Envelope, identity: Identity) -> None:
        """:meth:`check` for an envelope :meth:`TrustStore.verify` accepted."""
        nonce = env.headers.get(H_NONCE)
        if not isinstance(nonce, str):
            raise SecurityError(f"the message has no {H_NONCE} header", Code.UNSIGNED)
        self.check(nonce, signed_deadline(env), scope=identity.fingerprint)

    @staticmethod
    def _key(nonce: str, scope: str) -> tuple[str, str]:
        if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE_LENGTH:
            raise SecurityError(
                f"a nonce must be a string of 1 to {MAX_NONCE_LENGTH} characters", Code.BAD_REQUEST
            )
        if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH:
            raise SecurityError(f"a scope must be at most {MAX_SCOPE_LENGTH} characters", Code.BAD_REQUEST)
        return scope, nonce

    def _expiry(self, deadline: float | None, now: float) -> float:
        """When the nonce may be forgotten; refuses deadlines that cannot be guarded."""
        if deadline is None:
            raise SecurityError(
                "a signed request without a deadline cannot be protected against replay",
                Code.BAD_REQUEST,
            )
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
            raise SecurityError("the deadline must be a finite number", Code.BAD_REQUEST)
        if now > deadline + self._skew:
            raise SecurityError("the request's deadline has passed", Code.EXPIRED)
        if deadline - now > self._max_lifetime:
            raise SecurityError(
                f"the deadline is more than {self._max_lifetime:.0f} seconds ahead", Code.BAD_REQUEST
            )
        return deadline + self._skew

    def _forget_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            expiry, key = heapq.heappop(self._expiries)
            if self._seen.get(key) == expiry:
                del self._seen[key]
