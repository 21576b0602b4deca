"""funcd's body: name the minion, load its modules, serve until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable, TypeVar
from pathlib import Path

from func_amqp.config import MinionConfig, Paths, resolve_broker_url
from func_amqp.errors import ConfigError
from func_amqp.minion.acl import Acl
from func_amqp.minion.audit import AuditLog
from func_amqp.minion.enrollment import enroll, keep_crl_current
from func_amqp.minion.jobs import JobLedger, JobWorker
from func_amqp.minion.loader import load_modules
from func_amqp.minion.modules.func_module import configure
from func_amqp.minion.server import AmqpInterface
from func_amqp.minion.security import Gate, MinionSecurity, OpenAccess
from func_amqp.minion.service import MinionService, ServiceSettings
from func_amqp.overlord.rpc import RpcClient
from func_amqp.protocol.names import valid_minion_name
from func_amqp.security.credentials import Credentials, broker_tls, crl_path, from_files
from func_amqp.security.tls import BrokerTls, wants_tls
from func_amqp.security.keys import HostIdentity, clean_command
from func_amqp.transport import transport_for_url
from func_amqp.transport.base import masked_url, name_taken

_log = logging.getLogger(__name__)
T = TypeVar("T")

AUDIT_TO_LOGGER = "none"
"""``audit_log = none``: audit lines go to the log, not to a file."""

SHUTDOWN_GRACE = 10.0
"""Seconds running calls get to finish after SIGTERM before funcd exits."""
NAMESAKE_PROBE_TIMEOUT = 2.0
"""How long a starting minion waits for another of its name to answer (AMQP 1.0)."""

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
            job_slots=sum(self.config.pool_slots.values()),
        )

    # --- security ---------------------------------------------------------------------

    def identity(self) -> HostIdentity:
        return HostIdentity(self.paths.pki_dir, self.name)

    def credentials(self) -> Credentials:
        """The configured key files (all three), else the enrolled identity."""
        crl = crl_path(self.paths, self.config.crl_location)
        cfg = self.config
        if cfg.key_file and cfg.cert_file and cfg.ca_file:
            return from_files(Path(cfg.key_file), Path(cfg.cert_file), Path(cfg.ca_file), crl, "config")
        identity = self.identity()
        return from_files(identity.key_path, identity.cert_path, identity.ca_path, crl, "enrolled")

    def broker_tls(self) -> BrokerTls | None:
        """TLS with this minion's own certificate, for an ``amqps://`` broker."""
        if not wants_tls(self.broker_url):
            return None
        if self.needs_enrollment():
            raise ConfigError(
                f"minion {self.name} has no certificate yet, and an amqps:// broker wants one: "
                "enrol it first (it asks the certmaster over a plain listener) or set "
                "key_file, cert_file and ca_file in minion.conf"
            )
        return broker_tls(self.broker_url, self.credentials(), self.paths)

    def needs_enrollment(self) -> bool:
        cfg = self.config
        configured = bool(cfg.key_file and cfg.cert_file and cfg.ca_file)
        return cfg.require_signatures and not configured and not self.identity().is_complete()

    def gate(self) -> Gate:
        """Signature checks and ACLs, or open access when signatures are not required."""
        if not self.config.require_signatures:
            _log.warning("require_signatures is off: any broker user may call this minion")
            return OpenAccess()
        creds = self.credentials()
        assert creds.signer is not None and creds.trust is not None
        expires = creds.signer.certificate.not_valid_after_utc
        if expires < datetime.now(timezone.utc):
            _log.error(
                "the certificate of %s expired on %s: overlords will refuse its replies. Remove "
                "%s, run '%s' on the CA host and restart funcd to enrol again",
                self.name, expires.date(), creds.cert_file, clean_command(self.name),
            )
        acl_dir = Path(self.config.acl_dir) if self.config.acl_dir else self.paths.acl_dir
        # the CA's override is the gate's (by certificate), not a grant by name in the ACLs
        acl = Acl(acl_dir, ca_key=None, certmaster_overrides_acls=False)
        return MinionSecurity(
            self.name, creds.trust, creds.signer, acl, certmaster_overrides_acls=self.config.certmaster_overrides_acls
        )

    def audit_log(self) -> AuditLog:
        configured = self.config.audit_log
        if configured.lower() == AUDIT_TO_LOGGER:
            return AuditLog(None)
        return AuditLog(Path(configured) if configured else self.paths.audit_log)

    def job_worker(self, service: MinionService) -> JobWorker | None:
        """Takes this minion's durable jobs and its pools' jobs, when the broker keeps them."""
        cfg = self.config
        if not (cfg.jobs or cfg.pool_slots):
            return None
        if not service.transport.keeps_jobs:
            _log.warning("%s; until then this minion takes interactive calls only", service.transport.jobs_unavailable())
            return None
        ledger = JobLedger(self.paths.job_ledger(self.name))
        return JobWorker(service, ledger, direct=cfg.jobs, pools=cfg.pool_slots, tags=cfg.tag_map)

    async def _secure(self, rpc: RpcClient, background: set[asyncio.Task[None]]) -> Gate:
        """Enroll if needed, keep the CRL fresh, and return the gate requests pass."""
        if not self.config.require_signatures:
            return self.gate()
        await rpc.start()
        if self.needs_enrollment():
            await enroll(rpc, self.identity(), self.config.certmaster, self.config.certmaster_poll_interval)
        gate = self.gate()
        crl = crl_path(self.paths, self.config.crl_location)
        if crl.parent == self.paths.pki_dir and isinstance(gate, MinionSecurity):  # fetched, not the CA's own file
            task = asyncio.get_running_loop().create_task(
                keep_crl_current(rpc, self.config.certmaster, gate.trust, crl, self.config.crl_refresh_interval)
            )
            background.add(task)
        return gate

    # --- serving ----------------------------------------------------------------------

    async def _refuse_namesake(self, rpc: RpcClient) -> None:
        """A transport that cannot hold a name for one minion (AMQP 1.0) asks first
        whether another minion of this name answers.

        Not over TLS: there the broker logs the minion in by its certificate, whose
        minion role may not publish to func.minions (and RabbitMQ closes the whole
        connection on a refused publish); a second minion of a name needs its key.
        """
        if rpc.transport.reports_unroutable or wants_tls(self.broker_url):
            return
        await rpc.start()
        if await rpc.probe(self.name, NAMESAKE_PROBE_TIMEOUT, unsent=False):
            raise name_taken(self.name)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully."""
        transport = transport_for_url(self.broker_url, self.broker_tls())
        await transport.connect()
        background: set[asyncio.Task[None]] = set()
        # one unsigned client (one reply address) for what the minion asks before it
        # serves: enrolment, the CRL, whether its name is taken
        helper = RpcClient(transport, self.config.max_message_bytes)
        try:
            gate = await _until(stop, self._secure(helper, background))
            if gate is None:
                return
            await self._refuse_namesake(helper)
            service = MinionService(transport, self.interface, self.settings(), gate=gate, audit=self.audit_log())
            service.jobs = self.job_worker(service)
            await service.start()
            _log.info("minion %s connected to %s", self.name, masked_url(transport.url))
            await stop.wait()
            _log.info("stopping")
            await service.stop(SHUTDOWN_GRACE)
            self.abandoned_calls = service.busy
        finally:
            for task in background:
                task.cancel()
            await transport.close()


async def _until(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None if ``stop`` is set first (SIGTERM while enrolling)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        return task.result()
    task.cancel()
    return None


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)`` in the foreground; SIGTERM or SIGINT sets ``stop``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(main())


def run(minion: Minion) -> None:
    """Run the minion in the foreground until SIGTERM or SIGINT."""
    run_until_signalled(minion.serve)
    if minion.abandoned_calls:
        # a module method ignored its cancel: its thread cannot be stopped, and Python
        # would wait for it at exit; its child processes were already signalled
        _log.warning("exiting with module calls still running")
        logging.shutdown()
        os._exit(0)
