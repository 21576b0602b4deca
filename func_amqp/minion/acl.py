"""func's minion ACLs: which certificate may call which method, default deny.

Every ``*.acl`` file in the ACL directory (func's ``minion-acl.d``) holds lines::

    # comment
    <CN>-<subject hash> = module.method, module.* other.method

The key is lower-cased and may be an fnmatch pattern (``web*-*``); it is matched
against the caller's key ``"<CN>-<subject hash>"`` (the form ``func-amqp ca
--list-cert-hash`` prints). Commas and whitespace separate the method patterns,
which are fnmatched, case-sensitively, against ``"module.method"``. The same key in
several lines or files accumulates. With ``certmaster_overrides_acls`` the CA's own
key is granted ``*``, as in func. Anything not granted is denied.

The files are re-read when the directory's or any file's modification time, size or
inode changes, so an edit takes effect on the next call without a restart. A line
that cannot be understood, or a file that cannot be read, is skipped with a warning:
a broken line can only ever grant less.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from func_amqp.errors import AccessToMethodDenied

ACL_SUFFIX = ".acl"
CA_OVERRIDE_SOURCE = "certmaster_overrides_acls"

_log = logging.getLogger(__name__)
_METHOD_SPLIT = re.compile(r"[,\s]+")
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}

# (name, device, inode, size, mtime_ns, ctime_ns) per file, after the directory's own.
_Signature = tuple[tuple[str, int, int, int, int, int], ...]


@dataclass(frozen=True)
class Grant:
    """One ACL line: a key pattern, the method patterns it grants, where it came from."""

    key: str
    methods: tuple[str, ...]
    source: str
    key_regex: re.Pattern[str]
    method_regexes: tuple[re.Pattern[str], ...]

    @classmethod
    def build(
        cls, key: str, methods: tuple[str, ...], source: str, *, literal_key: bool = False
    ) -> "Grant":
        """Compile the patterns once per load rather than once per call.

        ``literal_key`` matches the key as written, so a CA name cannot act as a glob.
        """
        key_regex = re.compile(re.escape(key)) if literal_key else _compile(key)
        return cls(
            key=key,
            methods=methods,
            source=source,
            key_regex=key_regex,
            method_regexes=tuple(_compile(m) for m in methods),
        )

    def matches_key(self, caller_key: str) -> bool:
        return self.key_regex.fullmatch(caller_key) is not None

    def grants(self, method: str) -> bool:
        return any(rx.fullmatch(method) is not None for rx in self.method_regexes)


def _compile(pattern: str) -> re.Pattern[str]:
    """fnmatch semantics, case-sensitive on every platform (fnmatchcase)."""
    return re.compile(fnmatch.translate(pattern))


def normalize_key(key: str) -> str:
    """func lower-cases host keys; caller keys are lower-cased too so they can match."""
    return key.strip().lower()


# --- parsing --------------------------------------------------------------------------


class _BadLine(ValueError):
    """A line that grants nothing; the message says why."""


def _has_forbidden_chars(text: str) -> bool:
    """Control, format and line-separator characters could hide what a line grants."""
    return any(
        ch != "\t" and unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text
    )


def parse_line(line: str) -> tuple[str, tuple[str, ...]] | None:
    """``(key, methods)`` for a grant, None for a comment or blank line.

    Raises :class:`_BadLine` for a line that is neither.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if _has_forbidden_chars(text):
        raise _BadLine("contains control characters")
    key, sep, rest = text.partition("=")
    if not sep:
        raise _BadLine("has no '=' (expected '<CN>-<hash> = method, ...')")
    if "=" in rest:
        raise _BadLine("has more than one '='")
    key = normalize_key(key)
    if not key:
        raise _BadLine("has an empty key before '='")
    methods = tuple(m for m in _METHOD_SPLIT.split(rest.strip()) if m)
    return key, methods


def parse_file(path: Path) -> list[Grant]:
    """The grants in one file; bad lines are skipped with a warning naming file:line."""
    data = path.read_bytes()
    grants: list[Grant] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            parsed = parse_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            _log.warning("ACL line %s skipped: it is not UTF-8 text", where)
            continue
        except _BadLine as exc:
            _log.warning("ACL line %s skipped: it %s", where, exc)
            continue
        if parsed is not None:
            grants.append(Grant.build(parsed[0], parsed[1], where))
    return grants


# --- the directory --------------------------------------------------------------------


def _acl_files(acl_dir: Path) -> list[os.DirEntry[str]]:
    """The ``*.acl`` entries, sorted by name so loading is deterministic."""
    with os.scandir(acl_dir) as entries:
        found = [e for e in entries if e.name.endswith(ACL_SUFFIX) and not e.name.startswith(".")]
    return sorted(found, key=lambda e: e.name)


def _signature(acl_dir: Path) -> _Signature | None:
    """What a reload depends on; None when the directory is missing or unreadable."""
    try:
        dir_stat = acl_dir.stat()
        files = _acl_files(acl_dir)
    except OSError:
        return None
    parts = [("", dir_stat.st_dev, dir_stat.st_ino, 0, dir_stat.st_mtime_ns, dir_stat.st_ctime_ns)]
    for entry in files:
        try:
            st = os.stat(entry.path)
        except OSError:
            parts.append((entry.name, 0, 0, -1, 0, 0))
            continue
        parts.append((entry.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(parts)


def _load_file(path: Path) -> list[Grant]:
    """One file's grants, or none (with a warning) if it cannot or must not be used."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            _log.warning("ACL file %s skipped: it is not a regular file", path)
            return []
        if st.st_mode & stat.S_IWOTH:
            _log.warning("ACL file %s skipped: anyone may write it; remove write permission for others", path)
            return []
        return parse_file(path)
    except OSError as exc:
        _log.warning("ACL file %s skipped: cannot read it: %s", path, exc.strerror or exc)
        return []


def load_directory(acl_dir: Path) -> list[Grant]:
    """Every grant in ``acl_dir``; a missing directory grants nothing."""
    try:
        files = _acl_files(acl_dir)
    except FileNotFoundError:
        _log.info("ACL directory %s does not exist: no ACL grants", acl_dir)
        return []
    except OSError as exc:
        _log.warning("ACL directory %s cannot be read (%s): no ACL grants", acl_dir, exc.strerror or exc)
        return []
    grants: list[Grant] = []
    for entry in files:
        grants.extend(_load_file(Path(entry.path)))
    return grants


class Acl:
    """The minion's access check, kept current with the ACL directory."""

    def __init__(
        self, acl_dir: Path, *, ca_key: str | None, certmaster_overrides_acls: bool = True
    ) -> None:
        self.acl_dir = Path(acl_dir)
        self.ca_key = normalize_key(ca_key) if ca_key else None
        self.certmaster_overrides_acls = certmaster_overrides_acls
        self._lock = threading.Lock()
        self._loaded_signature: _Signature | None | bool = False  # False: never loaded
        self._grants: tuple[Grant, ...] = ()

    # -- loading ----------------------------------------------------------------------

    def _override_grants(self) -> list[Grant]:
        if self.certmaster_overrides_acls and self.ca_key:
            return [Grant.build(self.ca_key, ("*",), CA_OVERRIDE_SOURCE, literal_key=True)]
        return []

    def _current(self) -> tuple[Grant, ...]:
        """The grants, re-read first if anything in the directory changed."""
        signature = _signature(self.acl_dir)
        with self._lock:
            if signature != self._loaded_signature:
                grants = self._override_grants() + load_directory(self.acl_dir)
                self._grants = tuple(grants)
                self._loaded_signature = signature
            return self._grants

    def reload(self) -> None:
        """Force a re-read on the next check (for SIGHUP or tests)."""
        with self._lock:
            self._loaded_signature = False

    # -- checks -----------------------------------------------------------------------

    def allowed(self, caller_key: str, method: str) -> bool:
        """True when some grant whose key matches the caller grants ``method``."""
        key = normalize_key(caller_key)
        if not key or not method:
            return False
        return any(g.matches_key(key) and g.grants(method) for g in self._current())

    def check(self, caller_key: str, method: str) -> None:
        """Raise :class:`AccessToMethodDenied` unless ``caller_key`` may call ``method``."""
        if self.allowed(caller_key, method):
            return
        example = method if method.isprintable() and method.strip() == method else "<method>"
        raise AccessToMethodDenied(
            f"{caller_key!r} may not call {method!r}: no line in {self.acl_dir}/*{ACL_SUFFIX} "
            f"grants it, and anything not granted is denied. To allow it, add "
            f"'{normalize_key(caller_key)} = {example}' to a {ACL_SUFFIX} file there."
        )

    # -- introspection ----------------------------------------------------------------

    def grants(self) -> dict[str, tuple[str, ...]]:
        """``{key pattern: method patterns}``, accumulated over lines and files."""
        merged: dict[str, list[str]] = {}
        for grant in self._current():
            methods = merged.setdefault(grant.key, [])
            methods.extend(m for m in grant.methods if m not in methods)
        return {key: tuple(methods) for key, methods in merged.items()}

    def describe(self) -> list[str]:
        """Human-readable lines for ``funcd --info``: each grant and where it comes from."""
        lines = [f"ACL directory: {self.acl_dir} (anything not granted is denied)"]
        current = self._current()
        if not current:
            lines.append("  no grants: every call is denied")
        for grant in current:
            methods = ", ".join(grant.methods) or "(nothing)"
            lines.append(f"  {grant.key} = {methods}    [{grant.source}]")
        return lines

