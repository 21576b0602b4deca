"""Calls between a signing overlord and a signing minion over the in-memory twin: after
the first reply, requests and replies carry MACs instead of signatures; a minion whose
certificate changed gets the request again, signed, and the call still succeeds."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest

from func_amqp.minion.acl import Acl
from func_amqp.minion.loader import load_modules
from func_amqp.minion.security import MinionSecurity
from func_amqp.minion.server import AmqpInterface
from func_amqp.minion.service import MinionService, ServiceSettings
from func_amqp.overlord.rpc import RpcClient
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope
from func_amqp.errors import Code
from func_amqp.protocol.messages import ExceptionResponse, MethodRequest, MethodResponse
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.credentials import issue_locally
from func_amqp.security.identity import TrustSource
from func_amqp.security.keys import HostIdentity, load_certificate, load_private_key
from func_amqp.security.pair_keys import MAC_SCHEME
from func_amqp.security.signing import Signer
from func_amqp.transport.memory import MemoryTransport

MAX_BYTES = 1 << 20


class Recorder(MemoryTransport):
    """The in-memory transport, keeping what its owner sends."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sent: list[Envelope] = []

    async def send(self, target: str, env: Envelope, *, control: bool = False) -> None:
        self.sent.append(env)
        await super().send(target, env, control=control)

    async def reply(self, reply_to: str, env: Envelope) -> None:
        self.sent.append(env)
        await super().reply(reply_to, env)

    async def broadcast(self, env: Envelope) -> None:
        self.sent.append(env)
        await super().broadcast(env)


def _kind(env: Envelope) -> str:
    return "mac" if names.H_MAC in env.headers else "signature" if names.H_SIGNATURE in env.headers else "none"


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


async def _start_minion(url: str, tmp_path: Path, ca_dir: Path, signer: Signer | None = None) -> tuple[MinionService, Recorder]:
    host = issue_locally(ca_dir, HostIdentity(tmp_path / "pki-m1", "m1"))
    key, cert, _ = host.load()
    transport = Recorder(url)
    await transport.connect()
    acl = Acl(tmp_path / "acl.d", ca_key=None, certmaster_overrides_acls=True)
    gate = MinionSecurity("m1", TrustSource(host.ca_path, None), signer or Signer(key, cert), acl)
    service = MinionService(
        transport, AmqpInterface(dict(load_modules())), ServiceSettings("m1", heartbeat_interval=60, max_message_bytes=MAX_BYTES), gate=gate
    )
    await service.start()
    return service, transport


@pytest.fixture
async def minion(url: str, tmp_path: Path, ca_dir: Path) -> AsyncIterator[tuple[MinionService, Recorder]]:
    service, transport = await _start_minion(url, tmp_path, ca_dir)
    try:
        yield service, transport
    finally:
        await service.stop(grace=5)
        await transport.close()


async def _client(
    url: str, ca_dir: Path, *, trusting: bool = True, transport_class: type[Recorder] = Recorder
) -> tuple[RpcClient, Recorder]:
    authority = CertificateAuthority(ca_dir)
    signer = Signer(load_private_key(authority.key_path), load_certificate(authority.cert_path))
    transport = transport_class(url)
    await transport.connect()
    rpc = RpcClient(transport, MAX_BYTES, signer=signer, trust=TrustSource(authority.cert_path, None) if trusting else None)
    await rpc.start()
    return rpc, transport


async def _add(rpc: RpcClient, a: int, b: int) -> object:
    reply = await rpc.request("m1", MethodRequest("test", "add", [a, b], time.time() + 10, "m1"), 10)
    assert isinstance(reply, MethodResponse), reply
    return reply.result


async def test_macs_replace_signatures_after_the_first_reply(minion: tuple[MinionService, Recorder], url: str, ca_dir: Path) -> None:
    _, minion_sent = minion
    rpc, sent = await _client(url, ca_dir)
    try:
        assert await _add(rpc, 1, 2) == 3
        assert _kind(sent.sent[0]) == "signature"
        assert sent.sent[0].headers[names.H_ACCEPTS_MAC] == MAC_SCHEME
        assert _kind(minion_sent.sent[-1]) == "mac"  # the reply: this caller checks MACs
        assert await _add(rpc, 2, 3) == 5
        assert _kind(sent.sent[-1]) == "mac"
        assert names.H_ACCEPTS_MAC not in sent.sent[-1].headers  # implied by the MAC
        assert _kind(minion_sent.sent[-1]) == "mac"
    finally:
        await rpc.transport.close()


async def test_a_caller_that_does_not_check_macs_gets_signed_replies(minion: tuple[MinionService, Recorder], url: str, ca_dir: Path) -> None:
    """An overlord of an earlier version (or without a CA to check with) never sees a MAC."""
    _, minion_sent = minion
    rpc, sent = await _client(url, ca_dir, trusting=False)
    try:
        for _ in range(2):
            assert await _add(rpc, 1, 1) == 2
            assert _kind(sent.sent[-1]) == "signature" and names.H_ACCEPTS_MAC not in sent.sent[-1].headers
            assert _kind(minion_sent.sent[-1]) == "signature"
    finally:
        await rpc.transport.close()


async def test_a_minion_with_a_new_certificate_gets_the_request_again_signed(
    minion: tuple[MinionService, Recorder], url: str, tmp_path: Path, ca_dir: Path
) -> None:
    service, minion_sent = minion
    rpc, sent = await _client(url, ca_dir)
    try:
        assert await _add(rpc, 1, 2) == 3
        assert await _add(rpc, 1, 2) == 3  # MAC'd, for the certificate m1 has now
        key = load_private_key(tmp_path / "pki-m1" / "m1.pem")
        renewed = CertificateAuthority(ca_dir).issue_server("m1", key.public_key())  # type: ignore[arg-type]
        assert isinstance(service.gate, MinionSecurity)
        service.gate.signer = Signer(key, renewed)  # as after a restart with the new certificate
        before = len(sent.sent)
        assert await _add(rpc, 4, 5) == 9
        assert [_kind(env) for env in sent.sent[before:]] == ["mac", "signature"]
        assert await _add(rpc, 4, 4) == 8
        assert _kind(sent.sent[-1]) == "mac"  # with the key for the new certificate
        assert sent.sent[-1].headers[names.H_MAC_RECIPIENT] == service.gate.signer.fingerprint
    finally:
        await rpc.transport.close()


async def test_locates_stay_signed(minion: tuple[MinionService, Recorder], url: str, ca_dir: Path) -> None:
    """A locate goes to every minion: it offers no MAC, and each answer comes signed."""
    _, minion_sent = minion
    rpc, sent = await _client(url, ca_dir)
    try:
        assert await _add(rpc, 1, 1) == 2  # m1 and this client are a pair now
        assert set(await rpc.locate(5, {"m1"})) == {"m1"}
        locate = [env for env in sent.sent if env.headers.get(names.H_OPCODE) == "_agent_locate_request"]
        answers = [env for env in minion_sent.sent if env.headers.get(names.H_OPCODE) == "_agent_locate_response"]
        assert len(locate) == 1 and names.H_ACCEPTS_MAC not in locate[0].headers and _kind(locate[0]) == "signature"
        assert [_kind(env) for env in answers] == ["signature"]
    finally:
        await rpc.transport.close()


class CopyTamperer(Recorder):
    """A broker user's trick: before each MAC'd request, a copy of it naming another
    recipient certificate, so the minion refuses the copy under the call's id."""

    async def send(self, target: str, env: Envelope, *, control: bool = False) -> None:
        if names.H_MAC in env.headers:
            copy = dataclasses.replace(env, headers={**env.headers, names.H_MAC_RECIPIENT: "0" * 64})
            await super().send(target, copy, control=control)
        await super().send(target, env, control=control)


async def test_a_refusal_of_a_tampered_copy_does_not_make_the_call_run_twice(
    minion: tuple[MinionService, Recorder], url: str, ca_dir: Path
) -> None:
    """The minion refuses the copy with KEY_CHANGED, signed with the certificate the MAC
    was made for: no rekeying happened, so the overlord must not send the call again."""
    _, minion_sent = minion
    rpc, transport = await _client(url, ca_dir, transport_class=CopyTamperer)
    try:
        assert await _add(rpc, 1, 2) == 3  # signed: no copy
        before = len(transport.sent)
        reply = await rpc.request("m1", MethodRequest("test", "add", [2, 2], time.time() + 10, "m1"), 10)
        assert isinstance(reply, ExceptionResponse) and reply.code == Code.KEY_CHANGED
        await asyncio.sleep(0.2)  # the original's own reply, which nobody waits for now
        assert [_kind(env) for env in transport.sent[before:]] == ["mac", "mac"]  # the copy, the original: no resend
        answers = [env for env in minion_sent.sent if env.headers.get(names.H_OPCODE) == "_method_response"]
        assert len(answers) == 2  # 1 + 2 and 2 + 2, each once
    finally:
        await transport.close()


async def test_a_follower_gets_replies_maced_for_itself(minion: tuple[MinionService, Recorder], url: str, ca_dir: Path) -> None:
    """Two overlords on one call: each reply is MAC'd for the one it goes to."""
    _, minion_sent = minion
    first, _ = await _client(url, ca_dir)
    second, _ = await _client(url, ca_dir)
    try:
        call = asyncio.ensure_future(first.request("m1", MethodRequest("test", "sleep", [1], time.time() + 10, "m1"), 10, correlation_id="slow1"))
        await asyncio.sleep(0.1)
        followed = await second.follow("m1", "slow1", 10)
        answered = await call
        assert isinstance(answered, MethodResponse)
        assert followed == answered.result
        finals = [env for env in minion_sent.sent if env.headers.get(names.H_OPCODE) == "_method_response"]
        assert {_kind(env) for env in finals} == {"mac"}
        assert len({env.headers[names.H_MAC_RECIPIENT] for env in finals}) == 1  # both hold the CA key
    finally:
        await first.transport.close()
        await second.transport.close()
