"""MAC keys agreed once per pair of certificates, so a call needs no signature per message.

Two public-key operations per message and side were most of what a signed call cost
(docs/benchmarks.md). Between an overlord and a minion that both hold EC keys on the
same curve, each side can compute the same secret from its own private key and the
other's certificate (static-static ECDH), with no handshake. HKDF turns it into one
key per direction, bound to both certificates' fingerprints, and each message then
carries an HMAC-SHA256 tag instead of a signature, over the same bytes a signature
would cover. Only the two certificate holders can compute a tag, so the receiver learns
who sent it as surely as from a signature; unlike a signature, the tag proves nothing to
a third party, which is why job messages and heartbeats, read by others, stay signed.

Scheme ``ecdh-hmac-sha256`` (docs/protocol.md §13)::

    Z        = ECDH(own private key, peer's certificate public key)
    K(A->B)  = HKDF-SHA256(Z, salt = none, info = "func-amqp-mac-v1\\n" || fp(A) || fp(B), 32)
    tag      = HMAC-SHA256(K(sender->recipient), "func-amqp-mac-v1\\n" || signed bytes)

where ``fp`` is the SHA-256 of the certificate's DER as 64 lowercase hex digits.

A certificate takes part when its key is EC P-256 or P-384 and its keyUsage, if it has
one, allows keyAgreement. The CA's own certificate takes part regardless, as it signs
messages regardless of its key usage: its key is the administrator's (func's
certmaster key).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAC_SCHEME = "ecdh-hmac-sha256"
"""What a sender that verifies MAC'd replies puts in ``x-func-amqp-accepts-mac``."""

MAC_MAGIC = b"func-amqp-mac-v1\n"
"""Opens both the key derivation's info and every tagged byte string."""

MAC_BYTES = 32
PAIR_CACHE_SIZE = 4096
"""Peers whose keys are remembered (per own key); the cache starts over when full."""

_CURVES = frozenset({"secp256r1", "secp384r1"})


@dataclass(frozen=True)
class PairKey:
    """The two keys shared with one peer certificate: one per direction."""

    peer_fingerprint: str
    send: bytes
    receive: bytes


def tag(key: bytes, data: bytes) -> bytes:
    """The HMAC-SHA256 tag of ``data`` under ``key``."""
    return hmac.digest(key, MAC_MAGIC + data, hashlib.sha256)


def tag_matches(key: bytes, data: bytes, received: bytes) -> bool:
    """Whether ``received`` is the tag of ``data`` (compared in constant time)."""
    return hmac.compare_digest(tag(key, data), received)


def takes_part(certificate: x509.Certificate) -> bool:
    """Whether ``certificate``'s key may agree MAC keys (see the module docstring)."""
    try:
        key = certificate.public_key()
    except ValueError:
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        return False
    extensions = certificate.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        return bool(extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement)
    except x509.ExtensionNotFound:
        return True


def _derive(secret: bytes, sender: str, recipient: str) -> bytes:
    info = MAC_MAGIC + sender.encode("ascii") + recipient.encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=MAC_BYTES, salt=None, info=info).derive(secret)


class PairKeys:
    """This party's side of every pair: derives each peer's keys once and keeps them."""

    def __init__(self, private_key: object, certificate: x509.Certificate, fingerprint: str) -> None:
        self._key = private_key if isinstance(private_key, ec.EllipticCurvePrivateKey) else None
        self._fingerprint = fingerprint
        self.usable = self._key is not None and takes_part(certificate)
        """False: this party's key cannot agree keys, so it always signs."""
        self._pairs: dict[str, PairKey | None] = {}

    def for_peer(self, certificate: x509.Certificate, fingerprint: str) -> PairKey | None:
        """The keys shared with ``certificate`` (already checked against the CA), or
        None when the two keys cannot agree one."""
        try:  # one lookup: another thread may clear the cache between two
            return self._pairs[fingerprint]
        except KeyError:
            pass
        pair = self._agree(certificate, fingerprint)
        if len(self._pairs) >= PAIR_CACHE_SIZE:
            self._pairs.clear()
        self._pairs[fingerprint] = pair
        return pair

    def _agree(self, certificate: x509.Certificate, fingerprint: str) -> PairKey | None:
        if self._key is None or not self.usable or fingerprint == self._fingerprint or not takes_part(certificate):
            return None  # with itself a party signs: one key both ways could be reflected
        peer = certificate.public_key()
        if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != self._key.curve.name:
            return None
        secret = self._key.exchange(ec.ECDH(), peer)
        return PairKey(
            peer_fingerprint=fingerprint,
            send=_derive(secret, self._fingerprint, fingerprint),
            receive=_derive(secret, fingerprint, self._fingerprint),
        )
