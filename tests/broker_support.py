"""A private RabbitMQ node for tests that need a real broker."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from func_amqp.broker.node import PrivateBroker
from func_amqp.config import Paths


@contextlib.contextmanager
def running_broker(state_dir: Path, timeout: float = 60.0) -> Iterator[PrivateBroker]:
    """Start a node kept under ``state_dir`` and stop it afterwards, whatever happens."""
    broker = PrivateBroker(Paths(config_dir=state_dir / "config", state_dir=state_dir))
    broker.start(timeout=timeout)
    try:
        yield broker
    finally:
        broker.stop()
