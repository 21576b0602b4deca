"""The minion's gate: signatures, replays, the CA's override."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from func_amqp.errors import AccessToMethodDenied, Code, SecurityError
from func_amqp.minion.acl import Acl
from func_amqp.minion.security import MinionSecurity
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import MethodRequest, Opcode
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.credentials import issue_locally
from func_amqp.security.identity import TrustSource
from func_amqp.security.keys import HostIdentity, load_certificate, load_private_key
from func_amqp.security.pair_keys import MAC_SCHEME
from func_amqp.security.signing import Identity, Signer


def _signer(ca_dir: Path, pki: Path, name: str) -> Signer:
    key, cert, _ = issue_locally(ca_dir, HostIdentity(pki, name)).load()
    return Signer(key, cert)


@pytest.fixture
def gate(tmp_path: Path) -> MinionSecurity:
    minion = issue_locally(tmp_path / "ca", HostIdentity(tmp_path / "pki", "m1"))
    key, cert, _ = minion.load()
    acl = Acl(tmp_path / "acl.d", ca_key=None, certmaster_overrides_acls=False)
    return MinionSecurity("m1", TrustSource(minion.ca_path, None), Signer(key, cert), acl)


def _request(signer: Signer) -> Envelope:
    env = codec.encode(MethodRequest("test", "ping", [], time.time() + 30, "m1"), correlation_id="c", reply_to="r")
    signer.sign(env)
    return env


def test_a_replay_is_refused_but_a_broker_redelivery_is_not(gate: MinionSecurity, tmp_path: Path) -> None:
    env = _request(_signer(tmp_path / "ca", tmp_path / "pki-alice", "alice"))
    gate.authenticate(env, Opcode.METHOD_REQUEST)
    with pytest.raises(SecurityError) as info:
        gate.authenticate(env, Opcode.METHOD_REQUEST)
    assert info.value.code == Code.REPLAYED
    env.redelivered = True  # requeued by the broker before it was accepted: it never ran
    gate.authenticate(env, Opcode.METHOD_REQUEST)


def test_the_override_belongs_to_the_ca_certificate_not_a_name(gate: MinionSecurity, tmp_path: Path) -> None:
    authority = CertificateAuthority(tmp_path / "ca")
    ca_signer = Signer(load_private_key(authority.key_path), load_certificate(authority.cert_path))
    caller = gate.authenticate(_request(ca_signer), Opcode.METHOD_REQUEST)
    assert caller.is_ca
    gate.authorize(caller, "command.run")  # the CA's own key may call everything
    alice = gate.authenticate(_request(_signer(tmp_path / "ca", tmp_path / "pki-alice", "alice")), Opcode.METHOD_REQUEST)
    assert not alice.is_ca
    with pytest.raises(AccessToMethodDenied):
        gate.authorize(alice, "command.run")


def test_jobs_must_be_signed_and_get_no_reply_key(gate: MinionSecurity, tmp_path: Path) -> None:
    """A job is read by whichever minion takes it and kept as a record: a MAC, which only
    one recipient can check, is refused, and nothing answers it with one."""
    alice = _signer(tmp_path / "ca", tmp_path / "pki-alice", "alice")
    offered = _request(alice)
    offered.headers[names.H_ACCEPTS_MAC] = MAC_SCHEME
    alice.sign(offered)
    assert gate.authenticate(offered, Opcode.METHOD_REQUEST).reply_key is not None  # a call may get MACs
    assert gate.authenticate(offered, Opcode.METHOD_REQUEST, job=True).reply_key is None
    pair = alice.pair_key(Identity("m1", None, gate.signer.fingerprint, gate.signer.certificate))
    assert pair is not None
    maced = _request(alice)
    alice.sign(maced, pair)
    gate.authenticate(maced, Opcode.METHOD_REQUEST)  # as a call it is fine
    with pytest.raises(SecurityError) as info:
        gate.authenticate(maced, Opcode.METHOD_REQUEST, job=True)
    assert info.value.code == Code.BAD_SIGNATURE
