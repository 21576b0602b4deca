"""What is particular to the AMQP 1.0 transport, on the session's RabbitMQ node through
its AMQP 1.0 plugin: raw garbage over AMQP 1.0, start-up errors, the topology file.

The transport-independent behaviour (calls, targeting, security) runs over both
transports in test_calls.py and test_security.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from typing import Any

import pytest

from func_amqp.broker.definitions import definitions
from func_amqp.errors import BrokerUnreachable, Code, TransportError
from func_amqp.overlord.client import Overlord
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import ExceptionResponse, MethodRequest
from func_amqp.transport.amqp10 import Amqp10Transport
from tests.broker_support import malformed_request, ping_until_answered, raw_client
from tests.conftest import AMQP10, MinionFactory, run_cli

pytestmark = pytest.mark.broker
TRANSPORTS = (AMQP10,)

FLOOD = 200
REPLY_WAIT = 60.0


def _garbage(i: int, reply_to: str | None) -> Envelope:
    body, headers = malformed_request(i)
    return Envelope(body=body, headers=headers, reply_to=reply_to, correlation_id=f"g{i}", content_type=names.CONTENT_TYPE)


async def _flood(url: str, target: str) -> list[int]:
    """Send garbage over AMQP 1.0; return the error codes answered."""
    async with raw_client(url) as (transport, reply_to, replies):
        expected = 0
        for i in range(FLOOD):
            answer = reply_to if i % 2 else None
            expected += bool(answer)
            await transport.send(target, _garbage(i, answer))
        big = MethodRequest("test", "echo", ["x" * (17 * 1024 * 1024)], time.time() + 60, target)
        await transport.send(target, codec.encode(big, correlation_id="big", reply_to=reply_to))
        codes: list[int] = []
        async with asyncio.timeout(REPLY_WAIT):
            while len(codes) < expected + 1:
                reply = codec.decode(await replies.get(), 1 << 20)
                assert isinstance(reply, ExceptionResponse)
                codes.append(reply.code)
        return codes


def test_flood_of_malformed_messages_over_amqp10(broker_url: str, minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minion = minions.start(name)
    codes = asyncio.run(_flood(broker_url, name))
    assert len(codes) == FLOOD // 2 + 1
    assert set(codes) == {Code.BAD_REQUEST, Code.UNKNOWN_OPCODE, Code.UNSUPPORTED_VERSION, Code.MESSAGE_TOO_LARGE}
    assert minion.proc.poll() is None
    assert Overlord(name, noglobs=True).test.ping() == 1


def test_unreachable_broker_fails_fast_and_says_so() -> None:
    async def connect() -> None:
        await Amqp10Transport("amqp10://guest:secret@127.0.0.1:1/").connect()

    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable) as caught:
        asyncio.run(connect())
    assert time.monotonic() - t0 < 10
    assert "secret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    assert "AMQP 1.0" in str(caught.value)


def test_a_broker_without_the_exchanges_says_what_to_do(broker: Any, broker_url: str) -> None:
    """A virtual host that never had func-amqp's exchanges imported: a minion fails at
    start-up, when it attaches its first consumer, and says how to declare them."""
    vhost = "no-func-amqp-" + uuid.uuid4().hex[:6]

    def ctl(*args: str) -> int:
        return subprocess.run(["rabbitmqctl", "-n", broker.node, *args], capture_output=True, timeout=60).returncode

    assert ctl("add_vhost", vhost) == 0
    try:
        assert ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*") == 0
        async def serve() -> None:
            transport = Amqp10Transport(broker_url.rstrip("/") + "/" + vhost)
            await transport.connect()
            try:
                await transport.serve_minion("lonely", _never_called, prefetch=1)
            finally:
                await transport.close()

        with pytest.raises(TransportError) as caught:
            asyncio.run(serve())
        assert "import_definitions" in str(caught.value) and names.MINIONS_EXCHANGE in str(caught.value)
    finally:
        ctl("delete_vhost", vhost)


async def _never_called(delivery: Any) -> None:
    raise AssertionError("nothing can arrive without the exchanges")


def test_broker_definitions_command_prints_the_topology(func_env: dict[str, str]) -> None:
    out = run_cli("func_amqp.cli.admin", "broker", "definitions", env=func_env)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed == json.loads(json.dumps(definitions()))
    exchanges = {e["name"]: e["type"] for e in printed["exchanges"]}
    assert exchanges[names.MINIONS_EXCHANGE] == "direct" and exchanges[names.EVENTS_EXCHANGE] == "topic"


def test_calls_work_again_after_a_broker_restart(broker: Any, minions: MinionFactory, prefix: str) -> None:
    """Both ends reconnect by themselves and attach their links again."""
    name = f"{prefix}-1"
    minion = minions.start(name)
    assert Overlord(name, noglobs=True).test.ping() == 1
    broker.stop()
    broker.start()
    assert ping_until_answered(name) == 1
    assert minion.proc.poll() is None


def test_jobs_over_amqp10_are_refused_at_once_saying_why(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    """A minion configured for a pool says at start-up that pools need AMQP 0-9-1 and
    serves calls; an async call, a pool job and the jobs command each fail in one line."""
    name = f"{prefix}-1"
    minion = minions.start(name, conf="pools = builders:2\n")
    assert "builder pools are not available over AMQP 1.0" in minion.output()
    assert ":guest@" not in minion.output()  # Proton's own connect log carries the password
    for argv in (
        ("func_amqp.cli.func", name, "call", "--async", "test", "ping"),
        ("func_amqp.cli.admin", "jobs", "submit", "--pool", "builders", "test", "ping"),
        ("func_amqp.cli.admin", "jobs", "list"),
    ):
        out = run_cli(*argv, env=func_env)
        assert out.returncode == 1, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "AMQP 0-9-1 URL" in lines[0], out.stderr
    assert Overlord(name, noglobs=True).test.ping() == 1
    assert minion.proc.poll() is None
