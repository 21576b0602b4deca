"""funcd's body: name the minion, load its modules, serve until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from func_amqp.config import MinionConfig, Paths, resolve_broker_url
from func_amqp.errors import ConfigError
from func_amqp.minion.loader import load_modules
from func_amqp.minion.modules.func_module import configure
from func_amqp.minion.server import AmqpInterface
from func_amqp.minion.service import MinionService, ServiceSettings
from func_amqp.protocol.names import valid_minion_name
from func_amqp.transport import transport_for_url

_log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0
"""Seconds running calls get to finish after SIGTERM before funcd exits."""

LOOPBACK_PREFIXES = ("127.", "::1")


def detect_hostname() -> str:
    """func's fallback order without certmaster: the FQDN, else the plain host name."""
    fqdn = socket.getfqdn()
    try:
        address = socket.gethostbyname(fqdn)
    except OSError:
        address = ""
    if fqdn and "." in fqdn and not address.startswith(LOOPBACK_PREFIXES):
        return fqdn
    return socket.gethostname()


def minion_name(config: MinionConfig, override: str | None = None) -> str:
    """``--name``, else ``minion_name`` from minion.conf, else the host name; lower-cased."""
    name = (override or config.minion_name or detect_hostname()).strip().lower()
    if not valid_minion_name(name):
        raise ConfigError(
            f"invalid minion name {name!r}: use letters, digits, '.', '-' and '_' "
            "(set it with --name or minion_name in minion.conf)"
        )
    return name


@dataclass
class Minion:
    """Everything funcd needs, assembled from configuration."""

    paths: Paths
    config: MinionConfig
    name: str
    interface: AmqpInterface
    abandoned_calls: bool = False

    @classmethod
    def from_config(cls, paths: Paths, config: MinionConfig, name_override: str | None = None) -> "Minion":
        configure(config, paths)
        modules = load_modules(config.module_list, [Path(d).expanduser() for d in config.module_dirs])
        return cls(paths, config, minion_name(config, name_override), AmqpInterface(modules))

    @property
    def broker_url(self) -> str:
        return resolve_broker_url(self.config.broker_url, self.paths)

    def settings(self) -> ServiceSettings:
        return ServiceSettings(
            name=self.name,
            max_concurrent_calls=self.config.max_concurrent_calls,
            heartbeat_interval=self.config.heartbeat_interval,
            max_message_bytes=self.config.max_message_bytes,
        )

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully."""
        transport = transport_for_url(self.broker_url)
        await transport.connect()
        try:
            service = MinionService(transport, self.interface, self.settings())
            await service.start()
            _log.info("minion %s connected to %s", self.name, transport.url)
            await stop.wait()
            _log.info("stopping")
            await service.stop(SHUTDOWN_GRACE)
            self.abandoned_calls = service.busy
        finally:
            await transport.close()


def run(minion: Minion) -> None:
    """Run the minion in the foreground until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await minion.serve(stop)

    asyncio.run(main())
    if minion.abandoned_calls:
        # a module method ignored its cancel: its thread cannot be stopped, and Python
        # would wait for it at exit; its child processes were already signalled
        _log.warning("exiting with module calls still running")
        logging.shutdown()
        os._exit(0)
