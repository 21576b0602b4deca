"""Named groups of minions, kept in func's conf-backend groups file.

The file is INI, one section per group::

    [web]
    host = web1, web2; db*

Members are separated by commas, semicolons or whitespace, and may be shell globs
(resolved against the known minions when a spec is resolved, see ``targets``).
Group and host names are lower-cased. Editing methods follow func's ``Groups`` API:
they return ``(ok, message)`` and, unless ``save=False``, rewrite the file at once.
Options other than ``host`` in a section are kept on save; comments are not.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from func_amqp.config import parse_list
from func_amqp.errors import ConfigError

HOST_OPTION = "host"

# Group names become INI section names and appear after '@' in target specs.
_BAD_GROUP_CHARS = frozenset(" \t\r\n\f\v,;:@[]")
# Host names are stored in one separator-delimited value.
_BAD_HOST_CHARS = frozenset(" \t\r\n\f\v,;")
_NEW_FILE_MODE = 0o644

_FORMAT_HINT = (
    "the groups file is INI: one '[group]' section per group with a line "
    "'host = name1, name2; glob*'"
)

Result = tuple[bool, str]


def split_hosts(value: str) -> list[str]:
    """Members of a ``host =`` value or a ``"a;b"`` argument, lower-cased, deduplicated."""
    seen: dict[str, None] = {}
    for item in parse_list(value.replace(";", ",")):
        seen.setdefault(item.lower(), None)
    return list(seen)


def group_name_problem(name: str) -> str:
    """Why ``name`` cannot be a group name, or '' when it can."""
    if not name:
        return "a group name may not be empty"
    bad = sorted(_BAD_GROUP_CHARS.intersection(name))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"group name {name!r} may not contain {shown}"
    return ""


def host_name_problem(name: str) -> str:
    """Why ``name`` cannot be a group member, or '' when it can."""
    if not name:
        return "a host name may not be empty"
    if name.startswith("@"):
        return f"host name {name!r} may not start with '@' (groups do not nest)"
    bad = sorted(_BAD_HOST_CHARS.intersection(name))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"host name {name!r} may not contain {shown}; add several with add_hosts_to_group"
    return ""


class Groups:
    """Groups of minion names (or globs), loaded from and saved to one groups file."""

    def __init__(
        self,
        groups: Mapping[str, Iterable[str]] | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        """In-memory groups; ``path`` is where :meth:`save_changes` writes."""
        self.path: Path | None = Path(path) if path is not None else None
        self._groups: dict[str, list[str]] = {}
        self._extra: dict[str, dict[str, str]] = {}
        for name, members in (groups or {}).items():
            group = name.strip().lower()
            problem = group_name_problem(group)
            if problem:
                raise ValueError(problem)
            hosts = self._groups.setdefault(group, [])
            for member in members:
                host = member.strip().lower()
                problem = host_name_problem(host)
                if problem:
                    raise ValueError(problem)
                if host not in hosts:
                    hosts.append(host)

    # --- file ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Groups:
        """Read a groups file; a missing file means no groups (and is created on save)."""
        file = Path(path)
        groups = cls(path=file)
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            with file.open(encoding="utf-8") as fh:
                parser.read_file(fh)
        except FileNotFoundError:
            return groups
        except (configparser.Error, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(
                f"cannot parse {file}: {first}. Fix the file: {_FORMAT_HINT}."
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read {file}: {exc.strerror}. Check that it is a readable file."
            ) from None
        for section in parser.sections():
            group = section.strip().lower()
            problem = group_name_problem(group)
            if problem:
                raise ConfigError(
                    f"invalid group [{section}] in {file}: {problem}. Rename the section."
                )
            hosts = groups._groups.setdefault(group, [])
            for key, value in parser.items(section):
                if key != HOST_OPTION:
                    groups._extra.setdefault(group, {})[key] = value
                    continue
                for host in split_hosts(value):
                    problem = host_name_problem(host)
                    if problem:
                        raise ConfigError(
                            f"invalid member of group [{section}] in {file}: {problem}. "
                            "Fix the 'host' line."
                        )
                    if host not in hosts:
                        hosts.append(host)
        return groups

    def save_changes(self) -> None:
        """Write every group to the file atomically, so readers never see half a file."""
        if self.path is None:
            raise ConfigError("these groups were not loaded from a file, so they cannot be saved")
        parser = configparser.ConfigParser(interpolation=None)
        for group, hosts in self._groups.items():
            parser.add_section(group)
            for key, value in self._extra.get(group, {}).items():
                parser.set(group, key, value)
            # No spaces: func's own reader splits on ',' without stripping.
            parser.set(group, HOST_OPTION, ",".join(hosts))
        target = self.path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                mode = target.stat().st_mode & 0o7777
            except FileNotFoundError:
                mode = _NEW_FILE_MODE
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            replaced = False
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    parser.write(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp_name, mode)
                os.replace(tmp_name, target)
                replaced = True
            finally:
                if not replaced:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp_name)
        except OSError as exc:
            raise ConfigError(
                f"cannot write {target}: {exc.strerror}. Check the directory's permissions."
            ) from None

    def _maybe_save(self, save: bool) -> None:
        if save:
            self.save_changes()

    # --- queries ---------------------------------------------------------------------

    def has_group(self, group: str) -> bool:
        """Whether ``group`` (any case) is defined."""
        return group.strip().lower() in self._groups

    def get_groups(
        self,
        pattern: str | None = None,
        exact: bool = True,
        exclude: Iterable[str] | None = None,
    ) -> list[str]:
        """Sorted group names; ``pattern`` is an exact name, or a substring if not ``exact``."""
        names: Iterable[str] = self._groups
        if pattern:
            low = pattern.strip().lower()
            if exact:
                return [low] if low in self._groups else []
            names = [g for g in names if low in g]
        dropped = {e.strip().lower() for e in exclude or ()}
        return sorted(g for g in names if g not in dropped)

    def get_hosts(
        self,
        group: str,
        *,
        pattern: str | Iterable[str] | None = None,
        exact: bool = True,
        exclude: Iterable[str] | None = None,
    ) -> list[str]:
        """Members of ``group`` as written (globs unexpanded); [] for an unknown group.

        ``pattern`` filters as func did: exact name(s), or a substring with ``exact=False``.
        """
        hosts = list(self._groups.get(group.strip().lower(), ()))
        if pattern is not None:
            if isinstance(pattern, str):
                wanted = [pattern.strip().lower()]
            else:
                wanted = [p.strip().lower() for p in pattern]
            if exact:
                hosts = [h for h in hosts if h in wanted]
            else:
                hosts = [h for h in hosts if any(w in h for w in wanted)]
        dropped = {e.strip().lower() for e in exclude or ()}
        return [h for h in hosts if h not in dropped]

    def show(self, file: TextIO | None = None) -> None:
        """Print every group and its members, in func's layout."""
        out = file if file is not None else sys.stdout
        for group in self.get_groups():
            print(f"Group : {group}", file=out)
            for host in self._groups[group]:
                print(f"\t Host : {host}", file=out)

    # --- editing ---------------------------------------------------------------------

    def add_group(self, group: str, save: bool = True) -> Result:
        """Create an empty group."""
        name = group.strip().lower()
        problem = group_name_problem(name)
        if problem:
            return (False, problem)
        if name in self._groups:
            return (False, f"Group name : {name} already exists")
        self._groups[name] = []
        self._maybe_save(save)
        return (True, "")

    def add_host_to_group(self, group: str, host: str, save: bool = True) -> Result:
        """Add one member (a name or a glob), creating the group if needed."""
        name = group.strip().lower()
        member = host.strip().lower()
        problem = group_name_problem(name) or host_name_problem(member)
        if problem:
            return (False, problem)
        hosts = self._groups.setdefault(name, [])
        if member in hosts:
            return (False, f"Host is already in group {name} : {member}")
        hosts.append(member)
        self._maybe_save(save)
        return (True, "")

    def add_hosts_to_group(self, group: str, hoststring: str, save: bool = True) -> Result:
        """Add several members given as ``"a;b"`` (or comma/space separated); all or none."""
        name = group.strip().lower()
        members = split_hosts(hoststring)
        if not members:
            return (False, f"no host names in {hoststring!r}")
        problem = group_name_problem(name) or next(
            (p for p in map(host_name_problem, members) if p), ""
        )
        if problem:
            return (False, problem)
        hosts = self._groups.setdefault(name, [])
        hosts.extend(m for m in members if m not in hosts)
        self._maybe_save(save)
        return (True, "")

    def remove_group(self, group: str, save: bool = True) -> Result:
        """Delete a group and its member list."""
        name = group.strip().lower()
        if name not in self._groups:
            return (False, f"Group name : {name} doesnt exist")
        del self._groups[name]
        self._extra.pop(name, None)
        self._maybe_save(save)
        return (True, "")

    def remove_host(self, group: str, host: str, save: bool = True) -> Result:
        """Remove one member, written exactly as stored (a glob is removed as a glob)."""
        name = group.strip().lower()
        member = host.strip().lower()
        hosts = self._groups.get(name)
        if hosts is None or member not in hosts:
            return (False, f"Non existing group or name : {name} / {member}")
        hosts.remove(member)
        self._maybe_save(save)
        return (True, "")
