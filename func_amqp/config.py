"""Configuration: directories, INI files and environment overrides, declared once.

Files are func's format: INI with a ``[main]`` section; a missing file means defaults.
Booleans accept 0/no/false/off and 1/yes/true/on; lists split on commas, whitespace
and newlines. Each setting is a dataclass field below: its name is the INI key, its
default the default, its annotation the parser.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from func_amqp.errors import ConfigError
from func_amqp.protocol.names import MAX_TAGS, pool_key, valid_tag

ENV_CONFIG_DIR = "FUNC_AMQP_CONFIG_DIR"
ENV_STATE_DIR = "FUNC_AMQP_STATE_DIR"
ENV_BROKER_URL = "FUNC_AMQP_URL"
ENV_JOB_OWNER = "FUNC_AMQP_JOB_OWNER"
"""Whose event queue jobs report to, over ``job_owner`` in overlord.conf (docs/jobs.md)."""

MINION_CONF = "minion.conf"
OVERLORD_CONF = "overlord.conf"
GROUPS_FILE = "groups"
MODULE_CONF_DIR = "modules"
SECTION = "main"

ROOT_CONFIG_DIR = Path("/etc/func-amqp")
ROOT_STATE_DIR = Path("/var/lib/func-amqp")
ROOT_AUDIT_LOG = Path("/var/log/func-amqp/audit.log")
PRIVATE_BROKER_SUBDIR = "broker"
PRIVATE_BROKER_URL_FILE = "url"

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}
_LIST_SPLIT = re.compile(r"[,\s]+")


def _is_root() -> bool:
    return os.geteuid() == 0


def default_config_dir() -> Path:
    """``FUNC_AMQP_CONFIG_DIR``, else /etc/func-amqp for root, else the XDG config dir."""
    if os.environ.get(ENV_CONFIG_DIR):
        return Path(os.environ[ENV_CONFIG_DIR])
    if _is_root():
        return ROOT_CONFIG_DIR
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "func-amqp"


def default_state_dir() -> Path:
    """``FUNC_AMQP_STATE_DIR``, else /var/lib/func-amqp for root, else the XDG state dir."""
    if os.environ.get(ENV_STATE_DIR):
        return Path(os.environ[ENV_STATE_DIR])
    if _is_root():
        return ROOT_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "func-amqp"


@dataclass(frozen=True)
class Paths:
    """Where configuration is read and state is kept."""

    config_dir: Path
    state_dir: Path

    @classmethod
    def resolve(cls, config_dir: str | os.PathLike[str] | None = None) -> "Paths":
        """Paths for a ``-c/--conf DIR`` argument (None: the defaults)."""
        conf = Path(config_dir) if config_dir else default_config_dir()
        return cls(config_dir=conf, state_dir=default_state_dir())

    @property
    def minion_conf(self) -> Path:
        return self.config_dir / MINION_CONF

    @property
    def overlord_conf(self) -> Path:
        return self.config_dir / OVERLORD_CONF

    @property
    def groups_file(self) -> Path:
        return self.config_dir / GROUPS_FILE

    def module_conf(self, class_name: str) -> Path:
        """Per-module options file, func's ``modules/<ClassName>.conf``."""
        return self.config_dir / MODULE_CONF_DIR / f"{class_name}.conf"

    @property
    def private_broker_dir(self) -> Path:
        return self.state_dir / PRIVATE_BROKER_SUBDIR

    @property
    def private_broker_url_file(self) -> Path:
        return self.private_broker_dir / PRIVATE_BROKER_URL_FILE

    @property
    def ca_dir(self) -> Path:
        """The certificate authority's key, certificate, requests and signed certificates."""
        return self.state_dir / "ca"

    @property
    def pki_dir(self) -> Path:
        """This host's own key, certificate and the CA's certificate (certmaster's cert_dir)."""
        return self.state_dir / "pki"

    @property
    def audit_log(self) -> Path:
        """One line per request a minion receives (docs/security.md)."""
        return ROOT_AUDIT_LOG if _is_root() else self.state_dir / "audit.log"

    @property
    def acl_dir(self) -> Path:
        """func's minion-acl.d: ``*.acl`` files granting certificates methods."""
        return self.config_dir / "minion-acl.d"

    def job_ledger(self, minion: str) -> Path:
        """The jobs minion ``minion`` has started and how they ended (its idempotency keys)."""
        return self.state_dir / "job-ledgers" / f"{minion}.jsonl"

    @property
    def job_store_dir(self) -> Path:
        """The overlord's record of the jobs it submitted, one file each (docs/jobs.md)."""
        return self.state_dir / "jobs"

    @property
    def minion_directory_file(self) -> Path:
        """The overlord's record of minions it has seen (see docs/architecture.md)."""
        return self.state_dir / "minions.json"


# --- parsing --------------------------------------------------------------------------


def parse_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected yes/no, true/false, on/off or 1/0, got {value!r}")


def parse_list(value: str) -> tuple[str, ...]:
    return tuple(item for item in _LIST_SPLIT.split(value.strip()) if item)


_PARSERS: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": parse_bool,
    "tuple[str, ...]": parse_list,
}

C = TypeVar("C", bound="_Section")


@dataclass(frozen=True)
class _Section:
    """Base of the per-file settings classes: parses its own INI ``[main]`` section."""

    @classmethod
    def from_mapping(cls: type[C], values: dict[str, str], source: str = "") -> C:
        """Build from raw strings; unknown keys are ignored as func ignored them."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            f = known.get(key)
            if f is None:
                continue
            parser = _PARSERS[str(f.type)]
            try:
                value = parser(raw)
            except ValueError as exc:
                where = f" in {source}" if source else ""
                raise ConfigError(
                    f"invalid value for '{key}'{where}: {exc}. Fix or remove the line."
                ) from None
            kwargs[key] = value
        obj = cls(**kwargs)
        obj.validate(source)
        return obj

    @classmethod
    def load(cls: type[C], path: Path) -> C:
        """Read ``path``'s ``[main]`` section; a missing file gives the defaults."""
        try:
            missing = not path.exists()
        except OSError as exc:  # e.g. a directory on the way that may not be searched
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        if missing:
            return cls()
        return cls.from_mapping(read_section(path), str(path))

    def validate(self, source: str) -> None:
        """Range checks beyond parsing; raise :class:`ConfigError`."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("positive") and not (value > 0 and math.isfinite(value)):
                where = f" in {source}" if source else ""
                raise ConfigError(f"'{f.name}'{where} must be a finite number greater than 0, got {value}")


def read_section(path: Path, section: str = SECTION) -> dict[str, str]:
    """The raw key/values of one INI section, with errors a user can act on."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"cannot parse {path}: {first}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if not parser.has_section(section):
        return {}
    return dict(parser.items(section))


def _positive(default: Any) -> Any:
    return field(default=default, metadata={"positive": True})


@dataclass(frozen=True)
class MinionConfig(_Section):
    """minion.conf: func's keys where they still mean something, plus the broker's."""

    log_level: str = "INFO"
    minion_name: str = ""
    broker_url: str = ""
    module_list: tuple[str, ...] = ()
    module_dirs: tuple[str, ...] = ()
    max_concurrent_calls: int = _positive(16)
    heartbeat_interval: float = _positive(30.0)
    max_message_bytes: int = _positive(16 * 1024 * 1024)
    # security (docs/security.md); func's names where func had the setting
    require_signatures: bool = True
    acl_dir: str = ""
    certmaster_overrides_acls: bool = True
    audit_log: str = ""
    key_file: str = ""
    cert_file: str = ""
    ca_file: str = ""
    crl_location: str = ""
    certmaster: str = "certmaster"
    certmaster_poll_interval: float = _positive(10.0)
    crl_refresh_interval: float = _positive(300.0)
    # durable jobs and builder pools (docs/jobs.md)
    jobs: bool = True
    pools: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def validate(self, source: str) -> None:
        super().validate(source)
        tags = self.tag_map
        for pool in self.pool_slots:
            try:
                pool_key(pool, tags)  # the longest of the member's pool queue names
            except ValueError as exc:
                raise ConfigError(f"{exc} (in {source or 'minion.conf'})") from None

    @property
    def pool_slots(self) -> dict[str, int]:
        """``pools = builders:2, other`` as ``{"builders": 2, "other": 1}``."""
        slots: dict[str, int] = {}
        for item in self.pools:
            name, sep, count = item.partition(":")
            try:
                number = int(count) if sep else 1
            except ValueError:
                number = 0
            if not valid_tag(name) or number < 1:
                raise ConfigError(
                    f"invalid pool {item!r} in minion.conf: write NAME or NAME:SLOTS, NAME in lower-case "
                    "letters, digits, '.', '-' and '_', SLOTS a whole number from 1"
                )
            slots[name] = number
        return slots

    @property
    def tag_map(self) -> dict[str, str]:
        """``tags = arch=x86_64, distro=fedora-40`` as a dict."""
        tags: dict[str, str] = {}
        for item in self.tags:
            key, sep, value = item.partition("=")
            if not (sep and valid_tag(key) and valid_tag(value)):
                raise ConfigError(
                    f"invalid tag {item!r} in minion.conf: write NAME=VALUE, both in lower-case "
                    "letters, digits, '.', '-' and '_'"
                )
            tags[key] = value
        if len(tags) > MAX_TAGS:
            raise ConfigError(f"minion.conf names {len(tags)} tags; at most {MAX_TAGS} are supported")
        return tags


@dataclass(frozen=True)
class OverlordConfig(_Section):
    """overlord.conf: ``socket_timeout`` keeps func's meaning (0: use call_timeout)."""

    broker_url: str = ""
    socket_timeout: float = 0.0
    call_timeout: float = _positive(300.0)
    locate_timeout: float = _positive(1.0)
    max_message_bytes: int = _positive(16 * 1024 * 1024)
    key_file: str = ""
    cert_file: str = ""
    ca_file: str = ""
    job_owner: str = ""
    """Whose event queue this overlord's jobs report to (default: user.host)."""
    job_ttl: float = _positive(24 * 3600.0)
    """Seconds a job may wait for its minion (or a pool member) before it expires."""

    @property
    def default_timeout(self) -> float:
        return self.socket_timeout if self.socket_timeout > 0 else self.call_timeout


def resolve_broker_url(configured: str, paths: Paths) -> str:
    """``FUNC_AMQP_URL``, else the config's ``broker_url``, else the private node's URL."""
    if os.environ.get(ENV_BROKER_URL):
        return os.environ[ENV_BROKER_URL]
    if configured:
        return configured
    url_file = paths.private_broker_url_file
    try:
        url = url_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        url = ""
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(
            f"cannot read the private broker's URL from {url_file}: {reason}. Restart it with "
            f"'func-amqp broker start', or set {ENV_BROKER_URL} or 'broker_url' to a running broker."
        ) from None
    if not url:
        raise ConfigError(
            "no broker is configured and the private broker is not running "
            f"(no {url_file}). Start it with 'func-amqp broker start', or set "
            f"{ENV_BROKER_URL} or 'broker_url' to a running broker."
        )
    return url
