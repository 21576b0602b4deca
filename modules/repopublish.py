"""``repopublish``: index pages and Copr-style ``.repo`` files for a results tree.

The tree is the one Copr's backend keeps (``<owner or @group>/<project>/<chroot>/``
with ``repodata/`` and one ``<%08d id>-<pkgname>/`` folder per build). Web servers
only list folders; this module writes what users need to consume the repositories:

- ``index.html`` at the top (the owners), per owner (its projects) and per project
  (its chroots, their ``.repo`` files and the packages of successful builds);
- ``<owner>/<project>/<owner>-<project>-<chroot>.repo`` per chroot, in the format of
  Copr's ``copr_dir.repo`` template. ``baseurl`` names the chroot literally rather
  than through ``$releasever``/``$basearch``: our chroots are concrete folders, and
  a file per chroot already pins the release and the architecture.

Everything read from disk is untrusted. Owner, project and chroot names must match
strict patterns or they are skipped with a reason in the result, never rendered and
never joined into a path. Package fields from ``results.json`` reach HTML only
through Jinja2's autoescape. Symbolic links are followed only when they stay inside
``results_root``; owner and project folders, which receive pages, must be real
folders, and pages are written through folder descriptors opened without following
links, so no write lands outside the tree. Pages carry no timestamp, so publishing
an unchanged tree rewrites nothing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jinja2

from func_amqp.errors import ArgumentError
from func_amqp.minion import progress
from func_amqp.minion.modules.func_module import FuncModule

TEMPLATE_DIR = Path(__file__).resolve().parent / "repopublish_templates"
REPO_TEMPLATE = "repo.j2"
INDEX = "index.html"
PUBKEY = "pubkey.gpg"
MAX_NAME = 100
MAX_RESULTS_JSON = 1024 * 1024
FILE_MODE = 0o644

OWNER_RE = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
BUILD_DIR_RE = re.compile(r"(\d{8,15})-[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")  # %08d of ids below 10**15, as mock.py

# http(s)://host[:port][/path]: a DNS name, IPv4 or [IPv6] host, no user info, no
# query or fragment, and a path without quotes, blanks, controls or '$' (which dnf
# would expand as a variable).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
BASE_URL_RE = re.compile(
    rf"https?://(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
    r"(?:/(?:[A-Za-z0-9._~!&()*+,;=:@/-]|%[0-9A-Fa-f]{2})*)?",
    re.IGNORECASE,
)
MAX_BASE_URL = 2048

_PACKAGE_FIELDS = ("name", "epoch", "version", "release", "arch")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted where a page goes must not hang the call.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


# --- the published model ------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """One package of a successful build, as its results.json describes it."""

    name: str
    evr: str
    arch: str
    build_id: int
    build_dir: str


@dataclass
class Chroot:
    name: str
    repo_file: str
    baseurl: str
    packages: list[Package] = field(default_factory=list)


@dataclass
class Project:
    owner: str
    name: str
    pubkey: bool
    chroots: list[Chroot] = field(default_factory=list)


@dataclass
class Owner:
    name: str
    projects: list[Project] = field(default_factory=list)


# --- the module -------------------------------------------------------------------------


class Repopublish(FuncModule):
    version = "1.0.0"
    api_version = "1.0.0"
    description = "Publishes index pages and Copr-style .repo files for a results tree."

    def publish(self, results_root: str, base_url: str) -> dict[str, Any]:
        """Regenerate every index page and .repo file under ``results_root``.

        ``base_url`` is the URL at which ``results_root`` is served; .repo files
        need absolute URLs because dnf fetches them from anywhere.
        """
        root = checked_root(results_root)
        base = checked_base_url(base_url)
        tree = Tree(root, base)
        progress.report("scan", message=str(root))
        owners = tree.scan()
        publisher = Publisher(tree.root, base, tree.skipped)
        projects = [project for owner in owners for project in owner.projects]
        for number, project in enumerate(projects, start=1):
            progress.check_cancelled()
            progress.report(
                "publish", number, len(projects), f"{project.owner}/{project.name}"
            )
            publisher.project(project)
        for owner in owners:
            publisher.owner(owner)
        publisher.root_index(owners)
        for reason in tree.skipped:
            self.logger.warning("repopublish: %s", reason)
        return {
            "results_root": str(root),
            "base_url": base,
            "owners": len(owners),
            "projects": len(projects),
            "repo_files": sorted(publisher.repo_files),
            "index_pages": sorted(publisher.index_pages),
            "skipped": tree.skipped,
        }

    def register_method_args(self) -> dict[str, Any]:
        return {
            "publish": {
                "args": {
                    "results_root": {
                        "type": "string",
                        "optional": False,
                        "description": "Absolute path of the results tree "
                        "(<owner>/<project>/<chroot>/repodata)",
                    },
                    "base_url": {
                        "type": "string",
                        "optional": False,
                        "description": "http(s) URL at which results_root is served",
                    },
                },
                "description": "Regenerate the index pages and .repo files of a "
                "Copr-style results tree",
            },
        }


# --- arguments ----------------------------------------------------------------------------


def checked_root(results_root: Any) -> Path:
    """The real path of ``results_root``; it must be an existing absolute folder."""
    if not isinstance(results_root, str) or not results_root:
        raise ArgumentError("results_root must be a non-empty string")
    if "\0" in results_root or not os.path.isabs(results_root):
        raise ArgumentError(f"results_root must be an absolute path, got {results_root!r}")
    if not os.path.isdir(results_root):
        raise ArgumentError(f"results_root {results_root!r} is not an existing directory")
    return Path(os.path.realpath(results_root))


def checked_base_url(base_url: Any) -> str:
    """``base_url`` without trailing slashes; it must be a plain http(s) URL."""
    if not isinstance(base_url, str) or len(base_url) > MAX_BASE_URL:
        raise ArgumentError("base_url must be a string of at most 2048 characters")
    if not BASE_URL_RE.fullmatch(base_url):
        raise ArgumentError(
            f"base_url must look like http(s)://host[:port][/path] without blanks, "
            f"quotes, control characters, query or fragment; got {base_url!r}"
        )
    try:
        urlsplit(base_url).port
    except ValueError as exc:
        raise ArgumentError(f"base_url {base_url!r} has an invalid port: {exc}") from None
    scheme, rest = base_url.split("://", 1)
    return f"{scheme.lower()}://{rest.rstrip('/')}"


def repo_id(base_url: str, owner: str, project: str) -> str:
    """Copr's section name: ``copr:<host>:<owner, @ as group_>:<project>``."""
    host = urlsplit(base_url).hostname or ""
    return f"copr:{host}:{owner.replace('@', 'group_')}:{project}"


def repo_file_name(owner: str, project: str, chroot: str) -> str:
    return f"{owner}-{project}-{chroot}.repo"


def valid_name(name: str, pattern: re.Pattern[str]) -> bool:
    return len(name) <= MAX_NAME and pattern.fullmatch(name) is not None


def reserved_name(name: str) -> bool:
    """Names of files this module writes: a folder so named would block the write."""
    return name in (INDEX, PUBKEY) or name.endswith(".repo")


# --- reading the tree ---------------------------------------------------------------------


class Tree:
    """Walks the results tree, keeping what is safe to publish and why the rest is not."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root
        self.base_url = base_url
        self.skipped: list[str] = []

    def scan(self) -> list[Owner]:
        """Owners that have at least one project with at least one chroot."""
        owners = []
        for name in self._folders(PurePosixPath(), "owner", OWNER_RE, writable=True):
            owner = Owner(name, self._projects(name))
            if owner.projects:
                owners.append(owner)
        return owners

    def _projects(self, owner: str) -> list[Project]:
        projects = []
        for name in self._folders(PurePosixPath(owner), "project", NAME_RE, writable=True):
            relative = PurePosixPath(owner, name)
            pubkey = self._regular_file(relative / PUBKEY) is not None
            project = Project(owner, name, pubkey, self._chroots(owner, name))
            if project.chroots:
                projects.append(project)
        return projects

    def _chroots(self, owner: str, project: str) -> list[Chroot]:
        chroots = []
        relative = PurePosixPath(owner, project)
        for name in self._folders(relative, "chroot", NAME_RE, writable=False):
            if self._regular_file(relative / name / "repodata" / "repomd.xml") is None:
                continue
            chroots.append(
                Chroot(
                    name=name,
                    repo_file=repo_file_name(owner, project, name),
                    baseurl=f"{self.base_url}/{owner}/{project}/{name}/",
                    packages=self._packages(relative / name),
                )
            )
        return chroots

    def _packages(self, chroot: PurePosixPath) -> list[Package]:
        """Packages of the successful builds in ``chroot``, by name, arch and build."""
        packages: list[Package] = []
        for entry in self._entries(chroot):
            if not entry.name[:1].isdigit() or not entry.is_dir():
                continue
            relative = chroot / entry.name
            if not BUILD_DIR_RE.fullmatch(entry.name):
                self.skip(f"build {relative.parent}/{entry.name!r}: invalid name")
                continue
            if not self._inside(relative, "build", allow_link=True):
                continue
            if self._regular_file(relative / "success") is None:
                continue
            build_id = int(entry.name.split("-", 1)[0])
            packages.extend(self._results(relative, build_id))
        return sorted(packages, key=lambda p: (p.name, p.arch, p.evr, p.build_id))

    def _results(self, build: PurePosixPath, build_id: int) -> list[Package]:
        data = self._read_json(build / "results.json")
        if data is None:
            return []
        items = data.get("packages") if isinstance(data, dict) else None
        if not isinstance(items, list):
            self.skip(f"{build}/results.json: no 'packages' list")
            return []
        packages = []
        for index, item in enumerate(items):
            package = package_from(item, build_id, build.name)
            if package is None:
                self.skip(f"{build}/results.json: package {index} has no usable name")
            else:
                packages.append(package)
        return packages

    def _read_json(self, relative: PurePosixPath) -> Any:
        path = self._regular_file(relative)
        if path is None:
            if not self._links_out(relative):  # that case is already reported
                self.skip(f"{relative}: missing or not a file, although the build succeeded")
            return None
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_RESULTS_JSON + 1)
            if len(raw) > MAX_RESULTS_JSON:
                raise ValueError(f"larger than {MAX_RESULTS_JSON} bytes")
            return json.loads(raw)
        except (OSError, ValueError, RecursionError) as exc:
            self.skip(f"{relative}: unreadable ({type(exc).__name__}: {exc})")
            return None

    def _folders(
        self, parent: PurePosixPath, kind: str, pattern: re.Pattern[str], writable: bool
    ) -> list[str]:
        """Valid sub-folder names of ``parent``; invalid ones are skipped with a reason."""
        names = []
        for entry in self._entries(parent):
            if not entry.is_dir():
                continue
            where = f"{kind} {str(parent) + '/' if parent.parts else ''}{entry.name!r}"
            if not valid_name(entry.name, pattern):
                self.skip(f"{where}: invalid name")
            elif reserved_name(entry.name):
                self.skip(f"{where}: reserved name")
            elif self._inside(parent / entry.name, kind, allow_link=not writable):
                names.append(entry.name)
        return names

    def _entries(self, relative: PurePosixPath) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(self.root / relative) as entries:
                return sorted(entries, key=lambda entry: entry.name)
        except OSError as exc:
            self.skip(f"{relative}: cannot list ({exc.strerror})")
            return []

    def _inside(self, relative: PurePosixPath, kind: str, allow_link: bool) -> bool:
        """Whether the folder is usable: a real folder, or a link kept inside the tree."""
        path = self.root / relative
        if not path.is_symlink():
            return True
        if not allow_link:
            self.skip(f"{kind} {relative}: is a symbolic link (pages are written there)")
            return False
        if self._links_out(relative):
            self.skip(f"{kind} {relative}: symbolic link out of results_root")
            return False
        return True

    def _regular_file(self, relative: PurePosixPath) -> Path | None:
        """The real path of a regular file inside the tree, or None."""
        path = self.root / relative
        if not os.path.lexists(path):
            return None
        if self._links_out(relative):
            self.skip(f"{relative}: symbolic link out of results_root")
            return None
        real = Path(os.path.realpath(path))
        return real if real.is_file() else None

    def _links_out(self, relative: PurePosixPath) -> bool:
        path = self.root / relative
        return path.is_symlink() and not self._contains(Path(os.path.realpath(path)))

    def _contains(self, real: Path) -> bool:
        return real == self.root or real.is_relative_to(self.root)

    def skip(self, reason: str) -> None:
        self.skipped.append(reason)


def package_from(item: Any, build_id: int, build_dir: str) -> Package | None:
    """A :class:`Package` from one results.json entry; fields of other types are ignored."""
    if not isinstance(item, dict):
        return None
    values = {key: field_text(item.get(key)) for key in _PACKAGE_FIELDS}
    if not values["name"]:
        return None
    return Package(
        name=values["name"],
        evr=evr(values["epoch"], values["version"], values["release"]),
        arch=values["arch"],
        build_id=build_id,
        build_dir=build_dir,
    )


def field_text(value: Any) -> str:
    """Strings and integers as text; anything else (null, bool, lists...) as ''."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, (str, int)):
        return str(value)
    return ""


def evr(epoch: str, version: str, release: str) -> str:
    """``[epoch:]version-release``, without the epoch when it is 0, as rpm prints it."""
    text = f"{version}-{release}" if release else version
    return f"{epoch}:{text}" if epoch not in ("", "0") else text


# --- writing ------------------------------------------------------------------------------


def escaped(template: str | None) -> bool:
    """Autoescape every template but the plain-text .repo one (its values are validated)."""
    return template != REPO_TEMPLATE


@functools.cache
def environment() -> jinja2.Environment:
    """The templates next to this file."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=escaped,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


class Publisher:
    """Renders the pages and .repo files and writes them, remembering what it wrote."""

    def __init__(self, root: Path, base_url: str, skipped: list[str]) -> None:
        self.root = root
        self.base_url = base_url
        self.skipped = skipped
        self.repo_files: list[str] = []
        self.index_pages: list[str] = []

    def project(self, project: Project) -> None:
        relative = PurePosixPath(project.owner, project.name)
        pubkey_url = f"{self.base_url}/{relative}/{PUBKEY}" if project.pubkey else ""
        section = repo_id(self.base_url, project.owner, project.name)
        for chroot in project.chroots:
            text = render(
                REPO_TEMPLATE,
                repo_id=section,
                owner=project.owner,
                project=project.name,
                baseurl=chroot.baseurl,
                gpgkey=pubkey_url,
            )
            if self._write(relative, chroot.repo_file, text):
                self.repo_files.append(str(relative / chroot.repo_file))
        page = render("project.html.j2", project=project, pubkey_url=pubkey_url)
        self._write_index(relative, page)

    def owner(self, owner: Owner) -> None:
        self._write_index(PurePosixPath(owner.name), render("owner.html.j2", owner=owner))

    def root_index(self, owners: list[Owner]) -> None:
        self._write_index(PurePosixPath(), render("root.html.j2", owners=owners))

    def _write_index(self, relative: PurePosixPath, text: str) -> None:
        if self._write(relative, INDEX, text):
            self.index_pages.append(str(relative / INDEX))

    def _write(self, relative: PurePosixPath, name: str, text: str) -> bool:
        """Write one file; False when a folder of that name is in the way."""
        fd = open_folder(self.root, relative)
        try:
            write_atomic(fd, name, text.encode("utf-8"))
        except IsADirectoryError:
            self.skipped.append(f"{relative / name}: not written, a folder is in the way")
            return False
        finally:
            os.close(fd)
        return True


def open_folder(root: Path, relative: PurePosixPath) -> int:
    """A descriptor of ``root/relative`` opened without following any link below root."""
    fd = os.open(root, _DIR_FLAGS)
    for part in relative.parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def write_atomic(folder_fd: int, name: str, data: bytes) -> None:
    """Replace ``name`` in one step (temp file + rename), so readers never see half a file.

    An identical file with the right mode is left alone, keeping its mtime for caches.
    """
    if unchanged(folder_fd, name, data):
        return
    temp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(
        temp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        FILE_MODE,
        dir_fd=folder_fd,
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), FILE_MODE)
            os.fsync(fh.fileno())
        os.replace(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=folder_fd)
        except FileNotFoundError:
            pass
        raise


def unchanged(folder_fd: int, name: str, data: bytes) -> bool:
    """Whether ``name`` is already a 0644 regular file holding exactly ``data``."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=folder_fd)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) != FILE_MODE:
            return False
        if info.st_size != len(data):
            return False
        return fh.read(len(data) + 1) == data
