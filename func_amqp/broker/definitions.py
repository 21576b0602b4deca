"""func-amqp's broker topology as RabbitMQ definitions (the JSON of ``rabbitmqctl
import_definitions`` and of ``load_definitions`` in rabbitmq.conf).

AMQP 0-9-1 clients declare what they use; AMQP 1.0 clients cannot declare exchanges,
so a broker they use must hold them beforehand. The private node loads this at boot;
an administrator imports it into any other RabbitMQ once.
"""

from __future__ import annotations

import json
from typing import Any

from func_amqp.protocol import names

VHOST = "/"


def _exchange(name: str, kind: str, arguments: dict[str, str] | None) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": VHOST,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": arguments or {},
    }


def definitions() -> dict[str, Any]:
    """The shared exchanges and the dead-letter pair, exactly as clients declare them."""
    return {
        "exchanges": [
            *(_exchange(name, kind, arguments) for name, kind, arguments in names.EXCHANGES),
            _exchange(names.DEAD_LETTER_EXCHANGE, "fanout", None),
        ],
        "queues": [
            {
                "name": names.DEAD_LETTER_QUEUE,
                "vhost": VHOST,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(names.DEAD_LETTER_QUEUE_ARGUMENTS),
            }
        ],
        "bindings": [
            {
                "source": names.DEAD_LETTER_EXCHANGE,
                "vhost": VHOST,
                "destination": names.DEAD_LETTER_QUEUE,
                "destination_type": "queue",
                "routing_key": "",
                "arguments": {},
            }
        ],
    }


def definitions_json() -> str:
    return json.dumps(definitions(), indent=2, sort_keys=True) + "\n"
