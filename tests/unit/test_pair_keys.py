"""MACs under pair keys: only the two certificate holders can make one, and every
forged, tampered, misdirected or malformed one is refused as a bad signature would be."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from func_amqp.errors import Code, SecurityError
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import MethodRequest
from func_amqp.security.pair_keys import MAC_BYTES, PairKeys, takes_part
from func_amqp.security.signing import Signer, TrustStore
from tests.unit.test_signing import DEADLINE, Authority, clock, make_authority


@pytest.fixture(scope="module")
def ca() -> Authority:
    return make_authority()


def _party(ca: Authority, cn: str, key: Any = None, *, key_agreement: bool = True) -> Signer:
    return Signer(*ca.issue(cn, key, key_agreement=key_agreement))


@pytest.fixture(scope="module")
def overlord(ca: Authority) -> Signer:
    return _party(ca, "overlord.example.org")


@pytest.fixture(scope="module")
def minion(ca: Authority) -> Signer:
    return _party(ca, "m1")


@pytest.fixture
def store(ca: Authority) -> TrustStore:
    return TrustStore(ca.cert, clock=clock)


def _request(target: str = "m1") -> Envelope:
    return codec.encode(MethodRequest("test", "add", [1, 2], DEADLINE, target), correlation_id="c1", reply_to="r1")


def _maced(sender: Signer, recipient: Signer, env: Envelope | None = None) -> Envelope:
    env = env or _request()
    pair = sender.pair_key(_identity_of(recipient))
    assert pair is not None
    sender.sign(env, pair)
    return env


def _identity_of(signer: Signer) -> Any:
    from func_amqp.security.signing import Identity

    return Identity("peer", None, signer.fingerprint, signer.certificate)


def _refused(store: TrustStore, env: Envelope, receiver: Signer | None) -> SecurityError:
    with pytest.raises(SecurityError) as info:
        store.verify(env, receiver=receiver)
    return info.value


# --- keys --------------------------------------------------------------------------------


def test_both_sides_agree_one_key_per_direction(overlord: Signer, minion: Signer) -> None:
    there = overlord.pair_key(_identity_of(minion))
    back = minion.pair_key(_identity_of(overlord))
    assert there is not None and back is not None
    assert there.send == back.receive and there.receive == back.send
    assert there.send != there.receive  # a message cannot be reflected to its sender
    assert len(there.send) == MAC_BYTES
    assert there.peer_fingerprint == minion.fingerprint


def test_keys_are_derived_once_per_peer(overlord: Signer, minion: Signer) -> None:
    assert overlord.pair_key(_identity_of(minion)) is overlord.pair_key(_identity_of(minion))


def test_who_takes_part(ca: Authority) -> None:
    assert takes_part(ca.issue("a", key_agreement=True)[1])
    assert not takes_part(ca.issue("b", key_agreement=False)[1])  # keyUsage says no
    assert takes_part(ca.cert)  # the CA's own key: the administrator's, as for signing
    assert not takes_part(ca.issue("c", ed25519.Ed25519PrivateKey.generate(), key_agreement=True)[1])
    assert takes_part(ca.issue("d", ec.generate_private_key(ec.SECP384R1()), key_agreement=True)[1])


def test_no_pair_key_with_oneself(minion: Signer) -> None:
    """One key both ways: a request could come back as its own reply. A party signs."""
    assert minion.pair_key(_identity_of(minion)) is None


def test_no_pair_key_where_the_keys_cannot_agree(ca: Authority, overlord: Signer) -> None:
    no_usage = _party(ca, "old-minion", key_agreement=False)
    p384 = _party(ca, "p384", ec.generate_private_key(ec.SECP384R1()))
    edwards = _party(ca, "ed", ed25519.Ed25519PrivateKey.generate())
    assert overlord.pair_key(_identity_of(no_usage)) is None
    assert overlord.pair_key(_identity_of(p384)) is None  # another curve
    assert overlord.pair_key(_identity_of(edwards)) is None
    assert not edwards.pairs.usable and edwards.pair_key(_identity_of(overlord)) is None
    assert not no_usage.pairs.usable


def test_the_pair_cache_is_bounded(ca: Authority, overlord: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    from func_amqp.security import pair_keys

    monkeypatch.setattr(pair_keys, "PAIR_CACHE_SIZE", 2)
    keys = PairKeys(overlord._key, overlord.certificate, overlord.fingerprint)  # type: ignore[attr-defined]
    peers = [_party(ca, f"peer{i}") for i in range(3)]
    for peer in peers:
        assert keys.for_peer(peer.certificate, peer.fingerprint) is not None
    assert len(keys._pairs) <= 2


# --- accepted ----------------------------------------------------------------------------


def test_a_maced_request_is_accepted_by_its_recipient(store: TrustStore, overlord: Signer, minion: Signer) -> None:
    env = _maced(overlord, minion)
    assert names.H_SIGNATURE not in env.headers
    assert env.headers[names.H_MAC_RECIPIENT] == minion.fingerprint
    identity = store.verify(env, expected_target="m1", receiver=minion)
    assert identity.cn == "overlord.example.org" and identity.fingerprint == overlord.fingerprint


def test_signing_again_replaces_a_mac_and_the_other_way_round(store: TrustStore, overlord: Signer, minion: Signer) -> None:
    env = _maced(overlord, minion)
    overlord.sign(env)
    assert names.H_MAC not in env.headers and names.H_MAC_RECIPIENT not in env.headers
    store.verify(env)  # anyone can check a signature
    _maced(overlord, minion, env)
    assert names.H_SIGNATURE not in env.headers
    store.verify(env, receiver=minion)


def test_a_ca_key_and_a_leaf_agree(ca: Authority, store: TrustStore, minion: Signer) -> None:
    administrator = Signer(ca.key, ca.cert)
    env = _maced(administrator, minion)
    assert store.verify(env, receiver=minion).certificate == ca.cert


# --- refused -----------------------------------------------------------------------------


def test_only_the_recipient_can_check_a_mac(ca: Authority, store: TrustStore, overlord: Signer, minion: Signer) -> None:
    env = _maced(overlord, minion)
    assert _refused(store, env, None).code == Code.BAD_SIGNATURE
    other = _party(ca, "m2")
    error = _refused(store, env, other)
    assert error.code == Code.KEY_CHANGED and "send the message signed" in str(error)
    env.headers[names.H_MAC_RECIPIENT] = other.fingerprint  # claims to be for m2: it is not
    assert _refused(store, env, other).code == Code.BAD_SIGNATURE


def test_a_mac_for_the_recipients_previous_certificate_is_key_changed(ca: Authority, store: TrustStore, overlord: Signer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    before, after = (Signer(*ca.issue("m1", key, key_agreement=True)) for _ in range(2))
    assert _refused(store, _maced(overlord, before), after).code == Code.KEY_CHANGED


@pytest.mark.parametrize(
    "change",
    [
        lambda env: setattr(env, "body", env.body.replace(b"add", b"sub")),
        lambda env: env.headers.__setitem__(names.H_TARGET, "m2"),
        lambda env: env.headers.__setitem__(names.H_DEADLINE, env.headers[names.H_DEADLINE] + 1),
        lambda env: setattr(env, "reply_to", "elsewhere"),
        lambda env: setattr(env, "correlation_id", "c2"),
        lambda env: env.headers.__setitem__(names.H_NONCE, "0" * 32),
    ],
    ids=["body", "target", "deadline", "reply_to", "correlation_id", "nonce"],
)
def test_any_change_to_a_maced_message_is_refused(change: Any, store: TrustStore, overlord: Signer, minion: Signer) -> None:
    env = _maced(overlord, minion)
    change(env)
    assert _refused(store, env, minion).code == Code.BAD_SIGNATURE


def test_a_mac_is_not_accepted_from_another_sender(ca: Authority, store: TrustStore, overlord: Signer, minion: Signer) -> None:
    """A third party swaps in its own certificate: the tag is not under its key."""
    env = _maced(overlord, minion)
    mallory = _party(ca, "mallory")
    env.headers[names.H_CERTIFICATE] = mallory._certificate_b64  # type: ignore[attr-defined]
    env.headers[names.H_FINGERPRINT] = mallory.fingerprint
    assert _refused(store, env, minion).code == Code.BAD_SIGNATURE


def test_a_request_cannot_be_reflected_as_the_recipients_reply(store: TrustStore, overlord: Signer, minion: Signer) -> None:
    """The overlord's MAC to the minion, relabelled as coming from the minion and sent
    back to the overlord: the pair's two directions have different keys."""
    env = _maced(overlord, minion)
    env.headers[names.H_CERTIFICATE] = minion._certificate_b64  # type: ignore[attr-defined]
    env.headers[names.H_FINGERPRINT] = minion.fingerprint
    env.headers[names.H_MAC_RECIPIENT] = overlord.fingerprint
    assert _refused(store, env, overlord).code == Code.BAD_SIGNATURE


def test_a_mac_from_a_certificate_that_may_not_agree_keys(ca: Authority, store: TrustStore, minion: Signer) -> None:
    old = _party(ca, "old-overlord", key_agreement=False)
    pair = minion.pair_key(_identity_of(_party(ca, "someone")))  # any well-formed key: what matters is the sender's
    assert pair is not None
    env = _request()
    old.sign(env, pair)
    env.headers[names.H_MAC_RECIPIENT] = minion.fingerprint
    error = _refused(store, env, minion)
    assert error.code == Code.BAD_SIGNATURE and "cannot agree a key" in str(error)


def test_a_revoked_sender_is_refused_before_its_mac_is_looked_at(ca: Authority, overlord: Signer, minion: Signer) -> None:
    store = TrustStore(ca.cert, ca.crl(overlord.certificate.serial_number), clock=clock)
    assert _refused(store, _maced(overlord, minion), minion).code == Code.REVOKED_CERTIFICATE


@pytest.mark.parametrize(
    "headers, code",
    [
        ({names.H_SIGNATURE: "c2ln"}, Code.BAD_SIGNATURE),  # a signature as well
        ({names.H_MAC: "not base64!"}, Code.BAD_SIGNATURE),
        ({names.H_MAC: "A" * 65}, Code.BAD_SIGNATURE),  # longer than the limit
        ({names.H_MAC: base64.b64encode(b"x" * 16).decode()}, Code.BAD_SIGNATURE),  # too short
        ({names.H_MAC: 7}, Code.BAD_SIGNATURE),
        ({names.H_MAC_RECIPIENT: None}, Code.BAD_SIGNATURE),
        ({names.H_MAC_RECIPIENT: "ABC"}, Code.BAD_SIGNATURE),
        ({names.H_MAC_RECIPIENT: 5}, Code.BAD_SIGNATURE),
        ({names.H_MAC: "", names.H_SIGNATURE: None}, Code.UNSIGNED),  # an empty MAC is none
    ],
)
def test_malformed_mac_headers(headers: dict[str, Any], code: Code, store: TrustStore, overlord: Signer, minion: Signer) -> None:
    env = _maced(overlord, minion)
    for name, value in headers.items():
        if value is None:
            env.headers.pop(name, None)
        else:
            env.headers[name] = value
    assert _refused(store, env, minion).code == code
