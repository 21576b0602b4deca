"""A private RabbitMQ node for tests that need a real broker."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from func_amqp.broker.node import PrivateBroker
from func_amqp.config import Paths


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
