"""A private RabbitMQ node kept entirely under one state directory.

Developers and the test-suite need a broker without installing or configuring one
system-wide, so :class:`PrivateBroker` runs a node of the installed ``rabbitmq-server``
with its data, logs, configuration and pid file all inside ``paths.private_broker_dir``.
It listens on 127.0.0.1 only and is reached with the ``guest`` account, which RabbitMQ
allows from loopback.

In TLS mode (``start(tls=True)``) the node speaks AMQP over TLS only and demands a
client certificate from the func-amqp CA: the certificate's common name is the login
(EXTERNAL), so every minion and overlord is its own broker user, confined by
:meth:`PrivateBroker.grant` to the queues and exchanges its role needs. The node's own
certificate is issued by the same CA for ``localhost`` and 127.0.0.1.

The node is started detached (it outlives the process that started it) and is found
again through its pid file and a small ports file, so any process with the same state
directory can query or stop it. Its AMQP port and its mode are kept across restarts, so
clients can reconnect to the same URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from func_amqp.config import Paths
from func_amqp.errors import BrokerError, ConfigError
from func_amqp.broker.definitions import definitions_json
from func_amqp.files import write_text_atomic
from func_amqp.protocol import names
from func_amqp.security.ca import CertificateAuthority
from func_amqp.security.tls import wants_tls
from func_amqp.transport import AMQP091_SCHEMES, AMQP10_SCHEMES
from func_amqp.security.keys import (
    KEY_MODE,
    PUBLIC_MODE,
    PkiError,
    cert_pem,
    check_issued_by,
    ensure_private_dir,
    generate_key,
    key_pem,
    load_certificate,
    load_private_key,
    same_public_key,
    write_atomic,
)

SERVER_PROGRAM = "rabbitmq-server"
CTL_PROGRAM = "rabbitmqctl"
INSTALL_HINT = "install it with 'apt-get install rabbitmq-server'"
# Debian installs the programs in sbin, which an ordinary user's PATH often lacks.
EXTRA_PROGRAM_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# Debian's sbin programs are a wrapper that only root or the rabbitmq user may run;
# other users must call the real script, which sits next to the wrapper's target.
SCRIPT_WRAPPER_NAME = "rabbitmq-script-wrapper"
# Run as root, the wrapper switches to this user: the node's files must be its own.
RABBITMQ_USER = "rabbitmq"

NODE_NAME_PREFIX = "func-amqp-"
NODE_HOST = "localhost"
NODE_HASH_LENGTH = 10
LISTEN_HOST = "127.0.0.1"
URL_TEMPLATE = "amqp://guest:guest@{host}:{port}/"
TLS_URL_TEMPLATE = "amqps://{host}:{port}/?auth=external"
MODE_PLAIN = "plain"
MODE_TLS = "tls"
# Both ranges sit below Linux's ephemeral ports (32768 and up), so outgoing
# connections never hold them, and avoid RabbitMQ's defaults (5672, 15672, 25672).
AMQP_PORT_RANGE = (21000, 24999)
DIST_PORT_RANGE = (26000, 29999)
PORT_PICK_ATTEMPTS = 200
# Erlang distribution listens on all interfaces unless told otherwise.
DIST_LOOPBACK_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"

CONFIG_BASENAME = "rabbitmq"  # RabbitMQ appends ".conf"
CONSUMER_TIMEOUT_MS = 7 * 24 * 3600 * 1000
"""A job is acknowledged when it has finished, so a build may hold its delivery for
hours: RabbitMQ's default (30 minutes) would close the builder's channel under it."""
ADVANCED_CONFIG_FILE = "advanced.config"
CONF_ENV_FILE = "rabbitmq-env.conf"
ENABLED_PLUGINS_FILE = "enabled_plugins"
FEATURE_FLAGS_FILE = "feature_flags"
PID_FILE = "pid"
PORTS_FILE = "ports.json"
LOCK_FILE = ".lock"
MNESIA_SUBDIR = "mnesia"
LOG_SUBDIR = "log"
CONSOLE_LOG_FILE = "console.log"

# TLS mode: the node's certificate, issued by the func-amqp CA, and the CA it trusts.
TLS_SUBDIR = "tls"
SERVER_KEY_FILE = "server.key"
SERVER_CERT_FILE = "server.crt"
TRUSTED_CA_FILE = "ca.crt"
SERVER_CN = NODE_HOST
SERVER_DNS_NAMES = (NODE_HOST,)
SERVER_IP_ADDRESSES = (LISTEN_HOST,)
SERVER_CERT_RENEWAL = timedelta(days=30)  # issue a new one when the old expires sooner
SSL_AUTH_PLUGIN = "rabbitmq_auth_mechanism_ssl"
AMQP10_PLUGIN = "rabbitmq_amqp1_0"
"""AMQP 1.0 on the same port, for the amqp10:// transport."""
DEFINITIONS_FILE = "definitions.json"
"""func-amqp's exchanges, imported after boot: AMQP 1.0 clients cannot declare them.
(Not ``load_definitions``: a node that loads definitions at boot makes no guest user.)"""
PLUGIN_LIST_RE = re.compile(r"\s*\[([a-z0-9_,\s]*)\]\s*\.\s*")
CA_INIT_COMMAND = "func-amqp ca --init"

# Broker users: one per certificate common name, confined by role.
VHOST = "/"
GUEST_USER = "guest"
ROLE_MINION = "minion"
ROLE_OVERLORD = "overlord"
ROLES = (ROLE_MINION, ROLE_OVERLORD)
# The default exchange ("") is authorised under this name.
DEFAULT_EXCHANGE = "amq.default"
# Queues declared without a name: the broker names them amq.gen-..., but aio-pika's
# robust channel names them amq_<uuid hex> itself, to declare them again on reconnect.
SERVER_NAMED_QUEUES = r"amq\.gen-.+"
CLIENT_NAMED_QUEUES = r"amq_[0-9a-f]{32}"
ANY = ".*"
NOTHING = "^$"
PASSWORD_BYTES = 32  # a throw-away password: add_user wants one, clear_password drops it
CTL_TIMEOUT = 60.0
ALREADY_EXISTS = ("already_exists", "already exists")
NO_SUCH_USER = ("no_such_user", "does not exist")

# epmd, Erlang's name server, shared by every node on the machine.
EPMD_PORT_ENV = "ERL_EPMD_PORT"
EPMD_DEFAULT_PORT = 4369
EPMD_PORT_PLEASE2_REQ = 122
EPMD_PORT2_RESP = 119

BEAM_PROGRAM = "beam"  # the Erlang VM's process name starts with this
# Started by the first node on the machine and shared by all of them: never ours alone.
SHARED_PROGRAMS = frozenset({"epmd"})
DEAD_STATES = frozenset({"Z", "X", "x"})

LOG_TAIL_LINES = 15
LOG_TAIL_BYTES = 64 * 1024
POLL_INTERVAL = 0.25
CTL_GRACE = 10.0  # extra seconds a rabbitmqctl call may take beyond its own timeout
TERM_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
SETTLE_GRACE = 5.0  # seconds the wrappers get to exit after the VM has stopped
CONNECT_TIMEOUT = 1.0

# Launcher processes started by this process, per directory, so they can be reaped.
_launched: dict[Path, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class BrokerStatus:
    """What :meth:`PrivateBroker.status` found."""

    running: bool
    url: str | None
    node: str
    pid: int | None
    directory: Path
    tls: bool = False
    """The mode it runs in, or last ran in when stopped."""

    @property
    def mode(self) -> str:
        return _mode(self.tls)


@dataclass(frozen=True)
class UserPermissions:
    """What ``rabbitmqctl set_permissions`` and ``set_topic_permissions`` get for a user.

    Each is a regex over exchange and queue names (routing keys for the topic pair);
    see :func:`user_permissions`.
    """

    configure: str
    write: str
    read: str
    event_write: str
    """Routing keys the user may publish to the events exchange with."""
    event_read: str
    """Routing keys the user may bind to the events exchange with."""


@dataclass(frozen=True)
class _NodeState:
    """What the ports file remembers across restarts."""

    amqp: int
    dist: int
    tls: bool = False
    guest_locked: bool = False
    """Whether ``guest`` was stripped of its permissions for TLS mode (see _settle_guest)."""

    @property
    def url(self) -> str:
        template = TLS_URL_TEMPLATE if self.tls else URL_TEMPLATE
        return template.format(host=LISTEN_HOST, port=self.amqp)


class PrivateBroker:
    """One private RabbitMQ node under ``paths.private_broker_dir``."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.directory = paths.private_broker_dir
        # Where each log ended before the last launch, so errors quote only new lines.
        self._log_offsets: dict[Path, int] = {}
        digest = hashlib.sha256(str(self.directory.absolute()).encode()).hexdigest()
        self.node = f"{NODE_NAME_PREFIX}{digest[:NODE_HASH_LENGTH]}@{NODE_HOST}"

    # --- public API -------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        """The node's AMQP URL, or None when it is not running."""
        return self.status().url

    @property
    def log_file(self) -> Path:
        """The node's main log, the first place to look when it misbehaves."""
        return self.directory / LOG_SUBDIR / f"{self.node}.log"

    def status(self) -> BrokerStatus:
        """Whether the node runs and accepts connections; cheap, no rabbitmqctl."""
        pid = self._live_pid()
        state = self._load_state()
        running = pid is not None and state is not None and _accepts(state.amqp)
        return BrokerStatus(
            running=running,
            url=state.url if running and state is not None else None,
            node=self.node,
            pid=pid,
            directory=self.directory,
            tls=state is not None and state.tls,
        )

    def start(self, timeout: float = 60.0, *, tls: bool | None = None) -> str:
        """Start the node unless it runs, wait until it is up, and return its URL.

        ``tls`` chooses TLS-only mode with client certificates (True) or plain AMQP
        with ``guest`` (False); None keeps the mode the node last ran in. Changing the
        mode of a running node is refused: clients would lose their URL under them.
        """
        deadline = time.monotonic() + timeout
        server = _find_program(SERVER_PROGRAM)
        ctl = _find_program(CTL_PROGRAM)
        with self._locked():
            current = self.status()
            want_tls = current.tls if tls is None else tls
            alive = current.pid is not None or self._find_node_pid() is not None
            if alive and want_tls != current.tls:
                raise BrokerError(
                    f"the private broker runs in {current.mode} mode; stop it first "
                    f"('func-amqp broker stop') to start it in {_mode(want_tls)} mode"
                )
            if current.running and current.url is not None:
                self._write_url(current.url)
                return current.url
            if alive:
                # Alive but not listening: booting from an interrupted start, or wedged.
                self._await_boot(ctl, None, deadline, timeout)
                self._settle_guest(ctl, deadline)
                self._import_definitions(ctl, deadline)
            else:
                self._launch(server, ctl, deadline, timeout, want_tls)
            state = self._load_state()
            if state is None:
                raise BrokerError(f"{self.directory / PORTS_FILE} vanished during start")
            self._write_url(state.url)
            return state.url

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the node; return False if it was not running."""
        deadline = time.monotonic() + timeout
        if not self.directory.is_dir():
            return False
        with self._locked():
            pid = self._live_pid() or self._find_node_pid()
            if pid is not None:
                self._graceful_stop(pid, deadline)
            self._reap_launcher()
            self.paths.private_broker_url_file.unlink(missing_ok=True)
            (self.directory / PID_FILE).unlink(missing_ok=True)
            return pid is not None

    def grant(self, cn: str, role: str) -> None:
        """Let the holder of the certificate named ``cn`` log in, confined to ``role``.

        In TLS mode a client logs in as its certificate's common name, so this is what
        admits a minion or an overlord; :func:`user_permissions` says what each may do.
        Granting again replaces the role.
        """
        permissions = user_permissions(cn, role)
        _refuse_guest(cn)
        with self._locked():
            ctl = self._running_ctl()
            # The password goes through stdin, never the command line others can read.
            password = secrets.token_urlsafe(PASSWORD_BYTES)
            self._ctl_checked(ctl, ["add_user", cn], feed=password, tolerate=ALREADY_EXISTS)
            self._ctl_checked(ctl, ["clear_password", cn])
            self._ctl_checked(
                ctl,
                ["set_permissions", "-p", VHOST, cn,
                 permissions.configure, permissions.write, permissions.read],
            )
            self._ctl_checked(
                ctl,
                ["set_topic_permissions", "-p", VHOST, cn, names.EVENTS_EXCHANGE,
                 permissions.event_write, permissions.event_read],
            )

    def revoke_user(self, cn: str) -> bool:
        """Remove ``cn``'s broker user; False if it had none.

        RabbitMQ closes the user's open connections with it. The certificate stays
        valid for signing until the CA revokes it; this only shuts ``cn`` out of the
        broker.
        """
        if not names.valid_minion_name(cn):
            raise BrokerError(f"not a valid certificate name: {cn!r}")
        _refuse_guest(cn)
        with self._locked():
            ctl = self._running_ctl()
            return self._ctl_checked(ctl, ["delete_user", cn], tolerate=NO_SUCH_USER)

    # --- starting ---------------------------------------------------------------------

    def _launch(self, server: str, ctl: str, deadline: float, timeout: float, tls: bool) -> None:
        self._await_name_released(deadline)
        self._prepare_directory()
        if tls:
            self._ensure_server_certificate()
        state = self._choose_ports(tls)
        self._save_state(state)
        self._write_config(state)
        self.paths.private_broker_url_file.unlink(missing_ok=True)
        (self.directory / PID_FILE).unlink(missing_ok=True)
        console = self.directory / CONSOLE_LOG_FILE
        console.touch()
        self._log_offsets = {path: _size(path) for path in (self.log_file, console)}
        self._give_to_rabbitmq_user()
        with console.open("ab") as out:
            proc = subprocess.Popen(
                [server],
                env=self._server_env(state),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _launched[self.directory] = proc
        try:
            self._await_boot(ctl, proc, deadline, timeout)
            self._settle_guest(ctl, deadline)
            self._import_definitions(ctl, deadline)
        except BaseException:
            self._kill_half_started()
            raise

    def _await_boot(
        self,
        ctl: str,
        proc: subprocess.Popen[bytes] | None,
        deadline: float,
        timeout: float,
    ) -> None:
        """Poll ``rabbitmqctl await_startup`` until the node is up or gives up."""
        while True:
            if proc is not None and proc.poll() is not None:
                raise self._boot_error("exited during boot")
            if proc is None and (self._live_pid() or self._find_node_pid()) is None:
                raise self._boot_error("exited during boot")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._boot_error(f"did not start within {timeout:g} s")
            if self._ctl(ctl, ["await_startup"], remaining) == 0:
                state = self._load_state()
                # A bare TCP connect: enough to know the listener is up, in either mode.
                if state is not None and _accepts(state.amqp):
                    return
            time.sleep(POLL_INTERVAL)

    def _boot_error(self, what: str) -> BrokerError:
        return BrokerError(
            f"the private RabbitMQ node {self.node} {what}. Its log is {self.log_file}"
            f"{self._log_tails()}"
        )

    def _log_tails(self) -> str:
        """The last lines the node wrote, to its log and to its console, this boot."""
        parts = []
        for path in (self.log_file, self.directory / CONSOLE_LOG_FILE):
            try:
                with path.open("rb") as fh:
                    end = fh.seek(0, os.SEEK_END)
                    fh.seek(max(self._log_offsets.get(path, 0), end - LOG_TAIL_BYTES))
                    text = fh.read().decode("utf-8", errors="replace")
            except OSError:
                continue
            lines = [line for line in text.splitlines() if line.strip()]
            if lines:
                tail = "\n".join(lines[-LOG_TAIL_LINES:])
                parts.append(f"; last lines of {path.name}:\n{tail}")
        return "".join(parts) or " (nothing was logged)"

    def _kill_half_started(self) -> None:
        """Leave nothing behind after a failed boot: the VM, its wrappers, the launcher."""
        pid = self._live_pid() or self._find_node_pid()
        if pid is not None:
            _terminate(pid, TERM_GRACE)
        self._sweep(patience=0.0)
        self._reap_launcher()
        (self.directory / PID_FILE).unlink(missing_ok=True)

    def _prepare_directory(self) -> None:
        for sub in (MNESIA_SUBDIR, LOG_SUBDIR):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)

    def _write_config(self, state: _NodeState) -> None:
        if state.tls:
            tls = self.directory.absolute() / TLS_SUBDIR
            conf = (
                "listeners.tcp = none\n"
                f"listeners.ssl.default = {LISTEN_HOST}:{state.amqp}\n"
                f"ssl_options.cacertfile = {tls / TRUSTED_CA_FILE}\n"
                f"ssl_options.certfile = {tls / SERVER_CERT_FILE}\n"
                f"ssl_options.keyfile = {tls / SERVER_KEY_FILE}\n"
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n"
                "auth_mechanisms.1 = EXTERNAL\n"
                "ssl_cert_login_from = common_name\n"
            )
        else:
            conf = (
                f"listeners.tcp.default = {LISTEN_HOST}:{state.amqp}\n"
            )
        _write_atomic(self.directory / DEFINITIONS_FILE, definitions_json())
        conf += f"loopback_users.guest = true\nconsumer_timeout = {CONSUMER_TIMEOUT_MS}\n"
        _write_atomic(self.directory / f"{CONFIG_BASENAME}.conf", conf)
        plugins = self.directory / ENABLED_PLUGINS_FILE
        if not plugins.exists():
            # An explicit empty list, so the system's enabled_plugins is not used.
            _write_atomic(plugins, "[].\n")
        self._enable_plugin(AMQP10_PLUGIN)
        if state.tls:
            self._enable_plugin(SSL_AUTH_PLUGIN)

    def _enable_plugin(self, plugin: str) -> None:
        """Add ``plugin`` to the enabled_plugins list, keeping the others there.

        A file this cannot read is left alone: the node then reports it at boot.
        """
        path = self.directory / ENABLED_PLUGINS_FILE
        match = PLUGIN_LIST_RE.fullmatch(path.read_text(encoding="utf-8"))
        if match is None:
            return
        plugins = [p.strip() for p in match.group(1).split(",") if p.strip()]
        if plugin not in plugins:
            _write_atomic(path, f"[{','.join([*plugins, plugin])}].\n")

    def _ensure_server_certificate(self) -> None:
        """The node's key and certificate from the func-amqp CA, issued once and reused."""
        ca = CertificateAuthority(self.paths.ca_dir)
        if not ca.exists():
            raise BrokerError(
                f"TLS mode needs the certificate authority in {ca.directory}, which does "
                f"not exist; create it with '{CA_INIT_COMMAND}'"
            )
        tls = self.directory / TLS_SUBDIR
        try:
            ca_cert = ca.ca_certificate()
            if self._server_certificate_usable(ca, ca_cert):
                return
            ensure_private_dir(tls)
            key = generate_key()
            cert = ca.issue_server(SERVER_CN, key.public_key(), SERVER_DNS_NAMES, SERVER_IP_ADDRESSES)
            write_atomic(tls / SERVER_KEY_FILE, key_pem(key), KEY_MODE)
            write_atomic(tls / SERVER_CERT_FILE, cert_pem(cert), PUBLIC_MODE)
            write_atomic(tls / TRUSTED_CA_FILE, cert_pem(ca_cert), PUBLIC_MODE)
        except PkiError as exc:
            raise BrokerError(f"cannot certify the private broker: {exc}") from None

    def _server_certificate_usable(self, ca: CertificateAuthority, ca_cert: x509.Certificate) -> bool:
        """Whether the stored key and certificate fit, come from this CA and stay valid."""
        tls = self.directory / TLS_SUBDIR
        try:
            key = load_private_key(tls / SERVER_KEY_FILE)
            cert = load_certificate(tls / SERVER_CERT_FILE)
            trusted = load_certificate(tls / TRUSTED_CA_FILE)
            check_issued_by(cert, ca_cert)
            alt_names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, PkiError, x509.ExtensionNotFound):
            return False
        names_wanted = {*SERVER_DNS_NAMES, *SERVER_IP_ADDRESSES}
        names_held = {*alt_names.get_values_for_type(x509.DNSName)}
        names_held |= {str(ip) for ip in alt_names.get_values_for_type(x509.IPAddress)}
        return (
            trusted == ca_cert
            and same_public_key(cert.public_key(), key)
            and names_wanted <= names_held
            and cert.not_valid_after_utc - datetime.now(timezone.utc) > SERVER_CERT_RENEWAL
            and not ca.is_revoked(cert)
        )

    def _import_definitions(self, ctl: str, deadline: float) -> None:
        """Declare func-amqp's exchanges, for AMQP 1.0 clients that cannot."""
        path = self.directory.absolute() / DEFINITIONS_FILE
        remaining = max(deadline - time.monotonic(), CTL_GRACE)
        self._ctl_checked(ctl, ["import_definitions", str(path)], timeout=remaining)

    def _settle_guest(self, ctl: str, deadline: float) -> None:
        """Strip ``guest`` of its permissions in TLS mode, and give them back after.

        In TLS mode the login is the certificate's common name, and ``guest`` is a host
        name the CA would certify: such a certificate must not log in as the node's
        all-powerful default user.
        """
        state = self._load_state()
        if state is None or state.tls == state.guest_locked:
            return
        remaining = max(deadline - time.monotonic(), CTL_GRACE)
        if state.tls:
            # No permissions at all, not "^$": any entry would still admit it to the vhost.
            args = ["clear_permissions", "-p", VHOST, GUEST_USER]
        else:
            args = ["set_permissions", "-p", VHOST, GUEST_USER, ANY, ANY, ANY]
        self._ctl_checked(ctl, args, tolerate=NO_SUCH_USER, timeout=remaining)
        self._save_state(dataclasses.replace(state, guest_locked=state.tls))

    def _server_env(self, state: _NodeState) -> dict[str, str]:
        """The environment that describes this node, and only this node."""
        d = self.directory
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        if not state.tls:
            # These would add a plain listener next to the TLS one.
            env.update(RABBITMQ_NODE_IP_ADDRESS=LISTEN_HOST, RABBITMQ_NODE_PORT=str(state.amqp))
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_DIST_PORT=str(state.dist),
            RABBITMQ_MNESIA_BASE=str(d / MNESIA_SUBDIR),
            RABBITMQ_LOG_BASE=str(d / LOG_SUBDIR),
            RABBITMQ_CONFIG_FILE=str(d / CONFIG_BASENAME),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / ADVANCED_CONFIG_FILE),
            RABBITMQ_CONF_ENV_FILE=str(d / CONF_ENV_FILE),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / ENABLED_PLUGINS_FILE),
            RABBITMQ_FEATURE_FLAGS_FILE=str(d / FEATURE_FLAGS_FILE),
            RABBITMQ_PID_FILE=str(d / PID_FILE),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=DIST_LOOPBACK_ARGS,
        )
        return env

    def _give_to_rabbitmq_user(self) -> None:
        """As root the node runs as ``rabbitmq``: it must own and reach its directory."""
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam(RABBITMQ_USER)
        except KeyError:
            return
        for parent in self.directory.absolute().parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
        os.lchown(self.directory, user.pw_uid, user.pw_gid)
        for root, dirs, files in os.walk(self.directory):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)

    def _write_url(self, url: str) -> None:
        _write_atomic(self.paths.private_broker_url_file, url + "\n")

    # --- ports and mode ---------------------------------------------------------------

    def _choose_ports(self, tls: bool) -> _NodeState:
        """The previous ports when still free (clients keep their URL), else new ones."""
        old = self._load_state()
        amqp = old.amqp if old is not None and _port_free(old.amqp) else None
        dist = old.dist if old is not None and _port_free(old.dist) else None
        if amqp is None:
            amqp = _pick_port(AMQP_PORT_RANGE, exclude=dist)
        if dist is None or dist == amqp:
            dist = _pick_port(DIST_PORT_RANGE, exclude=amqp)
        guest_locked = old is not None and old.guest_locked
        return _NodeState(amqp=amqp, dist=dist, tls=tls, guest_locked=guest_locked)

    def _load_state(self) -> _NodeState | None:
        try:
            data = json.loads((self.directory / PORTS_FILE).read_text(encoding="utf-8"))
            return _NodeState(
                amqp=int(data["amqp"]),
                dist=int(data["dist"]),
                tls=data.get("tls") is True,
                guest_locked=data.get("guest_locked") is True,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _save_state(self, state: _NodeState) -> None:
        _write_atomic(self.directory / PORTS_FILE, json.dumps(dataclasses.asdict(state)))

    # --- processes --------------------------------------------------------------------

    def _live_pid(self) -> int | None:
        """The pid in the pid file if that process is a live Erlang VM."""
        try:
            pid = int((self.directory / PID_FILE).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None
        return pid if _is_live_beam(pid) else None

    def _find_node_pid(self) -> int | None:
        """This node's VM found by its environment, for when the pid file is missing."""
        return next((pid for pid in self._node_processes() if _is_live_beam(pid)), None)

    def _node_processes(self) -> list[int]:
        """Live processes started with this node's environment, shared daemons aside."""
        marker = f"RABBITMQ_NODENAME={self.node}".encode()
        found = []
        for pid in _proc_entries():
            proc = Path(f"/proc/{pid}")
            try:
                if (proc / "comm").read_text(encoding="utf-8").strip() in SHARED_PROGRAMS:
                    continue
                if marker not in (proc / "environ").read_bytes().split(b"\0"):
                    continue
            except OSError:
                continue
            state = _process_state(pid)
            if state is not None and state not in DEAD_STATES:
                found.append(pid)
        return found

    def _graceful_stop(self, pid: int, deadline: float) -> None:
        """``rabbitmqctl stop``, then signals to the node's own pid if it lingers."""
        try:
            ctl: str | None = _find_program(CTL_PROGRAM)
        except BrokerError:
            ctl = None
        remaining = deadline - time.monotonic()
        asked = False
        if ctl is not None and remaining > 0:
            asked = self._ctl(ctl, ["stop"], remaining) == 0
        # Unasked, SIGTERM at once: the VM treats it as a request for a clean shutdown.
        patience = max(0.0, deadline - time.monotonic()) if asked else 0.0
        if not _wait_gone(pid, patience):
            _terminate(pid, TERM_GRACE)
        self._sweep(patience=SETTLE_GRACE)
        self._await_name_released(time.monotonic() + SETTLE_GRACE)

    def _await_name_released(self, deadline: float) -> None:
        """Wait until epmd forgets the node's name, which lags behind the VM's exit.

        A node refuses to boot while its name is still registered.
        """
        short_name = self.node.partition("@")[0]
        while _epmd_knows(short_name) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)

    def _sweep(self, patience: float) -> None:
        """Give the node's other processes ``patience`` seconds to exit, then kill them.

        Every process of the node carries its ``RABBITMQ_NODENAME`` in its environment
        (the launcher, the ``su`` and shell wrappers, the VM and its helpers), so they
        are found by that even before the pid file exists.
        """
        kill_from = time.monotonic() + patience
        give_up = kill_from + TERM_GRACE
        while pids := self._node_processes():
            now = time.monotonic()
            if now >= give_up:
                return
            if now >= kill_from:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(POLL_INTERVAL)

    def _reap_launcher(self) -> None:
        proc = _launched.pop(self.directory, None)
        if proc is None:
            return
        try:
            proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _ctl(self, ctl: str, args: list[str], timeout: float) -> int:
        """Run ``rabbitmqctl`` against this node, bounded by ``timeout`` seconds."""
        return self._ctl_run(ctl, args, timeout)[0]

    def _ctl_run(
        self, ctl: str, args: list[str], timeout: float, feed: str | None = None
    ) -> tuple[int, str]:
        """``rabbitmqctl``'s exit status (-1: timed out) and what it printed."""
        seconds = max(1, int(timeout))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        try:
            done = subprocess.run(
                [ctl, "-n", self.node, "-q", "-t", str(seconds), *args],
                env=env,
                stdin=subprocess.DEVNULL if feed is None else None,
                input=None if feed is None else feed.encode(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=seconds + CTL_GRACE,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return -1, f"no answer within {seconds + CTL_GRACE:g} s"
        return done.returncode, done.stdout.decode("utf-8", errors="replace").strip()

    def _ctl_checked(
        self,
        ctl: str,
        args: list[str],
        *,
        feed: str | None = None,
        tolerate: tuple[str, ...] = (),
        timeout: float = CTL_TIMEOUT,
    ) -> bool:
        """Run ``rabbitmqctl``; False when it failed in a way ``tolerate`` names.

        Any other failure is a BrokerError quoting the tool's own message.
        """
        status, output = self._ctl_run(ctl, args, timeout, feed)
        if status == 0:
            return True
        if status > 0 and any(marker in output for marker in tolerate):
            return False
        command = " ".join(args[:2])
        raise BrokerError(
            f"'{CTL_PROGRAM} {command}' failed on the private broker {self.node}: "
            f"{output or f'exit status {status}'}"
        )

    def _running_ctl(self) -> str:
        """``rabbitmqctl``, once it is known the node runs (it answers nothing else)."""
        ctl = _find_program(CTL_PROGRAM)
        if not self.status().running:
            raise BrokerError(
                "the private broker is not running; start it with 'func-amqp broker start --tls'"
            )
        return ctl

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start and stop across processes sharing the directory.

        File-system failures inside (permissions, a full disk) become a BrokerError
        that names the directory, rather than a traceback.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / LOCK_FILE).open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError as exc:
            raise BrokerError(
                f"cannot manage the private broker in {self.directory}: {exc}"
            ) from exc


# --- helpers ----------------------------------------------------------------------------


def _find_program(name: str) -> str:
    """The program to run for ``name``, or a BrokerError saying what to install."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *EXTRA_PROGRAM_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        raise BrokerError(
            f"'{name}' was not found, so the private broker cannot be managed: "
            f"{INSTALL_HINT}, or point FUNC_AMQP_URL at a running broker"
        )
    real = Path(found).resolve()
    if os.geteuid() != 0 and real.name == SCRIPT_WRAPPER_NAME:
        script = real.parent / name
        if os.access(script, os.X_OK):
            return str(script)
    return found


def _mode(tls: bool) -> str:
    return MODE_TLS if tls else MODE_PLAIN


def _refuse_guest(cn: str) -> None:
    if cn == GUEST_USER:
        raise BrokerError(
            f"'{GUEST_USER}' is RabbitMQ's default account, which the private broker "
            "keeps for plain mode; give the host another name"
        )


def _one_of(*patterns: str) -> str:
    """A regex matching exactly one of ``patterns``, as RabbitMQ matches whole names."""
    return f"^(?:{'|'.join(patterns)})$"


def user_permissions(cn: str, role: str) -> UserPermissions:
    """What the broker user of certificate ``cn`` may touch, from what its role declares.

    RabbitMQ checks *configure* on queue.declare and exchange.declare, *write* on
    basic.publish (to the exchange; "" is amq.default), on queue.bind (to the queue)
    and on a queue's dead-letter exchange, *read* on basic.consume (the queue), on
    queue.bind (the exchange) and on declaring a queue with a dead-letter exchange.
    A minion touches its two exclusive queues, its job queue, pool queues, the
    dead-letter pair, reply queues and the shared exchanges; it replies through the
    default exchange, publishes job events and sends heartbeats under its own routing
    key only. An overlord declares its own reply queues, unnamed event queues and job
    owners' event queues (any owner: owners are not certificate names), sends requests
    and jobs, and reads events.
    """
    if not names.valid_minion_name(cn):
        raise BrokerError(f"not a valid certificate name: {cn!r}")
    esc = re.escape
    replies = esc(names.REPLY_QUEUE_PREFIX) + ".+"
    minions, broadcast, events = (
        esc(names.MINIONS_EXCHANGE), esc(names.BROADCAST_EXCHANGE), esc(names.EVENTS_EXCHANGE)
    )
    jobs, pools, job_events, cancels = (
        esc(names.JOBS_EXCHANGE), esc(names.POOLS_EXCHANGE), esc(names.JOB_EVENTS_EXCHANGE), esc(names.CANCELS_EXCHANGE)
    )
    job_exchanges = (jobs, pools, job_events, cancels)
    # AMQP 1.0 (RabbitMQ's plugin): consumers get server-named queues bound by the
    # broker, and replies travel through amq.direct
    amqp10_replies = esc(names.AMQP10_REPLY_EXCHANGE)
    if role == ROLE_MINION:
        own = (
            esc(names.minion_queue(cn)), esc(names.minion_presence_queue(cn)), esc(names.job_queue(cn)), esc(names.cancel_queue(cn))
        )
        pool_queues = esc(names.POOL_QUEUE_PREFIX) + ".+"
        dead_letter = (esc(names.DEAD_LETTER_EXCHANGE), esc(names.DEAD_LETTER_QUEUE))
        return UserPermissions(
            configure=_one_of(*own, pool_queues, replies, SERVER_NAMED_QUEUES, minions, broadcast, events, *job_exchanges, *dead_letter),
            write=_one_of(*own, pool_queues, replies, SERVER_NAMED_QUEUES, events, job_events, *dead_letter, esc(DEFAULT_EXCHANGE), amqp10_replies),
            read=_one_of(*own, pool_queues, replies, SERVER_NAMED_QUEUES, minions, broadcast, jobs, pools, job_events, cancels, esc(names.DEAD_LETTER_EXCHANGE), amqp10_replies),
            event_write=_one_of(esc(names.heartbeat_key(cn))),
            event_read=NOTHING,
        )
    if role == ROLE_OVERLORD:
        unnamed = (SERVER_NAMED_QUEUES, CLIENT_NAMED_QUEUES)
        owners = esc(names.JOB_EVENTS_QUEUE_PREFIX) + ".+"
        return UserPermissions(
            configure=_one_of(replies, *unnamed, owners, minions, broadcast, events, *job_exchanges),
            # the dead-letter exchange: the job events exchange names it as its alternate
            write=_one_of(replies, *unnamed, owners, minions, broadcast, jobs, pools, cancels, esc(names.DEAD_LETTER_EXCHANGE)),
            read=_one_of(replies, *unnamed, owners, events, job_events, amqp10_replies),
            event_write=NOTHING,
            event_read=ANY,
        )
    raise BrokerError(f"unknown broker role {role!r}; use one of {', '.join(ROLES)}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _epmd_knows(short_name: str) -> bool:
    """Whether epmd has a node of that name registered (PORT_PLEASE2_REQ)."""
    try:
        port = int(os.environ.get(EPMD_PORT_ENV) or EPMD_DEFAULT_PORT)
    except ValueError:
        port = EPMD_DEFAULT_PORT
    request = bytes([EPMD_PORT_PLEASE2_REQ]) + short_name.encode()
    try:
        with socket.create_connection((LISTEN_HOST, port), timeout=CONNECT_TIMEOUT) as sock:
            sock.sendall(struct.pack(">H", len(request)) + request)
            reply = sock.recv(2)
    except OSError:
        return False
    return len(reply) == 2 and reply[0] == EPMD_PORT2_RESP and reply[1] == 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` (with SO_REUSEADDR, as Erlang does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LISTEN_HOST, port))
        except OSError:
            return False
    return True


def _pick_port(bounds: tuple[int, int], exclude: int | None) -> int:
    rng = random.SystemRandom()
    for _ in range(PORT_PICK_ATTEMPTS):
        port = rng.randint(*bounds)
        if port != exclude and _port_free(port):
            return port
    raise BrokerError(f"no free port on {LISTEN_HOST} between {bounds[0]} and {bounds[1]}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _proc_entries() -> Iterator[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def _process_state(pid: int) -> str | None:
    """The one-letter state from ``/proc/PID/stat`` (None: no such process)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = stat_line.rpartition(")")[2].split()
    return fields[0] if fields else None


def _is_live_beam(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) Erlang VM; guards against reused pids."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    state = _process_state(pid)
    return comm.startswith(BEAM_PROGRAM) and state is not None and state not in DEAD_STATES


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_live_beam(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _terminate(pid: int, grace: float) -> None:
    """SIGTERM the VM (Erlang then shuts down cleanly), SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return
            raise BrokerError(
                f"cannot signal the broker process {pid}: {exc.strerror}"
            ) from None
        if _wait_gone(pid, grace):
            return


def amqp10_url(url: str) -> str:
    """The private node's URL for the AMQP 1.0 transport: a RabbitMQ node with its AMQP
    1.0 plugin speaks both protocols on one port.

    Over TLS the host becomes ``localhost``: Proton checks the broker's certificate
    against DNS names only, and the node's certificate names ``localhost`` (and
    127.0.0.1, which Proton cannot check). EXTERNAL login is implied, so the query goes.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    plain, tls = AMQP10_SCHEMES
    if scheme not in AMQP091_SCHEMES:
        raise ConfigError(f"no AMQP 1.0 URL for {url!r}: only amqp:// and amqps:// URLs map to amqp10://")
    if wants_tls(url):
        netloc = parts.netloc.replace(LISTEN_HOST, NODE_HOST)
        return parts._replace(scheme=tls, netloc=netloc, query="").geturl()
    return parts._replace(scheme=plain).geturl()
