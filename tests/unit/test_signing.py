"""Message signatures: every forged, tampered, untrusted or replayed message is refused."""

from __future__ import annotations

import base64
import copy
import hashlib
import random
import struct
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from func_amqp.errors import Code, SecurityError
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import MethodRequest, MethodResponse
from func_amqp.security import signing
from func_amqp.security.signing import (
    H_CERTIFICATE,
    H_FINGERPRINT,
    H_NONCE,
    H_SIGNATURE,
    Identity,
    ReplayGuard,
    Signer,
    TrustStore,
)

NOW = 1_900_000_000.0
DAY = 86_400.0
DEADLINE = NOW + 60


def clock() -> float:
    return NOW


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


# --- a throwaway CA --------------------------------------------------------------------


@dataclass
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def issue(
        self,
        cn: str,
        key: Any = None,
        *,
        not_before: float = NOW - DAY,
        not_after: float = NOW + 365 * DAY,
        ca: bool = False,
        usages: list[x509.ObjectIdentifier] | None = None,
        serial: int | None = None,
        digital_signature: bool = True,
        key_agreement: bool = False,
    ) -> tuple[Any, x509.Certificate]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(_when(not_before))
            .not_valid_after(_when(not_after))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=digital_signature,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=key_agreement,
                    key_cert_sign=ca,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if usages is None:
            usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def crl(self, *serials: int, next_update: float = NOW + DAY) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(_when(NOW - DAY))
            .next_update(_when(next_update))
        )
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_when(NOW - 10)).build()
            )
        return builder.sign(self.key, hashes.SHA256())


def make_authority(name: str = "func-amqp test CA") -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_when(NOW - 10 * DAY))
        .not_valid_after(_when(NOW + 3650 * DAY))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


@pytest.fixture(scope="module")
def ca() -> Authority:
    return make_authority()


@pytest.fixture(scope="module")
def overlord(ca: Authority) -> Signer:
    return Signer(*ca.issue("overlord.example.org"))


@pytest.fixture(scope="module")
def store(ca: Authority) -> TrustStore:
    return TrustStore(ca.cert, None, clock)


def request(target: str = "web01") -> Envelope:
    env = codec.encode(
        MethodRequest("command", "run", ["ls -l /"], DEADLINE, target=target),
        reply_to="func.reply.abc",
        correlation_id="c0ffee",
    )
    return env


def signed(signer: Signer, env: Envelope | None = None) -> Envelope:
    env = env or request()
    signer.sign(env)
    return env


def refused(store: TrustStore, env: Envelope, code: Code, **kwargs: Any) -> SecurityError:
    with pytest.raises(SecurityError) as info:
        store.verify(env, **kwargs)
    assert info.value.code == code, str(info.value)
    return info.value


# --- round trips -----------------------------------------------------------------------


def test_round_trip_returns_the_identity(ca: Authority, overlord: Signer, store: TrustStore) -> None:
    env = signed(overlord)
    identity = store.verify(env)
    assert identity.cn == "overlord.example.org"
    assert identity.subject_hash is None
    assert identity.fingerprint == overlord.fingerprint == env.headers[H_FINGERPRINT]
    assert isinstance(identity.certificate, x509.Certificate)
    assert set(env.headers) >= {H_NONCE, H_SIGNATURE, H_CERTIFICATE, H_FINGERPRINT}
    assert all(isinstance(env.headers[h], str) for h in (H_NONCE, H_SIGNATURE, H_CERTIFICATE))


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
        ed25519.Ed25519PrivateKey.generate,
    ],
    ids=["p256", "p384", "rsa3072", "ed25519"],
)
def test_every_key_type_round_trips_and_detects_tampering(
    ca: Authority, store: TrustStore, make_key: Callable[[], Any]
) -> None:
    signer = Signer(*ca.issue("web01", make_key()))
    env = signed(signer)
    assert store.verify(env).cn == "web01"
    env.body += b" "
    refused(store, env, Code.BAD_SIGNATURE)


def test_subject_hash_function_is_used(ca: Authority, overlord: Signer) -> None:
    seen: list[x509.Certificate] = []

    def subject_hash(cert: x509.Certificate) -> str:
        seen.append(cert)
        return "deadbeef"

    store = TrustStore(ca.cert, None, clock, subject_hash=subject_hash)
    assert store.verify(signed(overlord)).subject_hash == "deadbeef"
    assert len(seen) == 1


def test_signed_envelope_survives_the_codec(overlord: Signer, store: TrustStore) -> None:
    env = copy.deepcopy(signed(overlord))
    env.deadline = None  # a receiver learns the deadline from the header
    codec.check_envelope(env, 1024 * 1024)
    assert env.deadline == DEADLINE
    store.verify(env, expected_target="web01")


def test_signer_adds_a_missing_deadline_header(overlord: Signer, store: TrustStore) -> None:
    env = Envelope(body=b"{}", type="_query_request", message_id="m1", deadline=DEADLINE + 0.25)
    overlord.sign(env)
    assert env.headers[names.H_DEADLINE] == int((DEADLINE + 0.25) * 1000)
    assert signing.signed_deadline(env) == DEADLINE + 0.25
    store.verify(env)


def test_reply_from_the_minion_asked(ca: Authority, store: TrustStore) -> None:
    minion = Signer(*ca.issue("web01"))
    reply = codec.encode(MethodResponse(3), correlation_id="c0ffee", agent="web01")
    minion.sign(reply)
    assert store.verify(reply, expected_signer="web01").cn == "web01"


def test_reply_from_another_minion_is_refused(ca: Authority, store: TrustStore) -> None:
    other = Signer(*ca.issue("web02"))
    reply = codec.encode(MethodResponse(3), correlation_id="c0ffee", agent="web01")
    other.sign(reply)
    error = refused(store, reply, Code.BAD_SIGNATURE, expected_signer="web01")
    assert "not by 'web01'" in str(error)


def test_request_for_another_minion_is_refused(overlord: Signer, store: TrustStore) -> None:
    env = signed(overlord, request(target="web02"))
    error = refused(store, env, Code.BAD_SIGNATURE, expected_target="web01")
    assert "addressed to 'web02'" in str(error)


# --- the exact signed bytes ------------------------------------------------------------


def test_signed_bytes_format_is_the_documented_one() -> None:
    env = Envelope(
        body=b"{}",
        type="_method_request",
        message_id="m",
        correlation_id=None,
        reply_to="r",
        headers={
            names.H_OPCODE: "_method_request",
            names.H_PROTOCOL: 1,
            names.H_TARGET: "wéb",
            names.H_DEADLINE: 1_900_000_000_500,
        },
    )
    nonce = "0" * 32
    fingerprint = "f" * 64

    def f(value: str) -> bytes:
        data = value.encode("utf-8")
        return struct.pack(">I", len(data)) + data

    expected = b"func-amqp-signed-v1\n" + b"".join(
        f(v)
        for v in [
            "_method_request",
            "_method_request",
            "1",
            "wéb",
            "",
            "1900000000500",
            nonce,
            "m",
            "",
            "r",
            fingerprint,
            hashlib.sha256(b"{}").hexdigest(),
        ]
    )
    assert signing.signed_bytes(env, nonce, fingerprint) == expected


def test_signed_bytes_refuses_mistyped_headers() -> None:
    env = Envelope(body=b"", headers={names.H_DEADLINE: "1900000000500"})
    with pytest.raises(ValueError):
        signing.signed_bytes(env, "0" * 32, "")
    env = Envelope(body=b"", headers={names.H_TARGET: 7})
    with pytest.raises(ValueError):
        signing.signed_bytes(env, "0" * 32, "")


# --- unsigned, forged, tampered --------------------------------------------------------


def test_unsigned_message_is_refused(store: TrustStore) -> None:
    refused(store, request(), Code.UNSIGNED)


@pytest.mark.parametrize("header", [H_SIGNATURE, H_CERTIFICATE, H_NONCE])
def test_missing_or_empty_security_header_is_unsigned(overlord: Signer, store: TrustStore, header: str) -> None:
    env = signed(overlord)
    del env.headers[header]
    refused(store, env, Code.UNSIGNED)
    env = signed(overlord)
    env.headers[header] = ""
    refused(store, env, Code.UNSIGNED)


def test_signature_by_a_key_not_matching_the_certificate_is_forged(
    ca: Authority, overlord: Signer, store: TrustStore
) -> None:
    env = signed(overlord)
    intruder = ec.generate_private_key(ec.SECP256R1())
    data = signing.signed_bytes(env, str(env.headers[H_NONCE]), overlord.fingerprint)
    env.headers[H_SIGNATURE] = base64.b64encode(intruder.sign(data, ec.ECDSA(hashes.SHA256()))).decode()
    refused(store, env, Code.BAD_SIGNATURE)


def test_certificate_swapped_for_another_valid_one_is_refused(
    ca: Authority, overlord: Signer, store: TrustStore
) -> None:
    env = signed(overlord)
    other = Signer(*ca.issue("admin.example.org"))
    donor = signed(other)
    env.headers[H_CERTIFICATE] = donor.headers[H_CERTIFICATE]
    env.headers[H_FINGERPRINT] = donor.headers[H_FINGERPRINT]
    refused(store, env, Code.BAD_SIGNATURE)


def test_second_certificate_for_the_same_key_cannot_be_swapped_in(
    ca: Authority, store: TrustStore
) -> None:
    key, cert = ca.issue("web01")
    _, renamed = ca.issue("admin.example.org", key)
    env = signed(Signer(key, cert))
    env.headers[H_CERTIFICATE] = base64.b64encode(renamed.public_bytes(serialization.Encoding.DER)).decode()
    env.headers[H_FINGERPRINT] = signing.fingerprint_of(renamed)
    refused(store, env, Code.BAD_SIGNATURE)


def test_fingerprint_header_must_match_the_certificate(overlord: Signer, store: TrustStore) -> None:
    env = signed(overlord)
    env.headers[H_FINGERPRINT] = "0" * 64
    refused(store, env, Code.BAD_SIGNATURE)


def _set_header(name: str, value: Any) -> Callable[[Envelope], None]:
    def change(env: Envelope) -> None:
        env.headers[name] = value

    return change


TAMPERING: dict[str, Callable[[Envelope], None]] = {
    "body": lambda env: setattr(env, "body", env.body.replace(b"ls -l /", b"rm -rf /")),
    "opcode": _set_header(names.H_OPCODE, "_query_request"),
    "type": lambda env: setattr(env, "type", "_query_request"),
    "target": _set_header(names.H_TARGET, "web02"),
    "target removed": lambda env: env.headers.pop(names.H_TARGET),
    "agent": _set_header(names.H_AGENT, "web01"),
    "deadline": _set_header(names.H_DEADLINE, int(DEADLINE * 1000) + 3_600_000),
    "deadline removed": lambda env: env.headers.pop(names.H_DEADLINE),
    "deadline as text": _set_header(names.H_DEADLINE, str(int(DEADLINE * 1000))),
    "protocol": _set_header(names.H_PROTOCOL, 2),
    "nonce": _set_header(H_NONCE, "1" * 32),
    "correlation_id": lambda env: setattr(env, "correlation_id", "c0ffef"),
    "reply_to": lambda env: setattr(env, "reply_to", "func.reply.attacker"),
    "message_id": lambda env: setattr(env, "message_id", "other"),
}


@pytest.mark.parametrize("what", list(TAMPERING))
def test_tampering_is_a_bad_signature(overlord: Signer, store: TrustStore, what: str) -> None:
    env = signed(overlord)
    TAMPERING[what](env)
    refused(store, env, Code.BAD_SIGNATURE)


# --- certificates ----------------------------------------------------------------------


def test_certificate_from_another_ca_is_untrusted(store: TrustStore) -> None:
    other = make_authority("another CA")
    refused(store, signed(Signer(*other.issue("overlord.example.org"))), Code.UNTRUSTED_CERTIFICATE)


def test_certificate_from_a_ca_with_the_same_name_is_untrusted(ca: Authority, store: TrustStore) -> None:
    impostor = make_authority(ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)  # type: ignore[arg-type]
    assert impostor.cert.subject == ca.cert.subject
    error = refused(store, signed(Signer(*impostor.issue("overlord"))), Code.UNTRUSTED_CERTIFICATE)
    assert "not signed by this CA" in str(error)


def test_expired_certificate_is_untrusted(ca: Authority, store: TrustStore) -> None:
    signer = Signer(*ca.issue("old", not_before=NOW - 10 * DAY, not_after=NOW - DAY))
    assert "expired" in str(refused(store, signed(signer), Code.UNTRUSTED_CERTIFICATE))


def test_not_yet_valid_certificate_is_untrusted(ca: Authority, store: TrustStore) -> None:
    signer = Signer(*ca.issue("early", not_before=NOW + DAY, not_after=NOW + 10 * DAY))
    env = signed(signer)
    assert "not valid before" in str(refused(store, env, Code.UNTRUSTED_CERTIFICATE))
    later = TrustStore(ca.cert, None, lambda: NOW + 2 * DAY)
    assert later.verify(env).cn == "early"


def test_the_ca_itself_may_sign_as_in_func(ca: Authority, store: TrustStore) -> None:
    """Whoever holds the certmaster key is the administrator (certmaster_overrides_acls)."""
    identity = store.verify(signed(Signer(ca.key, ca.cert)))
    assert identity.certificate == ca.cert


def test_another_ca_certificate_cannot_sign(store: TrustStore) -> None:
    other = make_authority()
    refused(store, signed(Signer(other.key, other.cert)), Code.UNTRUSTED_CERTIFICATE)


def test_intermediate_ca_certificate_cannot_sign(ca: Authority, store: TrustStore) -> None:
    signer = Signer(*ca.issue("sub-ca", ca=True))
    refused(store, signed(signer), Code.UNTRUSTED_CERTIFICATE)


@pytest.mark.parametrize("usages", [[], [ExtendedKeyUsageOID.SERVER_AUTH]], ids=["no-eku", "server-only"])
def test_certificate_without_client_auth_is_untrusted(
    ca: Authority, store: TrustStore, usages: list[x509.ObjectIdentifier]
) -> None:
    signer = Signer(*ca.issue("server", usages=usages))
    assert "clientAuth" in str(refused(store, signed(signer), Code.UNTRUSTED_CERTIFICATE))


def test_key_usage_without_digital_signature_is_untrusted(ca: Authority, store: TrustStore) -> None:
    signer = Signer(*ca.issue("enc-only", digital_signature=False))
    refused(store, signed(signer), Code.UNTRUSTED_CERTIFICATE)


def test_certificate_with_an_unaccepted_key_is_untrusted(ca: Authority, store: TrustStore) -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    _, cert = ca.issue("p521", key)
    env = signed(Signer(*ca.issue("p256")))
    env.headers[H_CERTIFICATE] = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    del env.headers[H_FINGERPRINT]
    refused(store, env, Code.UNTRUSTED_CERTIFICATE)


def test_expired_ca_makes_everything_untrusted(ca: Authority, overlord: Signer) -> None:
    store = TrustStore(ca.cert, None, lambda: NOW + 4000 * DAY)
    refused(store, signed(overlord), Code.UNTRUSTED_CERTIFICATE)


# --- revocation ------------------------------------------------------------------------


def test_revoked_certificate_is_refused(ca: Authority) -> None:
    key, cert = ca.issue("revoked")
    store = TrustStore(ca.cert, ca.crl(12345, cert.serial_number), clock)
    refused(store, signed(Signer(key, cert)), Code.REVOKED_CERTIFICATE)


def test_a_long_crl_refuses_its_last_entry_and_no_other(ca: Authority, overlord: Signer) -> None:
    key, cert = ca.issue("revoked")
    store = TrustStore(ca.cert, ca.crl(*range(10_000, 12_000), cert.serial_number), clock)
    refused(store, signed(Signer(key, cert)), Code.REVOKED_CERTIFICATE)
    for _ in range(2):  # the second time from the verified-certificate cache
        store.verify(signed(overlord))


def test_certificate_not_on_the_crl_is_accepted(ca: Authority, overlord: Signer) -> None:
    store = TrustStore(ca.cert, ca.crl(12345), clock)
    assert not store.crl_is_stale()
    store.verify(signed(overlord))


def test_stale_crl_is_still_used_but_reported(ca: Authority, overlord: Signer) -> None:
    key, cert = ca.issue("revoked")
    store = TrustStore(ca.cert, ca.crl(cert.serial_number, next_update=NOW - 60), clock)
    assert store.crl_is_stale()
    store.verify(signed(overlord))
    refused(store, signed(Signer(key, cert)), Code.REVOKED_CERTIFICATE)


def test_stale_crl_refuses_everything_when_strict(ca: Authority, overlord: Signer) -> None:
    store = TrustStore(ca.cert, ca.crl(next_update=NOW - 60), clock, strict_crl=True)
    refused(store, signed(overlord), Code.UNTRUSTED_CERTIFICATE)


def test_crl_from_another_ca_is_a_configuration_error(ca: Authority) -> None:
    with pytest.raises(ValueError):
        TrustStore(ca.cert, make_authority("another CA").crl(), clock)


# --- signer construction ---------------------------------------------------------------


def test_signer_refuses_a_key_not_matching_its_certificate(ca: Authority) -> None:
    _, cert = ca.issue("web01")
    with pytest.raises(ValueError):
        Signer(ec.generate_private_key(ec.SECP256R1()), cert)


@pytest.mark.parametrize(
    "make_key",
    [lambda: ec.generate_private_key(ec.SECP521R1()), lambda: rsa.generate_private_key(65537, 1024)],
    ids=["p521", "rsa1024"],
)
def test_signer_refuses_unaccepted_keys(ca: Authority, make_key: Callable[[], Any]) -> None:
    with pytest.raises(ValueError):
        Signer(*ca.issue("weak", make_key()))


# --- garbage never escapes as another exception type -----------------------------------


def _flip(text: str, rng: random.Random) -> str:
    raw = bytearray(base64.b64decode(text))
    for _ in range(rng.randint(1, 4)):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return base64.b64encode(bytes(raw)).decode()


def _garbage(rng: random.Random, valid: str) -> Any:
    choice = rng.randrange(9)
    if choice == 0:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 80)))
    if choice == 1:
        return base64.b64encode(rng.randbytes(rng.randrange(0, 600))).decode()
    if choice == 2:
        return rng.choice([0, -1, 2**63, 1.5, float("nan"), True, False])
    if choice == 3:
        return valid[: rng.randrange(len(valid))]
    if choice == 4:
        return _flip(valid, rng) if _is_b64(valid) else valid[::-1]
    if choice == 5:
        return valid + rng.choice(["=", "A", "AAAA", "\n", " ", "\x00"])
    if choice == 6:
        return "A" * rng.randrange(0, 40_000)
    if choice == 7:
        return "\ud800" + valid
    return rng.randbytes(32).hex()


def _is_b64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def test_fuzzed_security_headers_only_raise_security_errors(overlord: Signer, store: TrustStore) -> None:
    rng = random.Random(4)
    template = signed(overlord)
    headers = [H_SIGNATURE, H_CERTIFICATE, H_NONCE, H_FINGERPRINT, names.H_DEADLINE, names.H_TARGET]
    codes: set[Code] = set()
    for _ in range(400):
        env = copy.deepcopy(template)
        for name in rng.sample(headers, rng.randint(1, 2)):
            env.headers[name] = _garbage(rng, str(template.headers[name]))
        try:
            store.verify(env)
        except SecurityError as exc:
            codes.add(exc.code)
    assert codes <= {Code.UNSIGNED, Code.BAD_SIGNATURE, Code.UNTRUSTED_CERTIFICATE}
    assert Code.BAD_SIGNATURE in codes


def test_fuzzed_certificate_der_only_raises_security_errors(ca: Authority, store: TrustStore) -> None:
    rng = random.Random(5)
    key, cert = ca.issue("web01")
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    template = signed(Signer(key, cert))
    for _ in range(2000):
        mutated = bytearray(der)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] ^= rng.randrange(1, 256)
        if mutated == der:
            continue
        env = copy.deepcopy(template)
        env.headers[H_CERTIFICATE] = base64.b64encode(bytes(mutated)).decode()
        del env.headers[H_FINGERPRINT]
        with pytest.raises(SecurityError):
            store.verify(env)


def test_oversized_certificate_header_is_refused_before_decoding(overlord: Signer, store: TrustStore) -> None:
    env = signed(overlord)
    env.headers[H_CERTIFICATE] = "A" * (signing.MAX_CERTIFICATE_HEADER + 4)
    assert "longer" in str(refused(store, env, Code.BAD_SIGNATURE))


# --- replays ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def guard_refuses(guard: ReplayGuard, nonce: str, deadline: float | None, code: Code, **kwargs: Any) -> None:
    with pytest.raises(SecurityError) as info:
        guard.check(nonce, deadline, **kwargs)
    assert info.value.code == code, str(info.value)


def test_replayed_envelope_is_refused(overlord: Signer, store: TrustStore) -> None:
    guard = ReplayGuard(clock)
    env = signed(overlord)
    identity = store.verify(env)
    guard.check_envelope(env, identity)
    replay = copy.deepcopy(env)
    identity = store.verify(replay)
    with pytest.raises(SecurityError) as info:
        guard.check_envelope(replay, identity)
    assert info.value.code == Code.REPLAYED


def test_replay_after_the_deadline_is_expired_not_accepted() -> None:
    now = FakeClock()
    guard = ReplayGuard(now, skew=30)
    guard.check("n1", NOW + 10)
    now.now = NOW + 10 + 30  # still inside the skew: remembered
    guard_refuses(guard, "n1", NOW + 10, Code.REPLAYED)
    now.now = NOW + 10 + 31  # forgotten, but the signed deadline has passed
    guard_refuses(guard, "n1", NOW + 10, Code.EXPIRED)
    assert len(guard) == 0


def test_same_nonce_with_a_new_deadline_is_accepted_after_expiry() -> None:
    now = FakeClock()
    guard = ReplayGuard(now, skew=0)
    guard.check("n1", NOW + 10)
    now.now = NOW + 11
    guard.check("n1", NOW + 20)
    guard_refuses(guard, "n1", NOW + 20, Code.REPLAYED)


def test_nonces_are_scoped_by_signer() -> None:
    guard = ReplayGuard(clock)
    guard.check("n1", DEADLINE, scope="a")
    guard.check("n1", DEADLINE, scope="b")
    guard_refuses(guard, "n1", DEADLINE, Code.REPLAYED, scope="a")


def test_request_without_deadline_cannot_be_protected() -> None:
    guard_refuses(ReplayGuard(clock), "n1", None, Code.BAD_REQUEST)


@pytest.mark.parametrize("deadline", [NOW + 2 * DAY, float("inf"), float("nan")])
def test_unguardable_deadlines_are_refused(deadline: float) -> None:
    guard_refuses(ReplayGuard(clock, max_lifetime=DAY), "n1", deadline, Code.BAD_REQUEST)


@pytest.mark.parametrize("nonce", ["", "x" * 129])
def test_bad_nonces_are_refused(nonce: str) -> None:
    guard_refuses(ReplayGuard(clock), nonce, DEADLINE, Code.BAD_REQUEST)


def test_full_guard_refuses_rather_than_forgets() -> None:
    now = FakeClock()
    guard = ReplayGuard(now, max_entries=3, skew=0)
    for i in range(3):
        guard.check(f"n{i}", NOW + 10 + i)
    guard_refuses(guard, "n3", NOW + 100, Code.INTERNAL_ERROR)
    guard_refuses(guard, "n0", NOW + 10, Code.REPLAYED)
    now.now = NOW + 10.5  # n0 expires first and makes room
    guard.check("n3", NOW + 100)
    assert len(guard) == 3
    guard_refuses(guard, "n1", NOW + 11, Code.REPLAYED)


def test_signed_request_without_deadline_is_refused_by_the_guard(overlord: Signer, store: TrustStore) -> None:
    env = Envelope(body=b"{}", type="_agent_locate_request", message_id="m1")
    overlord.sign(env)
    identity = store.verify(env)
    with pytest.raises(SecurityError) as info:
        ReplayGuard(clock).check_envelope(env, identity)
    assert info.value.code == Code.BAD_REQUEST


def test_concurrent_replays_let_exactly_one_through() -> None:
    guard = ReplayGuard(clock)
    accepted: list[int] = []
    barrier = threading.Barrier(16)

    def attempt(i: int) -> None:
        barrier.wait()
        for n in range(200):
            try:
                guard.check(f"n{n}", DEADLINE)
            except SecurityError as exc:
                assert exc.code == Code.REPLAYED
            else:
                accepted.append(n)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(accepted) == list(range(200))


def test_identity_is_immutable(overlord: Signer, store: TrustStore) -> None:
    identity = store.verify(signed(overlord))
    assert isinstance(identity, Identity)
    with pytest.raises(AttributeError):
        identity.cn = "root"  # type: ignore[misc]


def test_a_cached_certificate_is_still_checked_for_time_and_revocation(ca: Authority) -> None:
    """The CA-signature check is cached per certificate; expiry and the CRL are not."""
    signer = Signer(*ca.issue("cached.example.org"))
    now = [NOW]
    store = TrustStore(ca.cert, None, lambda: now[0])
    store.verify(signed(signer))
    store.verify(signed(signer))  # from the cache
    now[0] += 3 * 365 * DAY  # past the leaf's validity, within the CA's
    refused(store, signed(signer), Code.UNTRUSTED_CERTIFICATE)
