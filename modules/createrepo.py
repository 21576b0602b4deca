"""func's ``createrepo`` module: create, update and check yum/dnf repositories with
createrepo_c, the way Copr's ``copr-repo`` does it for a build farm.

``update`` runs the ``createrepo_c`` command with explicit, version-independent
options (``--no-database``, ``--general-compress-type=gz``), adds build result
directories incrementally, and removes deleted builds from disk only after the new
metadata is in place, so a client never sees metadata that points at missing files.

Incremental runs pass an explicit, complete package list (what the current metadata
lists, minus the deletions, plus the new RPMs) instead of ``--recycle-pkglist``:
createrepo_c 1.x lists a package twice when it is both recycled and in the list, and
an explicit list does not depend on what a given version matches ``--excludes``
patterns against. Deletions are still passed as ``--excludes`` too, as Copr does.

Concurrent calls on one repository serialize on an ``fcntl.flock`` of
``<repo>/.func-createrepo.lock``; that is what makes ``--ignore-lock`` safe.
After every run the result is read back with the createrepo_c bindings and checked.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import os
import posixpath
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from func_amqp.errors import ArgumentError, FuncException
from func_amqp.minion import process, progress
from func_amqp.minion.modules.func_module import FuncModule

LOCK_NAME = ".func-createrepo.lock"
PKGLIST_PREFIX = ".func-createrepo-pkglist-"
PRUNE_LOG = "prune.log"
REPOMD = "repodata/repomd.xml"
COMPS = "comps.xml"
# Top-level names an add/delete entry may not start with: createrepo_c's own output.
RESERVED = frozenset({"repodata", ".repodata", LOCK_NAME})
# createrepo_c's --excludes patterns treat these as wildcards; entries are plain paths.
GLOB_CHARS = frozenset("*?")
BASE_OPTIONS = ("--no-database", "--general-compress-type=gz", "--ignore-lock")
LOCK_POLL = 0.1
TAIL_SHOWN = 20
PROBLEMS_SHOWN = 10


class CreaterepoError(FuncException):
    """Base of this module's failures."""


class CreaterepoNotFound(CreaterepoError):
    """The createrepo_c command or its Python bindings are not installed."""


class CreaterepoFailed(CreaterepoError):
    """createrepo_c exited with an error or ran out of time; nothing was removed."""


class RepositoryBusy(CreaterepoError):
    """Another call held the repository's lock for longer than ``lock_timeout``."""


class RepositoryCheckFailed(CreaterepoError):
    """The repository's metadata is unreadable or does not match the files on disk."""


# --- validating what callers send ------------------------------------------------------


def validate_repo_dir(repo_dir: Any) -> Path:
    """The resolved path of ``repo_dir``, which must be an absolute existing directory.

    Resolving once here means every later containment check compares real paths.
    """
    if not isinstance(repo_dir, (str, os.PathLike)):
        raise ArgumentError(f"repo_dir must be a path string, got {type(repo_dir).__name__}")
    text = os.fspath(repo_dir)
    if not isinstance(text, str) or not text:
        raise ArgumentError("repo_dir must be a non-empty path string")
    if _has_control_chars(text):
        raise ArgumentError(f"repo_dir {text!r} contains control characters")
    if not os.path.isabs(text):
        raise ArgumentError(f"repo_dir {text!r} must be an absolute path")
    if not os.path.isdir(text):
        raise ArgumentError(f"repo_dir {text!r} is not an existing directory")
    return Path(os.path.realpath(text))


def validate_entries(repo: Path, entries: Any, *, kind: str, must_exist: bool) -> list[str]:
    """``entries`` (a list of paths relative to ``repo``) normalized, without duplicates."""
    if entries is None:
        return []
    if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
        raise ArgumentError(f"{kind} must be a list of paths, got {type(entries).__name__}")
    result: list[str] = []
    for entry in entries:
        normalized = validate_entry(repo, entry, kind=kind, must_exist=must_exist)
        if normalized not in result:
            result.append(normalized)
    return result


def validate_entry(repo: Path, entry: Any, *, kind: str, must_exist: bool) -> str:
    """One sub-directory or RPM path, normalized; ArgumentError naming it if hostile.

    The path must stay inside ``repo`` once symlinks are resolved, so a caller can
    neither add files from elsewhere nor delete them.
    """
    normalized = _normalize_entry(entry, kind)
    target = repo / normalized
    if not _inside(repo, target):
        raise ArgumentError(f"{kind} entry {entry!r} leads outside the repository")
    if os.path.lexists(target):
        _check_entry_type(target, entry, kind)
    elif must_exist:
        raise ArgumentError(f"{kind} entry {entry!r} does not exist in the repository")
    return normalized


def _normalize_entry(entry: Any, kind: str) -> str:
    """The syntactic checks: relative, no '..', no control or wildcard characters."""
    if not isinstance(entry, str) or not entry:
        raise ArgumentError(f"{kind} entries must be non-empty strings, got {entry!r}")
    if _has_control_chars(entry):
        raise ArgumentError(f"{kind} entry {entry!r} contains control characters")
    if entry.startswith("/"):
        raise ArgumentError(f"{kind} entry {entry!r} must be relative to the repository")
    if ".." in entry.split("/"):
        raise ArgumentError(f"{kind} entry {entry!r} must not contain '..'")
    if GLOB_CHARS & set(entry):
        raise ArgumentError(f"{kind} entry {entry!r} must not contain '*' or '?'")
    normalized = posixpath.normpath(entry)
    if normalized == ".":
        raise ArgumentError(f"{kind} entry {entry!r} names the repository itself")
    if normalized.startswith("-"):
        raise ArgumentError(f"{kind} entry {entry!r} must not start with '-'")
    if normalized.split("/")[0] in RESERVED:
        raise ArgumentError(f"{kind} entry {entry!r} names createrepo's own files")
    return normalized


def _check_entry_type(target: Path, entry: str, kind: str) -> None:
    if not (target.is_dir() or (target.is_file() and target.name.endswith(".rpm"))):
        raise ArgumentError(f"{kind} entry {entry!r} is neither a directory nor an RPM file")


def _has_control_chars(text: str) -> bool:
    return any(ord(char) < 32 or ord(char) == 127 for char in text)


def _inside(repo: Path, path: Path) -> bool:
    """Whether ``path`` is strictly inside the (resolved) ``repo`` once resolved."""
    return os.path.realpath(path).startswith(str(repo) + os.sep)


# --- finding packages on disk ----------------------------------------------------------


def find_rpms(repo: Path, entry: str = ".", *, strict: bool = False) -> list[str]:
    """Paths relative to ``repo`` of the RPMs at or under ``entry``, sorted.

    ``strict`` (for a package list): each must be a regular file, fit on one line and
    stay inside the repository, or ArgumentError names it.
    """
    top = repo / entry
    paths = [top] if top.is_file() else list(_walk_rpms(repo, top))
    found = [path.relative_to(repo).as_posix() for path in paths]
    if strict:
        for path, relative in zip(paths, found):
            _check_rpm(repo, path, relative)
    return sorted(found)


def _walk_rpms(repo: Path, top: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(top):
        if Path(root) == repo:
            dirs[:] = [d for d in dirs if d not in RESERVED]
        yield from (Path(root) / name for name in files if name.endswith(".rpm"))


def _check_rpm(repo: Path, path: Path, relative: str) -> None:
    if _has_control_chars(relative):
        raise ArgumentError(f"RPM file {relative!r} has control characters in its name")
    if not _inside(repo, path):
        raise ArgumentError(f"RPM file {relative!r} is a symlink leading outside the repository")
    if not path.is_file():
        raise ArgumentError(f"RPM file {relative!r} is not a regular file")


def is_deleted(href: str, deleted: Iterable[str]) -> bool:
    """Whether package path ``href`` is, or is under, one of the ``deleted`` entries."""
    return any(href == entry or href.startswith(entry + "/") for entry in deleted)


# --- planning a run and its command line -----------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One createrepo_c run, decided before it starts."""

    repo: Path
    update: bool
    add: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()
    pkglist: tuple[str, ...] | None = None
    excludes: tuple[str, ...] = ()
    groupfile: Path | None = None

    @property
    def incremental(self) -> bool:
        return self.pkglist is not None


def plan_run(
    repo: Path, add: Sequence[str], delete: Sequence[str], listed: Sequence[str] | None
) -> Plan:
    """What to run, given the entries and what the current metadata lists (None: no
    metadata yet). Neither add nor delete means a full run over the whole directory."""
    groupfile = repo / COMPS if (repo / COMPS).is_file() else None
    update = listed is not None
    if not add and not delete:
        return Plan(repo, update, groupfile=groupfile)
    kept_add = tuple(entry for entry in add if not is_deleted(entry, delete))
    return Plan(
        repo,
        update,
        add=kept_add,
        delete=tuple(delete),
        pkglist=pkglist_for(repo, kept_add, delete, listed or ()),
        excludes=tuple(exclude_patterns(repo, delete)),
        groupfile=groupfile,
    )


def pkglist_for(
    repo: Path, add: Sequence[str], delete: Sequence[str], listed: Sequence[str]
) -> tuple[str, ...]:
    """The complete package list of an incremental run: the listed packages still on
    disk and not deleted, plus the RPMs under the added entries."""
    kept = {href for href in listed if _inside(repo, repo / href) and (repo / href).is_file()}
    for entry in add:
        kept.update(find_rpms(repo, entry, strict=True))
    return tuple(sorted(href for href in kept if not is_deleted(href, delete)))


def exclude_patterns(repo: Path, delete: Sequence[str]) -> list[str]:
    """``--excludes`` patterns for the deleted entries: an RPM path as is, a
    directory as ``DIR/*`` (anchored, so ``1-foo`` does not also drop ``11-foo``)."""
    patterns = []
    for entry in delete:
        is_rpm = entry.endswith(".rpm") and not (repo / entry).is_dir()
        patterns.append(entry if is_rpm else f"{entry}/*")
    return patterns


def build_argv(command: str, plan: Plan, pkglist_file: str | None = None) -> list[str]:
    """The createrepo_c command line: ``--opt=value`` forms and ``--`` before the
    directory, so no value can be taken for an option."""
    argv = [command, *BASE_OPTIONS]
    if plan.update:
        argv += ["--update", "--skip-stat"]
    if pkglist_file is not None:
        argv.append(f"--pkglist={pkglist_file}")
    argv += [f"--excludes={pattern}" for pattern in plan.excludes]
    if plan.groupfile is not None:
        argv.append(f"--groupfile={plan.groupfile}")
    return [*argv, "--", str(plan.repo)]


def find_command(command: str) -> str:
    """The createrepo_c executable: a path as given, else the one installed next to
    this Python (a venv's bin/, where the PyPI wheel puts it), else from PATH."""
    if not command:
        raise CreaterepoNotFound("createrepo_command is empty")
    if os.sep in command:
        path = os.path.expanduser(command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        raise CreaterepoNotFound(f"createrepo_command {command!r} is not an executable file")
    beside = Path(sys.executable).parent / command
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(command)
    if found is None:
        raise CreaterepoNotFound(
            f"cannot find {command!r}: install createrepo_c ('pip install createrepo-c' "
            "next to the minion's Python, or the distribution's createrepo-c package), "
            "or set createrepo_command in the Createrepo module's options"
        )
    return found


# --- locking ---------------------------------------------------------------------------


@contextmanager
def repo_lock(repo: Path, *, exclusive: bool, timeout: float) -> Iterator[None]:
    """Hold ``repo``'s lock file: exclusively to change the repository, shared to read it.

    A shared lock on a repository where the lock file cannot be created (read-only)
    is skipped: nobody can be updating it through this module either.
    """
    fd = _open_lock_file(repo / LOCK_NAME, exclusive)
    if fd is None:
        yield
        return
    try:
        _acquire(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, timeout, repo)
        yield
    finally:
        os.close(fd)


def _open_lock_file(path: Path, required: bool) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        if required:
            raise CreaterepoError(f"cannot open the lock file {path}: {exc}") from None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _acquire(fd: int, mode: int, timeout: float, repo: Path) -> None:
    """Poll rather than block, so a cancel or the timeout can end the wait."""
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not waiting:
            waiting = True
            progress.report("waiting for lock", message=str(repo))
        progress.check_cancelled()
        if time.monotonic() >= deadline:
            raise RepositoryBusy(
                f"{repo} is still locked by another createrepo call after {timeout:g} s"
            )
        time.sleep(LOCK_POLL)


# --- reading and checking the result ---------------------------------------------------


@dataclass(frozen=True)
class RepoState:
    """What a repository's metadata says."""

    revision: str
    packages: tuple[str, ...]


def _bindings() -> Any:
    """The createrepo_c Python bindings, imported on first use so that a minion
    without them still loads and says what is missing when called."""
    try:
        import createrepo_c
    except ImportError as exc:
        raise CreaterepoNotFound(
            "the createrepo_c Python bindings are missing: 'pip install createrepo-c'"
        ) from exc
    return createrepo_c


def read_metadata(repo: Path) -> RepoState:
    """Parse repomd.xml and the primary metadata, checking every record's file.

    Raises RepositoryCheckFailed on anything missing, corrupt or unreadable.
    """
    cr = _bindings()
    errors = (OSError, getattr(cr, "CreaterepoCError", OSError))
    repomd = repo / REPOMD
    if not repomd.is_file():
        raise RepositoryCheckFailed(f"{repo} has no {REPOMD}")
    try:
        md = cr.Repomd(str(repomd))
    except errors as exc:
        raise RepositoryCheckFailed(f"cannot read {repomd}: {exc}") from None
    records = {record.type: record for record in md.records}
    problems = [problem for record in md.records for problem in _record_problems(repo, record)]
    if "primary" not in records:
        problems.append(f"{REPOMD} has no primary record")
    _raise_if(problems, repo, "metadata is damaged")
    packages: list[str] = []
    primary = repo / records["primary"].location_href
    try:
        cr.xml_parse_primary(
            str(primary), pkgcb=lambda pkg: packages.append(pkg.location_href) or True,
            do_files=False,
        )
    except errors as exc:
        raise RepositoryCheckFailed(f"cannot parse {primary}: {exc}") from None
    return RepoState(str(md.revision), tuple(packages))


def _record_problems(repo: Path, record: Any) -> list[str]:
    """Why one repomd record's file is unusable: missing, or a checksum mismatch."""
    path = repo / record.location_href
    if not path.is_file():
        return [f"{record.type} file {record.location_href} is missing"]
    expected = (record.checksum or "").lower()
    actual = _file_digest(path, record.checksum_type or "")
    if expected and actual is not None and actual != expected:
        return [f"{record.type} file {record.location_href} does not match its checksum"]
    return []


def _file_digest(path: Path, checksum_type: str) -> str | None:
    """Hex digest of ``path``; None for a checksum type hashlib does not know."""
    name = {"sha": "sha1"}.get(checksum_type.lower(), checksum_type.lower())
    try:
        digest = hashlib.new(name)
    except ValueError:
        return None
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_problems(
    repo: Path,
    packages: Sequence[str],
    expected: Iterable[str] = (),
    deleted: Sequence[str] = (),
) -> list[str]:
    """Why the listed ``packages`` do not fit the disk and what the run should give."""
    problems = []
    seen: set[str] = set()
    for href in packages:
        if href in seen:
            problems.append(f"{href} is listed more than once")
        seen.add(href)
        if not (repo / href).is_file():
            problems.append(f"{href} is listed but missing on disk")
        if is_deleted(href, deleted):
            problems.append(f"{href} is listed although it was deleted")
    problems += [f"{href} is not listed" for href in sorted(set(expected) - seen)]
    return problems


def _raise_if(problems: Sequence[str], repo: Path, what: str) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:PROBLEMS_SHOWN])
    hidden = len(problems) - PROBLEMS_SHOWN
    more = f" (and {hidden} more)" if hidden > 0 else ""
    raise RepositoryCheckFailed(f"repository {repo}: {what}: {shown}{more}")


def summary(repo_dir: str, state: RepoState, started: float) -> dict[str, Any]:
    """The result shape shared by update and check."""
    return {
        "repo_dir": repo_dir,
        "revision": state.revision,
        "package_count": len(state.packages),
        "packages": sorted(state.packages),
        "duration": round(time.monotonic() - started, 3),
    }


def current_packages(repo: Path, incremental: bool) -> list[str] | None:
    """The packages the current metadata lists; None when there is none to update.

    Damaged metadata makes a full run start from scratch: createrepo_c's --update
    would keep it as it is ("New and old repodata match"). An incremental run has
    no list to start from, so it refuses.
    """
    if not (repo / REPOMD).exists():
        return None
    progress.report("reading metadata", message=str(repo))
    try:
        return list(read_metadata(repo).packages)
    except RepositoryCheckFailed as exc:
        if incremental:
            raise RepositoryCheckFailed(
                f"{exc}; call update without add/delete to rebuild the metadata"
            ) from None
        progress.log(f"current metadata unusable, rebuilding it: {exc}")
        return None


# --- running and pruning ---------------------------------------------------------------


def run_createrepo(command: str, plan: Plan, timeout: float) -> None:
    """Run createrepo_c for ``plan``; raise with the tail of its output if it fails."""
    with _pkglist_file(plan) as pkglist_file:
        argv = build_argv(command, plan, pkglist_file)
        progress.report("createrepo", message=" ".join(argv))
        try:
            result = process.run(argv, cwd=plan.repo, timeout=timeout, on_line=progress.log)
        except OSError as exc:
            raise CreaterepoFailed(f"cannot start {command}: {exc}") from None
    if result.returncode == 0 and not result.timed_out:
        return
    if result.cancelled:
        raise progress.CallCancelled(
            f"createrepo_c on {plan.repo} was cancelled; nothing was removed"
        )
    tail = "\n".join(result.tail[-TAIL_SHOWN:])
    if result.timed_out:
        reason = f"timed out after {timeout:g} s"
    else:
        reason = f"exited with {result.returncode}"
    raise CreaterepoFailed(
        f"createrepo_c {reason} on {plan.repo}; nothing was removed. Last output:\n{tail}"
    )


@contextmanager
def _pkglist_file(plan: Plan) -> Iterator[str | None]:
    """The plan's package list in a hidden temporary file of the repository, removed after."""
    if plan.pkglist is None:
        yield None
        return
    fd, name = tempfile.mkstemp(prefix=PKGLIST_PREFIX, dir=plan.repo)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(f"{href}\n" for href in plan.pkglist)
        yield name
    finally:
        os.unlink(name)


def prune(repo: Path, delete: Sequence[str], logger: Any) -> None:
    """Remove the deleted entries from disk and log each removal to prune.log.

    A failure is logged, not raised: the metadata no longer lists the files, so the
    repository is consistent and only disk space is left behind.
    """
    with open(repo / PRUNE_LOG, "a", encoding="utf-8") as log:
        for entry in delete:
            path = repo / entry
            if not os.path.lexists(path):
                continue
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            try:
                _remove(path)
            except OSError as exc:
                logger.warning("cannot remove %s: %s", path, exc)
                log.write(f"{stamp} failed to remove {entry}: {exc}\n")
                continue
            log.write(f"{stamp} removed {entry}\n")
            progress.log(f"removed {entry}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# --- the module ------------------------------------------------------------------------

_REPO_ARG = {
    "type": "string",
    "optional": False,
    "description": "Absolute path of the repository directory",
}


class Createrepo(FuncModule):
    version = "0.1.0"
    api_version = "0.1.0"
    description = "Creates, updates and checks yum/dnf repositories with createrepo_c."

    class Config(FuncModule.Config):
        createrepo_command = "createrepo_c"
        timeout = 3600
        lock_timeout = 3600

    def update(
        self, repo_dir: str, add: list[str] | None = None, delete: list[str] | None = None
    ) -> dict[str, Any]:
        """Create or update the repository in ``repo_dir``; return the checked summary.

        ``add``: sub-directories (or RPMs) whose packages join the metadata.
        ``delete``: sub-directories (or RPMs) dropped from the metadata, then from disk.
        Neither: a full run over every RPM in the directory.
        """
        started = time.monotonic()
        repo = validate_repo_dir(repo_dir)
        add_entries = validate_entries(repo, add, kind="add", must_exist=True)
        delete_entries = validate_entries(repo, delete, kind="delete", must_exist=False)
        command = find_command(self.options.createrepo_command)
        _bindings()  # missing bindings must fail before anything changes
        incremental = bool(add_entries or delete_entries)
        with repo_lock(repo, exclusive=True, timeout=float(self.options.lock_timeout)):
            listed = current_packages(repo, incremental)
            plan = plan_run(repo, add_entries, delete_entries, listed)
            run_createrepo(command, plan, float(self.options.timeout))
            progress.report("checking", message=str(repo))
            state = read_metadata(repo)
            expected = plan.pkglist if plan.pkglist is not None else find_rpms(repo)
            problems = package_problems(repo, state.packages, expected, plan.delete)
            _raise_if(problems, repo, "the new metadata does not match the packages")
            if plan.delete:
                progress.report("pruning", message=str(repo))
                prune(repo, plan.delete, self.logger)
        result = summary(os.fspath(repo_dir), state, started)
        result.update(added=list(plan.add), deleted=list(plan.delete))
        return result

    def check(self, repo_dir: str) -> dict[str, Any]:
        """Verify the repository's metadata against the disk without changing anything.

        Raises RepositoryCheckFailed on a damaged repository. ``unlisted`` names the
        RPMs on disk that no update has added yet (a build in progress, say).
        """
        started = time.monotonic()
        repo = validate_repo_dir(repo_dir)
        with repo_lock(repo, exclusive=False, timeout=float(self.options.lock_timeout)):
            progress.report("checking", message=str(repo))
            state = read_metadata(repo)
            _raise_if(package_problems(repo, state.packages), repo, "packages do not match")
            unlisted = sorted(set(find_rpms(repo)) - set(state.packages))
        result = summary(os.fspath(repo_dir), state, started)
        result["unlisted"] = unlisted
        return result

    def register_method_args(self) -> dict[str, Any]:
        return {
            "update": {
                "args": {
                    "repo_dir": _REPO_ARG,
                    "add": {
                        "type": "list",
                        "optional": True,
                        "default": None,
                        "description": "Sub-directories (relative) whose RPMs to add",
                    },
                    "delete": {
                        "type": "list",
                        "optional": True,
                        "default": None,
                        "description": "Sub-directories or RPMs (relative) to remove",
                    },
                },
                "description": "Create or update a repository with createrepo_c and check it",
            },
            "check": {
                "args": {"repo_dir": _REPO_ARG},
                "description": "Check a repository's metadata against its files",
            },
        }
