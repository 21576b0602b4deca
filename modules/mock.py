"""func's ``mock`` module: rebuild an SRPM on the minion, the way Copr's builders do.

``mock.build(srpm, chroot, options)`` rebuilds one SRPM with mock when it is installed
(RPM-based hosts), or with the host's ``rpmbuild`` otherwise (Debian has no mock). Both
are production paths; the result says which one ran. Results land in Copr's layout::

    <result_root>/[<owner>/<project>/]<chroot>/<%08d build_id>-<pkgname>/

with ``success`` and ``results.json`` written on success, as Copr's backend expects.

A failed build is a result, never an exception: the returned ``status`` is one of
:data:`STATUSES`. Only bad arguments raise :class:`func_amqp.errors.ArgumentError`.

With the rpmbuild backend the chroot is only a label for the result tree: the package
is built on the host, by the minion's user, with the host's macros and without network
isolation. A spec file can run anything as that user, so only trusted callers should
be allowed this method on such minions.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from func_amqp import errors
from func_amqp.minion import process, progress
from func_amqp.minion.modules.func_module import FuncModule, current_paths, write_text_atomic

# --- statuses -----------------------------------------------------------------------------

SUCCEEDED = "succeeded"
BUILD_FAILED = "build_failed"
DEPS_OR_SRPM_FAILED = "deps_or_srpm_failed"
CONFIG_ERROR = "config_error"
INFRA_ERROR = "infra_error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
STATUSES = (
    SUCCEEDED,
    BUILD_FAILED,
    DEPS_OR_SRPM_FAILED,
    CONFIG_ERROR,
    INFRA_ERROR,
    TIMEOUT,
    CANCELLED,
)

# mock's exit codes (mockbuild/exception.py); anything else is an infrastructure error.
MOCK_EXIT_STATUS: dict[int, str] = {
    0: SUCCEEDED,
    10: BUILD_FAILED,
    11: BUILD_FAILED,
    30: DEPS_OR_SRPM_FAILED,
    31: DEPS_OR_SRPM_FAILED,
    40: DEPS_OR_SRPM_FAILED,
    3: CONFIG_ERROR,
    5: CONFIG_ERROR,
    6: CONFIG_ERROR,
    50: CONFIG_ERROR,
    70: CONFIG_ERROR,
    20: INFRA_ERROR,
    60: INFRA_ERROR,
    80: INFRA_ERROR,
    90: INFRA_ERROR,
}

BACKENDS = ("auto", "mock", "rpmbuild")
ISOLATIONS = ("auto", "nspawn", "simple")

RPM_LEAD_MAGIC = b"\xed\xab\xee\xdb"
SRPM_SUFFIX = ".src.rpm"
FLAT_NAME_FMT = "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"
RPM_QUERY_FORMAT = "%{NAME} %{EPOCH} %{VERSION} %{RELEASE} %{ARCH}"

BUILD_LOG = "build.log"
STATE_LOG = "state.log"
CONSOLE_LOG = "builder-live.log"
SUCCESS_FILE = "success"
RESULTS_JSON = "results.json"
BACKUP_DIR = "prev_build_backup"
LOG_TAIL_LINES = 50

MAX_NAME = 100
MAX_VALUE = 4096
MAX_TIMEOUT = 30 * 24 * 3600
MAX_BUILD_ID = 10**15

# Macros the module sets itself: a caller's define must not move the results elsewhere.
RESERVED_MACROS = frozenset(
    {
        "_topdir",
        "_rpmdir",
        "_srcrpmdir",
        "_sourcedir",
        "_specdir",
        "_builddir",
        "_buildrootdir",
        "_build_name_fmt",
    }
)

# mock's own files in its config dirs that are not chroots.
NOT_CHROOTS = frozenset({"site-defaults", "logging", "chroot-aliases"})

# the same rules as repopublish.py, so whatever is built can be published
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_OWNER_RE = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9._-]*")
_MACRO_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BCOND_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_FILENAME_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*")
_DEFINE_ITEM_RE = re.compile(r"([^\s]+)\s+(\S.*)", re.DOTALL)
_STATE_RE = re.compile(
    r"^(?P<ts>.*?) - (?P<event>Start|Finish)(?P<bootstrap>\(bootstrap\))?: (?P<name>.*\S)\s*$"
)
_SECTION_RE = re.compile(r"^Executing\((?P<section>[^)]+)\)")


# --- arguments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    """The ``options`` hash of :meth:`Mock.build`, validated and normalised."""

    uniqueext: str | None = None
    no_clean: bool = False
    enable_network: bool = False
    defines: tuple[tuple[str, str], ...] = ()
    with_: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    isolation: str | None = None
    bootstrap_chroot: bool | None = None
    timeout: float | None = None
    build_id: int | None = None
    owner: str | None = None
    project: str | None = None


OPTION_KEYS = (
    "uniqueext",
    "no_clean",
    "enable_network",
    "define",
    "with",
    "without",
    "isolation",
    "bootstrap_chroot",
    "timeout",
    "build_id",
    "owner",
    "project",
)

# Options that only mean something to mock; rpmbuild ignores them (and says so).
MOCK_ONLY_OPTIONS = ("uniqueext", "no_clean", "enable_network", "isolation", "bootstrap_chroot")


def _bad(message: str) -> errors.ArgumentError:
    return errors.ArgumentError(message)


def _check_text(what: str, value: Any, max_len: int = MAX_VALUE) -> str:
    """A non-empty single-line string: newlines and NULs would split a define or a log."""
    if not isinstance(value, str):
        raise _bad(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise _bad(f"{what} must not be empty")
    if any(ch in value for ch in "\n\r\0"):
        raise _bad(f"{what} must not contain newlines or NUL characters")
    if len(value) > max_len:
        raise _bad(f"{what} is longer than {max_len} characters")
    return value


def _check_name(what: str, value: Any, pattern: re.Pattern[str] = _NAME_RE) -> str:
    """A name that is safe as one argv element and one path component."""
    text = _check_text(what, value, MAX_NAME)
    if text.startswith("-"):
        raise _bad(f"{what} must not start with '-': {text!r}")
    if text in (".", "..") or not pattern.fullmatch(text):
        raise _bad(f"{what} {text!r} may only contain letters, digits and . _ + -")
    return text


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"option '{key}' must be a boolean, got {type(value).__name__} {value!r}")
    return value


def _check_str_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _bad(f"option '{key}' must be a list of strings, got {type(value).__name__}")
    return tuple(_check_name(f"option '{key}' item", item, _BCOND_RE) for item in value)


def _check_define(name: Any, value: Any) -> tuple[str, str]:
    macro = _check_name("option 'define' macro name", name, _MACRO_RE)
    if macro in RESERVED_MACROS:
        raise _bad(f"option 'define' may not set {macro}: the module sets it itself")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(
            f"option 'define' value of {macro} must be a string or number, "
            f"got {type(value).__name__}"
        )
    body = _check_text(f"option 'define' value of {macro}", str(value))
    if not body.strip():
        raise _bad(f"option 'define' value of {macro} must not be blank (use %{{nil}})")
    return macro, body


def parse_defines(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"name": "value"}`` or ``["name value", ...]`` -> ``(("name", "value"), ...)``."""
    if isinstance(value, Mapping):
        return tuple(_check_define(name, body) for name, body in value.items())
    if isinstance(value, (list, tuple)):
        pairs = []
        for item in value:
            text = _check_text("option 'define' item", item)
            match = _DEFINE_ITEM_RE.fullmatch(text)
            if match is None:
                raise _bad(f"option 'define' item {text!r} must be \"name value\"")
            pairs.append(_check_define(match.group(1), match.group(2)))
        return tuple(pairs)
    raise _bad(
        "option 'define' must be a dict of name -> value or a list of \"name value\" "
        f"strings, got {type(value).__name__}"
    )


def _check_number(key: str, value: Any, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"option '{key}' must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or not minimum < value <= maximum:
        raise _bad(f"option '{key}' must be more than {minimum} and at most {maximum}")
    return float(value)


def _check_build_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"option 'build_id' must be an integer, got {type(value).__name__}")
    if not 0 <= value < MAX_BUILD_ID:
        raise _bad(f"option 'build_id' must be between 0 and {MAX_BUILD_ID - 1}")
    return value


def parse_options(raw: Any) -> BuildOptions:
    """Validate ``build``'s options hash; ArgumentError names the offending key."""
    if raw is None:
        return BuildOptions()
    if not isinstance(raw, Mapping):
        raise _bad(f"options must be a dict (hash), got {type(raw).__name__}")
    unknown = [str(key) for key in raw if key not in OPTION_KEYS]
    if unknown:
        raise _bad(
            f"unknown option(s) {', '.join(repr(k) for k in sorted(unknown))}; "
            f"known: {', '.join(OPTION_KEYS)}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "uniqueext":
            values["uniqueext"] = _check_name("option 'uniqueext'", value)
        elif key in ("no_clean", "enable_network"):
            values[key] = _check_bool(key, value)
        elif key == "bootstrap_chroot":
            values[key] = None if value is None else _check_bool(key, value)
        elif key == "define":
            values["defines"] = parse_defines(value)
        elif key == "with":
            values["with_"] = _check_str_list(key, value)
        elif key == "without":
            values["without"] = _check_str_list(key, value)
        elif key == "isolation":
            if value not in ISOLATIONS:
                raise _bad(f"option 'isolation' must be one of {', '.join(ISOLATIONS)}, got {value!r}")
            values["isolation"] = value
        elif key == "timeout":
            values["timeout"] = _check_number(key, value, 0, MAX_TIMEOUT)
        elif key == "build_id":
            values["build_id"] = _check_build_id(value)
        elif key in ("owner", "project"):
            values[key] = _check_name(f"option '{key}'", value, _OWNER_RE if key == "owner" else _NAME_RE)
    if ("owner" in values) != ("project" in values):
        raise _bad("options 'owner' and 'project' must be given together")
    return BuildOptions(**values)


@dataclass(frozen=True)
class SrpmSource:
    """Where the SRPM comes from: an http(s) URL to download, or a path on the minion."""

    url: str | None
    path: Path | None
    filename: str
    pkgname: str


def package_name_from_filename(filename: str) -> str:
    """``hello-func-1.0-1.src.rpm`` -> ``hello-func`` (name-version-release.src.rpm)."""
    if not filename.endswith(SRPM_SUFFIX):
        raise _bad(f"the SRPM's file name must end in {SRPM_SUFFIX}: {filename!r}")
    if not _FILENAME_RE.fullmatch(filename) or len(filename) > 255:
        raise _bad(f"the SRPM's file name {filename!r} has characters that are not allowed")
    parts = filename[: -len(SRPM_SUFFIX)].rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        raise _bad(f"the SRPM's file name {filename!r} is not NAME-VERSION-RELEASE{SRPM_SUFFIX}")
    return _check_name("the SRPM's package name", parts[0])


def parse_srpm(value: Any) -> SrpmSource:
    """Accept an http(s) URL, a file:// URL or an absolute path ending in ``.src.rpm``."""
    text = _check_text("srpm", value)
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise _bad(f"srpm URL {text!r} has no host")
        filename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        return SrpmSource(text, None, filename, package_name_from_filename(filename))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _bad(f"srpm file:// URL must name a local file, not host {parts.netloc!r}")
        path_text = urllib.parse.unquote(parts.path)
    elif scheme:
        raise _bad(f"srpm URL scheme {scheme!r} is not supported; use http, https or file")
    else:
        path_text = text
    _check_text("srpm path", path_text)
    if not os.path.isabs(path_text):
        raise _bad(f"srpm path must be absolute: {path_text!r}")
    path = Path(os.path.normpath(path_text))
    return SrpmSource(None, path, path.name, package_name_from_filename(path.name))


@dataclass(frozen=True)
class Chroot:
    """mock's ``-r`` argument and the result tree's directory name for it."""

    arg: str
    label: str


def parse_chroot(value: Any) -> Chroot:
    """A config name such as ``fedora-40-x86_64``, or the absolute path of a ``.cfg``."""
    text = _check_text("chroot", value)
    if text.startswith("/"):
        path = Path(os.path.normpath(text))
        if path.suffix != ".cfg":
            raise _bad(f"chroot path must name a .cfg file: {text!r}")
        if not path.is_file():
            raise _bad(f"chroot config {text!r} does not exist or is not a file")
        label = _check_name("chroot config's name", path.stem)
        return Chroot(str(path), label)
    name = _check_name("chroot", text)
    if name.endswith(".cfg"):
        raise _bad(f"chroot {name!r}: give a config name without .cfg, or an absolute path")
    return Chroot(name, name)


# --- command lines ------------------------------------------------------------------------


def default_uniqueext(now: float | None = None) -> str:
    """A fresh chroot name suffix per build, Copr's ``%s.%f``."""
    return f"{time.time() if now is None else now:.6f}"


def mock_argv(
    mock: str,
    chroot: str,
    srpm: str | Path,
    result_dir: str | Path,
    uniqueext: str,
    options: BuildOptions,
) -> list[str]:
    """mock's command line for one rebuild; a list, never a shell string."""
    argv = [
        mock, "-r", chroot, "--rebuild", str(srpm),
        "--resultdir", str(result_dir), "--uniqueext", uniqueext,
    ]
    if options.no_clean:
        argv.append("--no-clean")
    if options.enable_network:
        argv.append("--enable-network")
    argv += _macro_args(options)
    if options.isolation is not None:
        argv.append(f"--isolation={options.isolation}")
    if options.bootstrap_chroot is not None:
        argv.append("--bootstrap-chroot" if options.bootstrap_chroot else "--no-bootstrap-chroot")
    return argv


def macro_path(path: str | Path) -> str:
    """A path as a macro body: ``%`` would start a macro expansion."""
    return str(path).replace("%", "%%")


def rpmbuild_argv(
    rpmbuild: str,
    srpm: str | Path,
    workdir: str | Path,
    result_dir: str | Path,
    options: BuildOptions,
) -> list[str]:
    """rpmbuild's command line: RPMs land flat in ``result_dir``, scratch in ``workdir``."""
    argv = [
        rpmbuild, "--rebuild",
        "--define", f"_topdir {macro_path(workdir)}",
        "--define", f"_rpmdir {macro_path(result_dir)}",
        "--define", f"_srcrpmdir {macro_path(result_dir)}",
        "--define", f"_build_name_fmt {FLAT_NAME_FMT}",
    ]
    argv += _macro_args(options)
    argv.append(str(srpm))
    return argv


def _macro_args(options: BuildOptions) -> list[str]:
    argv: list[str] = []
    for name, body in options.defines:
        argv += ["--define", f"{name} {body}"]
    for bcond in options.with_:
        argv += ["--with", bcond]
    for bcond in options.without:
        argv += ["--without", bcond]
    return argv


def ignored_by_rpmbuild(options: BuildOptions) -> list[str]:
    """The mock-only options a caller set: rpmbuild builds on the host and ignores them."""
    set_values = {
        "uniqueext": options.uniqueext is not None,
        "no_clean": options.no_clean,
        "enable_network": options.enable_network,
        "isolation": options.isolation is not None,
        "bootstrap_chroot": options.bootstrap_chroot is not None,
    }
    return [name for name in MOCK_ONLY_OPTIONS if set_values[name]]


def resolve_backend(
    setting: str,
    mock_command: str,
    rpmbuild_command: str,
    which: Callable[[str], str | None] = shutil.which,
) -> tuple[str, str | None]:
    """(backend name, executable or None): ``auto`` is mock when found, else rpmbuild."""
    if setting not in BACKENDS:
        raise errors.ConfigError(f"mock module: backend must be one of {', '.join(BACKENDS)}, got {setting!r}")
    if setting in ("auto", "mock"):
        found = which(mock_command)
        if found or setting == "mock":
            return "mock", found
    return "rpmbuild", which(rpmbuild_command)


# --- progress parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class StateEvent:
    """One ``Start:``/``Finish:`` line of mock's state.log."""

    event: str
    name: str
    bootstrap: bool = False
    timestamp: str = ""

    @property
    def phase(self) -> str:
        return f"{self.name} (bootstrap)" if self.bootstrap else self.name


def parse_state_line(line: str) -> StateEvent | None:
    """``<ts> - Start: X`` / ``Finish: X`` / ``Start(bootstrap): X``; None for other lines."""
    match = _STATE_RE.match(line)
    if match is None:
        return None
    return StateEvent(
        event=match.group("event").lower(),
        name=match.group("name"),
        bootstrap=match.group("bootstrap") is not None,
        timestamp=match.group("ts"),
    )


class StateTracker:
    """The current phase: the last ``Start`` whose ``Finish`` has not come yet."""

    def __init__(self) -> None:
        self._open: list[StateEvent] = []
        self.phase: str | None = None

    def feed(self, line: str) -> str | None:
        """Take one state.log line; return the new phase if it changed, else None."""
        event = parse_state_line(line)
        if event is None:
            return None
        if event.event == "start":
            self._open.append(event)
        else:
            for index in range(len(self._open) - 1, -1, -1):
                started = self._open[index]
                if (started.name, started.bootstrap) == (event.name, event.bootstrap):
                    del self._open[index]
                    break
        phase = self._open[-1].phase if self._open else None
        if phase == self.phase:
            return None
        self.phase = phase
        return phase


def current_phase(lines: Iterable[str]) -> str | None:
    """The phase a whole state.log leaves open (None when everything finished)."""
    tracker = StateTracker()
    for line in lines:
        tracker.feed(line)
    return tracker.phase


def parse_rpmbuild_section(line: str) -> str | None:
    """``Executing(%build): /bin/sh ...`` -> ``build``; None for other lines."""
    match = _SECTION_RE.match(line)
    if match is None:
        return None
    return match.group("section").lstrip("%-") or None


class LogFollower:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                if size < self._offset:  # rewritten from scratch
                    self._offset, self._partial = 0, b""
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        return [_decode(chunk) for chunk in chunks]

    def flush(self) -> list[str]:
        """Everything left, including a last line without a newline."""
        lines = self.read_new()
        if self._partial:
            lines.append(_decode(self._partial))
            self._partial = b""
        return lines


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


# --- outcomes -----------------------------------------------------------------------------


def mock_status(returncode: int) -> str:
    """Copr's reading of mock's exit code."""
    return MOCK_EXIT_STATUS.get(returncode, INFRA_ERROR)


def is_srpm_problem(line: str, srpm_name: str) -> bool:
    """Whether an rpmbuild output line blames the SRPM or missing build dependencies."""
    if not line.startswith("error:"):
        return False
    if "Failed build dependencies" in line:
        return True
    markers = ("not an rpm package", "cannot be installed", "cannot open", "illegal signature", "read failed")
    return srpm_name in line or any(marker in line for marker in markers)


def srpm_blamed(lines: Iterable[str], srpm_name: str) -> list[str]:
    """The lines blaming the SRPM or its dependencies, read up to the first section:
    rpmbuild installs the SRPM and checks BuildRequires before it runs %prep, and a
    package's own build output must not be mistaken for those errors."""
    blamed = []
    for line in lines:
        if parse_rpmbuild_section(line) is not None:
            break
        if is_srpm_problem(line, srpm_name):
            blamed.append(line)
    return blamed


def rpmbuild_status(returncode: int, lines: Iterable[str], srpm_name: str) -> str:
    """rpmbuild has no exit code table: the SRPM or dependency errors are told by the text."""
    if returncode == 0:
        return SUCCEEDED
    if srpm_blamed(lines, srpm_name):
        return DEPS_OR_SRPM_FAILED
    return BUILD_FAILED


def final_status(
    backend: str,
    returncode: int,
    timed_out: bool,
    cancelled: bool,
    lines: Iterable[str] = (),
    srpm_name: str = "",
) -> str:
    """Cancel, then timeout, then the backend's exit code."""
    if cancelled:
        return CANCELLED
    if timed_out:
        return TIMEOUT
    if backend == "mock":
        return mock_status(returncode)
    return rpmbuild_status(returncode, lines, srpm_name)


def srpm_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable SRPM, or None; checked before any backend runs."""
    if not path.name.endswith(SRPM_SUFFIX):
        return f"{path} does not end in {SRPM_SUFFIX}"
    try:
        if not path.exists():
            return f"SRPM not found: {path}"
        if not path.is_file():
            return f"SRPM is not a regular file: {path}"
        with open(path, "rb") as fh:
            lead = fh.read(len(RPM_LEAD_MAGIC))
    except OSError as exc:
        return f"cannot read SRPM {path}: {exc.strerror or exc}"
    if lead != RPM_LEAD_MAGIC:
        return f"{path} is not an RPM package (bad lead magic)"
    return None


# --- result tree ----------------------------------------------------------------------------


def build_dir_name(build_id: int, pkgname: str) -> str:
    """Copr's ``<%08d build_id>-<pkgname>``."""
    return f"{build_id:08d}-{pkgname}"


def result_dir_path(
    root: Path,
    chroot_label: str,
    pkgname: str,
    build_id: int,
    owner: str | None = None,
    project: str | None = None,
) -> Path:
    """``<root>/[<owner>/<project>/]<chroot>/<%08d id>-<pkgname>``."""
    base = root / owner / project if owner and project else root
    return base / chroot_label / build_dir_name(build_id, pkgname)


_id_lock = threading.Lock()
_last_id = 0


def next_build_id() -> int:
    """A time-based id (milliseconds), increasing within this process."""
    global _last_id
    with _id_lock:
        _last_id = max(int(time.time() * 1000), _last_id + 1)
        return _last_id


def clear_previous_results(result_dir: Path) -> None:
    """Copr's way for a rebuild under the same id: keep old logs in prev_build_backup/,
    drop the rest, so that no stale success file or RPM is taken for this build's."""
    if not result_dir.is_dir():
        return
    backup = result_dir / BACKUP_DIR
    for entry in list(result_dir.iterdir()):
        if entry.name == BACKUP_DIR:
            continue
        if entry.is_file() and entry.name.endswith((".log", ".log.gz", ".info")):
            backup.mkdir(exist_ok=True)
            os.replace(entry, backup / entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def reserve_result_dir(root: Path, chroot_label: str, pkgname: str, options: BuildOptions) -> Path:
    """Create this build's result directory; a generated id never reuses one."""
    if options.build_id is not None:
        path = result_dir_path(root, chroot_label, pkgname, options.build_id, options.owner, options.project)
        clear_previous_results(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    build_id = next_build_id()
    while True:
        path = result_dir_path(root, chroot_label, pkgname, build_id, options.owner, options.project)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
            return path
        except FileExistsError:
            build_id += 1


def package_entry(query_output: str, filename: str) -> dict[str, Any]:
    """One results.json entry from ``rpm -qp --qf RPM_QUERY_FORMAT``; SRPMs get arch ``src``."""
    fields = query_output.split()
    if len(fields) != 5:
        raise ValueError(f"unexpected rpm query output for {filename}: {query_output!r}")
    name, epoch, version, release, arch = fields
    return {
        "name": name,
        "epoch": None if epoch == "(none)" else int(epoch),
        "version": version,
        "release": release,
        "arch": "src" if filename.endswith(SRPM_SUFFIX) else arch,
    }


def package_entry_from_filename(filename: str) -> dict[str, Any]:
    """A results.json entry from ``N-V-R.A.rpm`` when the header cannot be read."""
    stem = filename[: -len(".rpm")] if filename.endswith(".rpm") else filename
    nvr, _, arch = stem.rpartition(".")
    parts = nvr.rsplit("-", 2)
    if len(parts) != 3 or not all(parts) or not arch:
        raise ValueError(f"{filename} is not NAME-VERSION-RELEASE.ARCH.rpm")
    name, version, release = parts
    return {"name": name, "epoch": None, "version": version, "release": release, "arch": arch}


def write_results_json(result_dir: Path, packages: Sequence[Mapping[str, Any]]) -> Path:
    """Copr's ``results.json``: ``{"packages": [{name, epoch, version, release, arch}...]}``."""
    path = result_dir / RESULTS_JSON
    write_text_atomic(path, json.dumps({"packages": [dict(p) for p in packages]}, indent=4) + "\n")
    return path


def write_success(result_dir: Path) -> Path:
    """Copr's success marker: the backend treats a build without it as failed."""
    path = result_dir / SUCCESS_FILE
    write_text_atomic(path, "done")
    return path


def tail_lines(path: Path, count: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``count`` lines of a text file ([] when it is missing)."""
    try:
        with open(path, "rb") as fh:
            return [_decode(raw.rstrip(b"\n")) for raw in deque(fh, maxlen=count)]
    except FileNotFoundError:
        return []


def find_chroots(config_dirs: Iterable[Path]) -> list[str]:
    """Names of the mock configs in ``config_dirs`` (top level ``*.cfg``), sorted."""
    names: set[str] = set()
    for directory in config_dirs:
        if not directory.is_dir():
            continue
        for cfg in directory.glob("*.cfg"):
            if cfg.stem not in NOT_CHROOTS and cfg.is_file():
                names.add(cfg.stem)
    return sorted(names)


# --- downloads ----------------------------------------------------------------------------


class BuildStopped(Exception):
    """A build ends before (or instead of) running its backend, with this status."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


DOWNLOAD_CHUNK = 1024 * 1024


def download(
    url: str,
    dest: Path,
    limit: int,
    timeout: float,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> int:
    """Fetch an http(s) URL into ``dest``; BuildStopped says why it did not work.

    A missing or refused file is the SRPM's fault, a network failure is the
    infrastructure's (worth a retry).
    """
    deadline = time.monotonic() + timeout
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, 30.0)) as response:  # noqa: S310
            final = urllib.parse.urlsplit(response.geturl()).scheme.lower()
            if final not in ("http", "https"):
                raise BuildStopped(DEPS_OR_SRPM_FAILED, f"download of {url} was redirected to a {final} URL")
            total = _content_length(response.headers.get("Content-Length"))
            if total is not None and total > limit:
                raise BuildStopped(DEPS_OR_SRPM_FAILED, f"SRPM at {url} is {total} bytes, over the {limit} byte limit")
            done = 0
            with open(part, "wb") as out:
                while chunk := response.read(DOWNLOAD_CHUNK):
                    done += len(chunk)
                    if done > limit:
                        raise BuildStopped(DEPS_OR_SRPM_FAILED, f"SRPM at {url} is over the {limit} byte limit")
                    if should_stop():
                        raise BuildStopped(CANCELLED, "cancelled during the download")
                    if time.monotonic() > deadline:
                        raise BuildStopped(INFRA_ERROR, f"download of {url} took longer than {timeout:g} s")
                    out.write(chunk)
                    on_progress(done, total)
        os.replace(part, dest)
        return done
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code in (408, 429)
        status = INFRA_ERROR if transient else DEPS_OR_SRPM_FAILED
        raise BuildStopped(status, f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BuildStopped(INFRA_ERROR, f"download of {url} failed: {reason}") from None
    finally:
        part.unlink(missing_ok=True)


def _content_length(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The module's options, checked and typed."""

    backend: str
    mock_command: str
    rpmbuild_command: str
    rpm_command: str
    result_root: Path
    work_root: Path
    download_limit_bytes: int
    download_timeout: float
    default_timeout: float
    config_dirs: tuple[Path, ...]


def settings_from(options: Any, state_dir: Path) -> Settings:
    """Turn the options file's values into :class:`Settings`; ConfigError if one is bad."""
    values = options.as_dict()
    if values["backend"] not in BACKENDS:
        raise errors.ConfigError(
            f"mock module: backend must be one of {', '.join(BACKENDS)}, got {values['backend']!r}"
        )
    for key in ("download_limit_bytes", "download_timeout", "default_timeout"):
        if not values[key] > 0:
            raise errors.ConfigError(f"mock module: {key} must be positive, got {values[key]!r}")
    return Settings(
        backend=values["backend"],
        mock_command=values["mock_command"],
        rpmbuild_command=values["rpmbuild_command"],
        rpm_command=values["rpm_command"],
        result_root=Path(values["result_root"]).expanduser() if values["result_root"] else state_dir / "builds",
        work_root=Path(values["work_root"]).expanduser() if values["work_root"] else state_dir / "build-work",
        download_limit_bytes=int(values["download_limit_bytes"]),
        download_timeout=float(values["download_timeout"]),
        default_timeout=float(values["default_timeout"]),
        config_dirs=tuple(Path(d).expanduser() for d in values["config_dirs"]),
    )


# --- one build --------------------------------------------------------------------------------


class _Build:
    """One call of :meth:`Mock.build` once its arguments are valid."""

    def __init__(
        self,
        settings: Settings,
        options: BuildOptions,
        source: SrpmSource,
        chroot: Chroot,
        result_dir: Path,
        started: float,
    ) -> None:
        self.settings = settings
        self.options = options
        self.source = source
        self.chroot = chroot
        self.result_dir = result_dir
        self.started = started
        self.backend = settings.backend
        self.returncode: int | None = None
        self.console_tail: list[str] = []
        self._last_phase: str | None = None

    def run(self) -> dict[str, Any]:
        try:
            self.backend, executable = resolve_backend(
                self.settings.backend, self.settings.mock_command, self.settings.rpmbuild_command
            )
            if executable is None:
                command = self.settings.mock_command if self.backend == "mock" else self.settings.rpmbuild_command
                raise BuildStopped(CONFIG_ERROR, f"{self.backend} backend: {command!r} not found")
            srpm = self._fetch()
            problem = srpm_problem(srpm)
            if problem:
                raise BuildStopped(DEPS_OR_SRPM_FAILED, problem)
            if progress.cancelled():
                raise BuildStopped(CANCELLED, "cancelled before the build started")
            if self.backend == "mock":
                status, message = self._run_mock(executable, srpm)
            else:
                status, message = self._run_rpmbuild(executable, srpm)
        except BuildStopped as stop:
            with open(self.result_dir / BUILD_LOG, "a", encoding="utf-8") as fh:
                fh.write(f"error: {stop.message}\n")
            progress.log(f"error: {stop.message}")
            status, message = stop.status, stop.message
        return self._finish(status, message)

    def _fetch(self) -> Path:
        if self.source.url is None:
            assert self.source.path is not None
            return self.source.path
        self._phase("download", self.source.url)
        dest = self.result_dir / self.source.filename
        last_report = [0.0]

        def on_progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last_report[0] >= 1.0 or done == total:
                last_report[0] = now
                progress.report("download", done, total, self.source.url or "")

        size = download(
            self.source.url,
            dest,
            self.settings.download_limit_bytes,
            self.settings.download_timeout,
            progress.cancelled,
            on_progress,
        )
        progress.log(f"downloaded {size} bytes from {self.source.url}")
        return dest

    def _timeout(self) -> float:
        return self.options.timeout if self.options.timeout is not None else self.settings.default_timeout

    def _phase(self, phase: str, message: str = "") -> None:
        if phase != self._last_phase:
            self._last_phase = phase
            progress.report(phase, message=message)

    def _run_mock(self, mock: str, srpm: Path) -> tuple[str, str]:
        argv = mock_argv(
            mock, self.chroot.arg, srpm, self.result_dir,
            self.options.uniqueext or default_uniqueext(), self.options,
        )
        state = StateTracker()
        state_log = LogFollower(self.result_dir / STATE_LOG)
        build_log = LogFollower(self.result_dir / BUILD_LOG)

        last_poll = [0.0]

        def follow(final: bool = False) -> None:
            now = time.monotonic()
            if not final and now - last_poll[0] < process.POLL_INTERVAL:
                return
            last_poll[0] = now
            for line in state_log.flush() if final else state_log.read_new():
                phase = state.feed(line)
                if phase is not None:
                    self._phase(phase, "mock")
            lines = build_log.flush() if final else build_log.read_new()
            if lines:
                progress.log(*lines)

        try:
            result = _run_backend(
                argv, timeout=self._timeout(), on_poll=follow,
                log_file=self.result_dir / CONSOLE_LOG,
            )
        finally:
            follow(final=True)
        return self._outcome(result, [])

    def _run_rpmbuild(self, rpmbuild: str, srpm: Path) -> tuple[str, str]:
        ignored = ignored_by_rpmbuild(self.options)
        if ignored:
            progress.log(f"rpmbuild backend: ignoring mock-only option(s) {', '.join(ignored)}")
        copy = self.result_dir / srpm.name
        try:
            if copy != srpm:
                shutil.copyfile(srpm, copy)
            self.settings.work_root.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=f"{self.source.pkgname}-", dir=self.settings.work_root))
        except OSError as exc:
            raise BuildStopped(INFRA_ERROR, f"cannot prepare the rpmbuild work area: {exc}") from None
        before_sections: list[str] = []  # what rpmbuild_status reads; bounded by the first section
        sections_started = False

        def on_line(line: str) -> None:
            nonlocal sections_started
            progress.log(line)
            section = parse_rpmbuild_section(line)
            if section is not None:
                sections_started = True
                self._phase(section, "rpmbuild")
            elif not sections_started and is_srpm_problem(line, srpm.name):
                before_sections.append(line)

        try:
            result = _run_backend(
                rpmbuild_argv(rpmbuild, srpm, workdir, self.result_dir, self.options),
                env={**os.environ, "LC_ALL": "C.UTF-8"},
                timeout=self._timeout(),
                on_line=on_line,
                log_file=self.result_dir / BUILD_LOG,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return self._outcome(result, before_sections)

    def _outcome(self, result: process.ProcessResult, lines: list[str]) -> tuple[str, str]:
        self.returncode = result.returncode
        self.console_tail = result.tail[-LOG_TAIL_LINES:]
        status = final_status(
            self.backend, result.returncode, result.timed_out, result.cancelled, lines, self.source.filename
        )
        if status == CANCELLED:
            return status, "cancelled by the caller"
        if status == TIMEOUT:
            return status, f"timed out after {self._timeout():g} s"
        return status, f"{self.backend} exited with {result.returncode}"

    def _finish(self, status: str, message: str) -> dict[str, Any]:
        packages: list[dict[str, Any]] = []
        log_tail: list[str] = []
        if status == SUCCEEDED:
            packages = self._packages()
            write_results_json(self.result_dir, packages)
            write_success(self.result_dir)
        else:
            log_tail = tail_lines(self.result_dir / BUILD_LOG) or self.console_tail
        self._phase("finish", status)
        return {
            "status": status,
            "backend": self.backend,
            "chroot": self.chroot.label,
            "result_dir": str(self.result_dir),
            "returncode": self.returncode,
            "duration": round(time.monotonic() - self.started, 3),
            "packages": packages,
            "log_tail": log_tail,
            "message": message,
        }

    def _packages(self) -> list[dict[str, Any]]:
        entries = (self._package(path) for path in sorted(self.result_dir.glob("*.rpm")))
        return [entry for entry in entries if entry is not None]

    def _package(self, path: Path) -> dict[str, Any] | None:
        """Read the header with ``rpm -qp``; fall back to the file name if rpm cannot."""
        try:
            completed = subprocess.run(
                [self.settings.rpm_command, "-qp", "--qf", RPM_QUERY_FORMAT, str(path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env={**os.environ, "LC_ALL": "C.UTF-8"},
            )
            if completed.returncode == 0:
                return package_entry(completed.stdout.strip(), path.name)
            reason = completed.stderr.strip()
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            reason = str(exc)
        progress.log(f"warning: cannot read the header of {path.name} ({reason}); using its file name")
        try:
            return package_entry_from_filename(path.name)
        except ValueError as exc:
            progress.log(f"warning: {exc}; left out of {RESULTS_JSON}")
            return None


def _run_backend(argv: list[str], **kwargs: Any) -> process.ProcessResult:
    """process.run, with a backend that cannot be started reported as a config error."""
    try:
        return process.run(argv, **kwargs)
    except OSError as exc:
        raise BuildStopped(CONFIG_ERROR, f"cannot run {argv[0]}: {exc.strerror or exc}") from None


# --- the module ---------------------------------------------------------------------------------


class Mock(FuncModule):
    version = "0.1.0"
    api_version = "0.1.0"
    description = "Rebuilds SRPMs with mock (or rpmbuild) into a Copr-style result tree."

    class Config(FuncModule.Config):
        backend = "auto"
        mock_command = "mock"
        rpmbuild_command = "rpmbuild"
        rpm_command = "rpm"
        result_root = ""
        work_root = ""
        download_limit_bytes = 1073741824
        download_timeout = 600
        default_timeout = 3600
        config_dirs = ["/etc/mock", "~/.config/mock"]

    def _settings(self) -> Settings:
        """Typed options; empty ``result_root``/``work_root`` mean under the state dir."""
        return settings_from(self.options, current_paths().state_dir)

    def build(self, srpm: str, chroot: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rebuild ``srpm`` for ``chroot``; the result dict tells how it went.

        ``status`` is one of succeeded, build_failed, deps_or_srpm_failed,
        config_error, infra_error, timeout, cancelled. Raises ArgumentError only.
        """
        started = time.monotonic()
        build_options = parse_options(options)
        source = parse_srpm(srpm)
        target = parse_chroot(chroot)
        settings = self._settings()
        try:
            result_dir = reserve_result_dir(settings.result_root, target.label, source.pkgname, build_options)
        except OSError as exc:
            raise errors.ConfigError(
                f"mock module: cannot create a result directory under {settings.result_root}: {exc}"
            ) from None
        return _Build(settings, build_options, source, target, result_dir, started).run()

    def list_chroots(self) -> list[str]:
        """The mock config names found in ``config_dirs``, sorted.

        Whatever exists is listed, whichever backend runs: on a host without mock this
        is usually []. The rpmbuild backend accepts any valid chroot name as a label.
        """
        return find_chroots(self._settings().config_dirs)

    def register_method_args(self) -> dict[str, Any]:
        return {
            "build": {
                "args": {
                    "srpm": {
                        "type": "string",
                        "optional": False,
                        "description": "http(s):// or file:// URL, or absolute path, of a .src.rpm",
                    },
                    "chroot": {
                        "type": "string",
                        "optional": False,
                        "description": "mock config name (fedora-40-x86_64) or absolute .cfg path",
                    },
                    "options": {
                        "type": "hash",
                        "optional": True,
                        "default": None,
                        "description": (
                            "uniqueext, no_clean, enable_network, define, with, without, "
                            "isolation, bootstrap_chroot, timeout, build_id, owner, project"
                        ),
                    },
                },
                "description": "Rebuild an SRPM with mock or rpmbuild into a Copr-style result dir",
            },
            "list_chroots": {"args": {}, "description": "Names of the mock configs on the minion"},
        }
