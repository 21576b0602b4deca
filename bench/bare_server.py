"""A plain aio-pika request/reply server: the baseline func-amqp's minion is measured against.

It does what any hand-written aio-pika RPC server does and nothing more: consume a
queue with a prefetch window, decode a JSON request, acknowledge it, and publish a JSON
reply to ``reply_to`` with the request's ``correlation_id``. It runs as its own process,
as funcd does, so both sides of the comparison pay the same inter-process costs.

    python bench/bare_server.py --url amqp://... --queue bench.bare [--no-confirms]

Prints ``serving <queue>`` once it consumes; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any, Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

CONNECT_TIMEOUT = 10.0
DEFAULT_PREFETCH = 16
"""The minion's default ``max_concurrent_calls``, which is also its prefetch."""


def answer(request: Any) -> Any:
    """The reply body: ``ping`` answers 1 like func's test module; anything else echoes."""
    if isinstance(request, dict) and request.get("method") == "ping":
        return {"result": 1}
    return {"result": request}


async def serve(url: str, queue_name: str, prefetch: int, confirms: bool, stop: asyncio.Event) -> None:
    """Serve ``queue_name`` until ``stop`` is set."""
    connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
    try:
        channel = await connection.channel(publisher_confirms=confirms)
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        exchange = channel.default_exchange

        async def on_message(message: AbstractIncomingMessage) -> None:
            body = json.dumps(answer(json.loads(message.body))).encode()
            await message.ack()
            if message.reply_to:
                await exchange.publish(
                    aio_pika.Message(
                        body=body,
                        content_type="application/json",
                        correlation_id=message.correlation_id,
                    ),
                    routing_key=message.reply_to,
                )

        await queue.consume(on_message)
        print(f"serving {queue_name}", flush=True)
        await stop.wait()
    finally:
        await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="AMQP URL of the broker")
    parser.add_argument("--queue", required=True, help="queue to serve (declared exclusive)")
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH, help="consumer prefetch (default: %(default)s)")
    parser.add_argument(
        "--no-confirms",
        action="store_true",
        help="publish replies without publisher confirms (aio-pika's default channel has them)",
    )
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.url, args.queue, args.prefetch, not args.no_confirms, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
