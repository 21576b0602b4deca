"""A private RabbitMQ node for tests that need a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from pathlib import Path

from func_amqp.broker.node import PrivateBroker
from func_amqp.config import Paths
from func_amqp.overlord.client import Overlord
from func_amqp.protocol import names
from func_amqp.protocol.envelope import Envelope
from func_amqp.transport import Delivery, Transport, transport_for_url


@contextlib.contextmanager
def node_state_dir(prefix: str = "func-amqp-test-broker-") -> Iterator[Path]:
    """A fresh state directory a node can use, removed afterwards.

    Not under pytest's temporary root: that is private to root (0700, and pytest resets
    it whenever another run starts), while a node started by root runs as ``rabbitmq``.
    """
    state = Path(tempfile.mkdtemp(prefix=prefix))
    state.chmod(0o755)
    try:
        yield state
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def running_broker(state_dir: Path, timeout: float = 60.0) -> Iterator[PrivateBroker]:
    """Start a node kept under ``state_dir`` and stop it afterwards, whatever happens."""
    broker = PrivateBroker(Paths(config_dir=state_dir / "config", state_dir=state_dir))
    broker.start(timeout=timeout)
    try:
        yield broker
    finally:
        broker.stop()


def malformed_request(i: int) -> tuple[bytes, dict[str, Any]]:
    """The i-th of five kinds of broken request (body, headers): undecodable, no object
    id, an unknown opcode, a future protocol, a deadline that is not a number."""
    kind = i % 5
    headers: dict[str, Any] = {names.H_OPCODE: "_method_request"}
    body = b"\xff" * (i % 13)
    if kind == 1:
        body = b'{"_object_id": 5}'
    elif kind == 2:
        headers = {names.H_OPCODE: "_nonsense"}
    elif kind == 3:
        headers = {names.H_OPCODE: "_method_request", names.H_PROTOCOL: 7}
    elif kind == 4:
        headers = {names.H_OPCODE: "_method_request", names.H_DEADLINE: "soon"}
    return body, headers


def ping_until_answered(name: str, within: float = 30.0) -> Any:
    """``test.ping`` on minion ``name`` until it answers 1 or ``within`` seconds pass
    (after a broker restart both ends must reconnect first); the last result."""
    deadline = time.time() + within
    while True:
        result = Overlord(name, timeout=5, noglobs=True).test.ping()
        if result == 1 or time.time() > deadline:
            return result
        time.sleep(0.5)


@contextlib.asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[tuple[Transport, str, asyncio.Queue[Envelope]]]:
    """A connected transport with a reply address, for tests that send by hand:
    (transport, reply address, the replies as they arrive)."""
    transport = transport_for_url(url)
    await transport.connect()
    try:
        replies: asyncio.Queue[Envelope] = asyncio.Queue()

        async def on_reply(delivery: Delivery) -> None:
            replies.put_nowait(delivery.envelope)

        yield transport, await transport.open_reply_queue(on_reply), replies
    finally:
        await transport.close()
