"""The minion's audit log: one line per request, safe to parse whatever callers send.

Line format (one line per :meth:`AuditLog.record`, ``\\n``-terminated, ASCII only)::

    <time> caller=<v> method=<v> args_sha256=<hex> call=<v> outcome=<v>[ detail=<v>]

- ``<time>``: UTC, ISO 8601 with milliseconds and ``Z``: ``2026-12-03T17:50:01.123Z``.
- Fields appear in exactly this order, separated by one space; ``detail`` only when
  it is not empty.
- ``caller``: the caller's ``<CN>-<subject hash>``, the key ACL files use.
- ``method``: ``module.method`` as requested.
- ``args_sha256``: 64 lower-case hex digits, :func:`args_digest` of the arguments.
- ``call``: the request's call id.
- ``outcome``: one of ``accepted``, ``denied:<CODE>``, ``refused:<CODE>``, ``ok``,
  ``error:<exception type>``, ``cancelled`` (``<CODE>`` is an
  :class:`~func_amqp.errors.Code` name such as ``ACCESS_DENIED``).
- ``<v>``: written bare when it is non-empty and made only of the characters
  ``A-Z a-z 0-9 . _ : / @ + * ? , ~ % [ ] -``; otherwise as a JSON string literal
  (RFC 8259): ``"`` and ``\\`` are backslash-escaped, and every character outside
  printable ASCII is escaped (``\\n``, ``\\t``, ... or ``\\uXXXX``).
  So a value can never contain a raw space, newline or unescaped quote, and a hostile
  method name or detail cannot end the line or forge a field. :func:`parse_line`
  reads a line back.

With a path, lines are appended to that file, created with mode 0600 and opened with
``O_APPEND`` so that several processes may share it; each line is one ``write``. If
the file is moved away (log rotation) it is re-created on the next line. Without a
path, lines go to the logger ``func_amqp.audit`` at INFO.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from func_amqp.errors import Code, ConfigError

LOGGER_NAME = "func_amqp.audit"
FILE_MODE = 0o600
FIELDS = ("caller", "method", "args_sha256", "call", "outcome", "detail")

ACCEPTED = "accepted"
OK = "ok"
CANCELLED = "cancelled"

_audit_logger = logging.getLogger(LOGGER_NAME)
_BARE = re.compile(r"[A-Za-z0-9._:/@+*?,~%\[\]-]+")
_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^ "]+)'
_LINE = re.compile(rf"({_TIME})((?: [a-z_0-9]+={_VALUE})+)")
_FIELD = re.compile(rf" ([a-z_0-9]+)=({_VALUE})")


# --- outcomes -------------------------------------------------------------------------


def denied(code: Code) -> str:
    """Outcome of a request the ACLs refused (``denied:ACCESS_DENIED``)."""
    return f"denied:{code.name}"


def refused(code: Code) -> str:
    """Outcome of a request refused before the ACLs (bad signature, replay, ...)."""
    return f"refused:{code.name}"


def error(type_name: str) -> str:
    """Outcome of a method that raised ``type_name``."""
    return f"error:{type_name}"


# --- formatting -----------------------------------------------------------------------


def args_digest(args: Any) -> str:
    """SHA-256 of the canonical JSON of ``args``: proves what ran without logging secrets.

    Canonical JSON is ``json.dumps(args, sort_keys=True, separators=(",", ":"),
    default=repr)`` encoded as UTF-8. Arguments that JSON cannot order or hold (mixed
    key types, cycles) are digested as ``repr(args)`` instead, so auditing never fails.
    """
    return hashlib.sha256(_canonical_text(args).encode("utf-8", "surrogatepass")).hexdigest()


def _canonical_text(args: Any) -> str:
    try:
        return json.dumps(args, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        return repr(args)
    except RecursionError:
        return f"<{type(args).__name__} nested too deeply>"


def escape_value(value: object) -> str:
    """The value bare if it is harmless, else as an ASCII-only JSON string."""
    text = value if isinstance(value, str) else str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=True).replace("\x7f", "\\u007f")


def timestamp(now: datetime.datetime | None = None) -> str:
    """UTC with milliseconds, e.g. ``2026-12-03T17:50:01.123Z``."""
    moment = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_line(
    caller: str,
    method: str,
    digest: str,
    call_id: str,
    outcome: str,
    detail: str = "",
    *,
    now: datetime.datetime | None = None,
) -> str:
    """One audit line without its newline."""
    values = [caller, method, digest, call_id, outcome]
    if detail:
        values.append(detail)
    fields = " ".join(f"{name}={escape_value(v)}" for name, v in zip(FIELDS, values))
    return f"{timestamp(now)} {fields}"


def parse_line(line: str) -> dict[str, str]:
    """The fields of an audit line (``time`` included), unescaped; ValueError if malformed."""
    match = _LINE.fullmatch(line.rstrip("\n"))
    if match is None:
        raise ValueError(f"not an audit line: {line!r}")
    result = {"time": match.group(1)}
    for name, raw in _FIELD.findall(match.group(2)):
        result[name] = json.loads(raw) if raw.startswith('"') else raw
    return result


# --- the log --------------------------------------------------------------------------


def _open_append(path: Path) -> int:
    """Open for appending; a new file (and directory) is private to the minion's user."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    return os.open(path, flags, FILE_MODE)


class AuditLog:
    """Appends audit lines to a file (or the ``func_amqp.audit`` logger), thread-safe."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._held: tuple[int, int] | None = None  # (device, inode) of the open file
        if self.path is not None:
            try:
                self._open(self.path)
            except OSError as exc:
                raise ConfigError(
                    f"cannot open the audit log {self.path}: {exc.strerror or exc}. "
                    "Fix the directory's permissions or set 'audit_log' to a writable file."
                ) from None

    def _fd_for_write(self, path: Path) -> int:
        """The open file, re-opened when it was moved or deleted (log rotation)."""
        if self._fd is not None:
            try:
                on_disk = os.stat(path)
                if (on_disk.st_dev, on_disk.st_ino) == self._held:
                    return self._fd
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        return self._open(path)

    def _open(self, path: Path) -> int:
        fd = _open_append(path)
        held = os.fstat(fd)
        self._fd, self._held = fd, (held.st_dev, held.st_ino)
        return fd

    def _write(self, path: Path, line: str) -> None:
        data = (line + "\n").encode("ascii")
        with self._lock:
            fd = self._fd_for_write(path)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]

    def record(
        self,
        caller: str,
        method: str,
        args: Any,
        call_id: str,
        outcome: str,
        detail: str = "",
        *,
        digest: str | None = None,
    ) -> str:
        """Write one line and return it; ``digest`` skips re-hashing large arguments.

        A failure to write is reported on the ``func_amqp.audit`` logger, with the line,
        rather than raised: the request's own outcome must not depend on the disk.
        """
        line = format_line(
            caller, method, digest or args_digest(args), call_id, outcome, detail
        )
        if self.path is None:
            _audit_logger.info("%s", line)
            return line
        try:
            self._write(self.path, line)
        except OSError as exc:
            _audit_logger.error("cannot write the audit log %s (%s): %s", self.path, exc, line)
        return line

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
