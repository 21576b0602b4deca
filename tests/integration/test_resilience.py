"""What the broker and the outside world can throw at a minion, on a real broker."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import aio_pika
import pytest

from func_amqp.config import Paths
from func_amqp.errors import Code
from func_amqp.overlord.client import Overlord
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import ExceptionResponse, MethodRequest
from func_amqp.security.credentials import overlord_credentials
from tests.broker_support import malformed_request, ping_until_answered, raw_client
from tests.conftest import AMQP091, BOTH_TRANSPORTS, MinionFactory

pytestmark = pytest.mark.broker
TRANSPORTS = BOTH_TRANSPORTS

FLOOD = 500


def test_broker_restart_loses_no_accepted_call(broker: Any, minions: MinionFactory, prefix: str) -> None:
    """Over AMQP 0-9-1 the minion retries its reply until the caller's reply queue is
    back; over AMQP 1.0 the caller asks for it again once its reply link is (§15)."""
    name = f"{prefix}-1"
    minions.start(name)
    outcome: dict[str, Any] = {}

    def long_call() -> None:
        outcome["result"] = Overlord(name, timeout=90, noglobs=True).test.sleep(3)

    caller = threading.Thread(target=long_call)
    caller.start()
    time.sleep(1.0)  # the call is accepted within milliseconds; it now sleeps on the minion
    broker.stop()
    broker.start()
    caller.join(90)
    assert not caller.is_alive()
    assert isinstance(outcome["result"], float), outcome["result"]
    # the minion re-claimed its queue and serves new calls
    assert ping_until_answered(name) == 1


async def _dead_letter_count(channel: aio_pika.abc.AbstractChannel) -> int:
    queue = await channel.declare_queue(names.DEAD_LETTER_QUEUE, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def _flood(url: str, target: str) -> tuple[list[int], int]:
    """Publish garbage; return the codes answered and how many were dead-lettered."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(names.MINIONS_EXCHANGE)
        replies = await channel.declare_queue(exclusive=True)
        before = await _dead_letter_count(channel)
        with_reply = 0
        for i in range(FLOOD):
            body, headers = malformed_request(i)
            reply_to = replies.name if i % 2 else None
            with_reply += bool(reply_to)
            await exchange.publish(
                aio_pika.Message(body, headers=headers, reply_to=reply_to, content_type=names.CONTENT_TYPE),
                routing_key=target,
            )
        # one oversized, well-formed request (over the default 16 MiB limit)
        big = MethodRequest("test", "echo", ["x" * (17 * 1024 * 1024)], time.time() + 60, target)
        env = codec.encode(big, correlation_id="big", reply_to=replies.name)
        await exchange.publish(
            aio_pika.Message(env.body, headers=dict(env.headers), reply_to=replies.name, correlation_id="big"),
            routing_key=target,
        )
        codes: list[int] = []
        async with replies.iterator(timeout=60) as it:
            async for message in it:
                await message.ack()
                reply = codec.decode(codec_env(message), 1 << 20)
                assert isinstance(reply, ExceptionResponse)
                codes.append(reply.code)
                if len(codes) == with_reply + 1:
                    break
        for _ in range(100):
            dead = await _dead_letter_count(channel) - before
            if dead >= FLOOD - with_reply:
                break
            await asyncio.sleep(0.1)
        return codes, dead
    finally:
        await connection.close()


def codec_env(message: aio_pika.abc.AbstractIncomingMessage) -> Envelope:
    return Envelope(body=message.body, headers=dict(message.headers), content_type=message.content_type)


@pytest.mark.transports(AMQP091)  # speaks AMQP 0-9-1 itself; test_amqp10.py floods over 1.0
def test_flood_of_malformed_messages(broker_url: str, minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minion = minions.start(name)
    codes, dead = asyncio.run(_flood(broker_url, name))
    assert len(codes) == FLOOD // 2 + 1
    assert set(codes) == {Code.BAD_REQUEST, Code.UNKNOWN_OPCODE, Code.UNSUPPORTED_VERSION, Code.MESSAGE_TOO_LARGE}
    assert codes.count(Code.MESSAGE_TOO_LARGE) == 1
    assert dead == FLOOD - FLOOD // 2
    assert minion.proc.poll() is None
    assert Overlord(name, noglobs=True).test.ping() == 1


def test_expired_request_is_never_started(broker_url: str, minions: MinionFactory, prefix: str, tmp_path) -> None:
    name = f"{prefix}-1"
    marker = tmp_path / "ran"
    minions.start(name)

    async def send_late() -> int:
        async with raw_client(broker_url) as (transport, reply_to, replies):
            late = MethodRequest("command", "run", [f"touch {marker}"], time.time() - 5, name)
            env = codec.encode(late, correlation_id="late", reply_to=reply_to)
            signer = overlord_credentials(Paths.resolve()).signer
            assert signer is not None
            signer.sign(env)  # a genuine caller's request, only late
            env.deadline = None  # no broker TTL: the minion itself must see the deadline has passed
            await transport.send(name, env)
            reply = codec.decode(await asyncio.wait_for(replies.get(), 30), 1 << 20)
            assert isinstance(reply, ExceptionResponse)
            return reply.code

    assert asyncio.run(send_late()) == Code.EXPIRED
    assert not marker.exists()
    assert json.dumps(Overlord(name, noglobs=True).command.exists("/bin/sh")) == "true"
