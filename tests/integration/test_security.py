"""Message security on a real broker: who may call a minion, and what it refuses.

Every refusal must come back with its own code, execute nothing (the probe is a
``command.run`` that would append to a marker file), and leave an audit line. Each test
runs twice: on the plain session broker, and on a TLS-only node where every process
logs in with its certificate (EXTERNAL) and broker permissions confine each minion.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from func_amqp.broker.node import ROLE_MINION, ROLE_OVERLORD, PrivateBroker, amqp10_url
from func_amqp.config import ENV_BROKER_URL, Paths
from func_amqp.errors import Code
from func_amqp.overlord.client import Overlord
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import ExceptionResponse, MethodRequest, MethodResponse, SubscribeRequest
from func_amqp.overlord.caller import minion_call_id
from func_amqp.overlord.session import Session
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.credentials import CA_HOST_TLS_CN, broker_tls, overlord_credentials
from func_amqp.security.identity import acl_key
from func_amqp.security.keys import HostIdentity, generate_key, load_private_key
from func_amqp.security.signing import Signer
from func_amqp.security.tls import client_tls, wants_tls
from func_amqp.transport import transport_for_url
from func_amqp.transport.base import Delivery
from tests.broker_support import node_state_dir
from tests.conftest import AMQP10, BOTH_TRANSPORTS, MinionFactory, MinionProcess

pytestmark = pytest.mark.broker
TRANSPORTS = BOTH_TRANSPORTS

Mutation = Callable[[Envelope], None]


# --- identities -------------------------------------------------------------------------


def issue(cn: str, workdir: Path, authority: CertificateAuthority | None = None) -> Signer:
    """A caller certificate from the test's CA (or another authority)."""
    authority = authority or CertificateAuthority(Paths.resolve().ca_dir, autosign=True)
    identity = HostIdentity(workdir / f"pki-{cn}", cn)
    result = authority.submit(identity.csr_pem())
    assert result.signed, result.reason
    identity.store(result.certificate or b"", result.ca_certificate or b"")
    key, cert, _ = identity.load()
    return Signer(key, cert)


def issue_with_validity(cn: str, not_before: dt.datetime, not_after: dt.datetime) -> Signer:
    """A certificate the real CA signed, but for a period the test chooses."""
    authority = CertificateAuthority(Paths.resolve().ca_dir)
    ca_cert = authority.ca_certificate()
    key = generate_key("ec")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(load_private_key(authority.key_path), hashes.SHA256())
    )
    return Signer(key, cert)


def grant(minion: MinionProcess, signer: Signer, methods: str) -> None:
    acl_dir = minion.confdir / "minion-acl.d"
    acl_dir.mkdir(exist_ok=True)
    with (acl_dir / "test.acl").open("a") as fh:
        fh.write(f"{acl_key(signer.certificate)} = {methods}\n")


# --- a raw caller ---------------------------------------------------------------------


class RawCaller:
    """Sends hand-made (signed, tampered, replayed) requests and collects replies."""

    def __init__(self, url: str) -> None:
        paths = Paths.resolve()
        self.transport = transport_for_url(url, broker_tls(url, overlord_credentials(paths), paths))
        self.replies: asyncio.Queue[Envelope] = asyncio.Queue()
        self.reply_to = ""

    async def __aenter__(self) -> "RawCaller":
        await self.transport.connect()

        async def on_reply(delivery: Delivery) -> None:
            await self.replies.put(delivery.envelope)

        self.reply_to = await self.transport.open_reply_queue(on_reply)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    def request(self, target: str, args: list[Any], signer: Signer | None, mutate: Mutation | None = None) -> Envelope:
        message = MethodRequest("command", "run", args, time.time() + 30, target)
        env = codec.encode(message, correlation_id=f"c{time.monotonic_ns()}", reply_to=self.reply_to)
        if signer is not None:
            signer.sign(env)
        if mutate is not None:
            mutate(env)
        return env

    async def send(self, target: str, env: Envelope) -> Any:
        await self.transport.send(target, env)
        reply = codec.decode(await asyncio.wait_for(self.replies.get(), 30), 1 << 24)
        return reply


def refused_code(reply: Any) -> int:
    assert isinstance(reply, ExceptionResponse), reply
    return reply.code


def audit_outcomes(minion: MinionProcess) -> list[str]:
    return [field.split("=", 1)[1] for line in minion.audit_lines() for field in line.split() if field.startswith("outcome=")]


# --- tests ------------------------------------------------------------------------------


@dataclass
class TlsNode:
    broker: PrivateBroker
    ca_dir: Path


@pytest.fixture(scope="module")
def tls_node() -> Iterator[TlsNode]:
    """A TLS-only private node for this module, with its own CA."""
    with node_state_dir() as state:
        paths = Paths(config_dir=state / "config", state_dir=state)
        CertificateAuthority(paths.ca_dir, autosign=True).init()
        node = PrivateBroker(paths)
        node.start(tls=True)
        try:
            node.grant(CA_HOST_TLS_CN, ROLE_OVERLORD)
            yield TlsNode(node, paths.ca_dir)
        finally:
            Session.close_shared()
            node.stop()


@pytest.fixture(params=["plain", "tls"])
def secured(request: pytest.FixtureRequest, func_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, MinionFactory]]:
    """The broker URL and a minion factory: the plain session broker, or the TLS node."""
    if request.param == "plain":
        factory = MinionFactory(func_env, tmp_path)
        url = func_env[ENV_BROKER_URL]
    else:
        node: TlsNode = request.getfixturevalue("tls_node")
        shutil.copytree(node.ca_dir, Paths.resolve().ca_dir, dirs_exist_ok=True)  # the broker's CA
        url = node.broker.url or ""
        if request.getfixturevalue("transport") == AMQP10:
            url = amqp10_url(url)
        monkeypatch.setenv(ENV_BROKER_URL, url)
        factory = MinionFactory({**func_env, ENV_BROKER_URL: url}, tmp_path, lambda name: node.broker.grant(name, ROLE_MINION))
    try:
        yield url, factory
    finally:
        factory.stop_all()


@pytest.fixture
def secured_url(secured: tuple[str, MinionFactory]) -> str:
    return secured[0]


@pytest.fixture
def target(secured: tuple[str, MinionFactory], prefix: str) -> MinionProcess:
    return secured[1].start(f"{prefix}-1")


def test_the_certmaster_key_may_call_everything(target: MinionProcess) -> None:
    assert Overlord(target.name, noglobs=True).test.ping() == 1
    assert audit_outcomes(target)[-1] == "ok"


def test_calls_after_the_first_carry_a_mac(target: MinionProcess) -> None:
    """The minion's reply to the first call is MAC'd (the overlord learned the pair key
    from it) and it accepts the MAC'd requests that follow."""
    ol = Overlord(target.name, noglobs=True)
    assert ol.test.ping() == 1
    assert ol._async.rpc.macs_to(target.name)
    assert ol.test.add(2, 3) == 5
    assert ol.test.echo("again") == "again"
    assert ol._async.rpc.macs_to(target.name)  # still MAC'd: every reply verified
    assert audit_outcomes(target)[-3:] == ["ok", "ok", "ok"]


def test_acl_grants_and_denies(target: MinionProcess, secured_url: str, tmp_path: Path) -> None:
    alice = issue("alice", tmp_path)
    grant(target, alice, "test.*")
    marker = tmp_path / "ran"

    async def scenario() -> tuple[Any, Any]:
        async with RawCaller(secured_url) as caller:
            allowed = MethodRequest("test", "ping", [], time.time() + 30, target.name)
            env = codec.encode(allowed, correlation_id="ok", reply_to=caller.reply_to)
            alice.sign(env)
            ok = await caller.send(target.name, env)
            denied = await caller.send(target.name, caller.request(target.name, [f"echo x >> {marker}"], alice))
            return ok, denied

    ok, denied = asyncio.run(scenario())
    assert isinstance(ok, MethodResponse) and ok.result == 1
    assert refused_code(denied) == Code.ACCESS_DENIED
    assert "alice" in denied.text and "minion-acl.d" in denied.text
    assert not marker.exists()
    assert audit_outcomes(target)[-2:] == ["ok", "denied:ACCESS_DENIED"]


def test_following_a_finished_call_needs_its_methods_grant(target: MinionProcess, secured_url: str, tmp_path: Path) -> None:
    """A just-finished call's kept reply goes to a follower only as a running call's
    would: to one the ACLs grant its method."""
    assert Overlord(target.name, noglobs=True).run("command", "run", ["echo kept-secret"], call_id="kept1")[1] == "kept-secret\n"
    alice = issue("alice", tmp_path)
    grant(target, alice, "test.*")

    async def follow() -> Any:
        async with RawCaller(secured_url) as caller:
            request = SubscribeRequest(minion_call_id("kept1", target.name), time.time() + 30)
            env = codec.encode(request, correlation_id="f1", reply_to=caller.reply_to, target=target.name)
            alice.sign(env)
            return await caller.send(target.name, env)

    denied = asyncio.run(follow())
    assert refused_code(denied) == Code.ACCESS_DENIED and "kept-secret" not in denied.text
    assert audit_outcomes(target)[-1] == "denied:ACCESS_DENIED"


def _tamper_body(env: Envelope) -> None:
    env.body = env.body.replace(b"echo", b"ECHO")


def forged_by(other: Signer) -> Mutation:
    """Keep alice's certificate, but carry a signature made with another key."""

    def mutate(env: Envelope) -> None:
        copy = Envelope(**{**env.__dict__, "headers": dict(env.headers)})
        other.sign(copy)
        env.headers[names.H_SIGNATURE] = copy.headers[names.H_SIGNATURE]
        env.headers[names.H_NONCE] = copy.headers[names.H_NONCE]

    return mutate


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unsigned", Code.UNSIGNED),
        ("forged", Code.BAD_SIGNATURE),
        ("tampered", Code.BAD_SIGNATURE),
        ("wrong_target", Code.BAD_SIGNATURE),
        ("expired_certificate", Code.UNTRUSTED_CERTIFICATE),
        ("wrong_ca", Code.UNTRUSTED_CERTIFICATE),
        ("revoked", Code.REVOKED_CERTIFICATE),
    ],
)
def test_bad_requests_are_refused_and_never_run(
    case: str, code: Code, target: MinionProcess, secured_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    now = dt.datetime.now(dt.timezone.utc)
    signer: Signer | None = issue("alice", tmp_path)
    mutate: Mutation | None = None
    if case == "unsigned":
        signer = None
    elif case == "forged":
        mutate = forged_by(issue("bob", tmp_path))
    elif case == "tampered":
        mutate = _tamper_body
    elif case == "wrong_target":
        mutate = lambda env: env.headers.update({names.H_TARGET: "someone-else"})  # noqa: E731
    elif case == "expired_certificate":
        signer = issue_with_validity("old", now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    elif case == "wrong_ca":
        other = CertificateAuthority(tmp_path / "other-ca", autosign=True)
        other.init()
        signer = issue("alice", tmp_path / "other", other)
    elif case == "revoked":
        signer = issue("mallory", tmp_path)
        CertificateAuthority(Paths.resolve().ca_dir).revoke(["mallory"])
    if signer is not None:
        grant(target, signer, "*")

    async def scenario() -> Any:
        async with RawCaller(secured_url) as caller:
            return await caller.send(target.name, caller.request(target.name, [f"echo x >> {marker}"], signer, mutate))

    reply = asyncio.run(scenario())
    assert refused_code(reply) == code, reply
    assert not marker.exists()
    assert audit_outcomes(target)[-1] == f"refused:{code.name}"


def test_replayed_request_runs_once(target: MinionProcess, secured_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    alice = issue("alice", tmp_path)
    grant(target, alice, "command.run")

    async def scenario() -> tuple[Any, Any]:
        async with RawCaller(secured_url) as caller:
            env = caller.request(target.name, [f"echo x >> {marker}"], alice)
            first = await caller.send(target.name, env)
            again = await caller.send(target.name, env)
            return first, again

    first, again = asyncio.run(scenario())
    assert isinstance(first, MethodResponse) and first.result[0] == 0
    assert refused_code(again) == Code.REPLAYED
    assert marker.read_text() == "x\n"
    assert audit_outcomes(target)[-2:] == ["ok", "refused:REPLAYED"]


def test_forged_reply_is_refused_by_the_overlord(
    request: pytest.FixtureRequest, target: MinionProcess, secured_url: str, tmp_path: Path
) -> None:
    """While a call runs, forgeries for it reach the caller's reply queue first.

    The forger is another host: on the TLS node, a minion logged in with its own
    certificate, which broker permissions let publish replies.
    """
    ol = Overlord(target.name, noglobs=True, timeout=30)
    rpc = ol._async.rpc  # the caller's own reply address and pending calls
    forger = issue("forger", tmp_path)
    tls = None
    if wants_tls(secured_url):
        request.getfixturevalue("tls_node").broker.grant("forger", ROLE_MINION)
        pki = HostIdentity(tmp_path / "pki-forger", "forger")
        tls = client_tls(pki.ca_path, pki.cert_path, pki.key_path)
    outcome: dict[str, Any] = {}

    async def inject() -> None:
        await asyncio.sleep(0.5)
        cid = next(iter(rpc._pending))
        transport = transport_for_url(secured_url, tls)
        await transport.connect()
        try:
            for signer in (None, forger):  # unsigned, and signed by another host
                env = codec.encode(MethodResponse("forged"), correlation_id=cid, agent=target.name)
                if signer is not None:
                    signer.sign(env)
                await transport.reply(rpc._reply_to or "", env)
        finally:
            await transport.close()

    async def scenario() -> None:
        call = asyncio.ensure_future(rpc.call(target.name, "test", "sleep", [2], 30))
        await inject()
        outcome["result"] = await call

    ol._session.run(scenario())
    assert isinstance(outcome["result"], float)  # the real answer, not "forged"
