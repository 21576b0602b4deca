"""Target specs: which minions ``Overlord(spec, exclude_spec=...)`` calls.

func's syntax: parts separated by ``;``; a part is a shell glob matched
case-insensitively against the known minions, ``@group`` (all members of a group),
or ``@group:hostglob`` (the members that also match the glob). A plain name that
matches nothing is still targeted, so calls to exact names need no minion discovery:
the transport reports a minion that is not connected.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from func_amqp.config import GROUPS_FILE
from func_amqp.errors import Func_Client_Exception
from func_amqp.overlord.groups import Groups

SEPARATOR = ";"
GROUP_PREFIX = "@"
GROUP_HOST_SEPARATOR = ":"

# Never valid inside one name; usually a list written with the wrong separator.
_NAME_BREAKERS = frozenset(" \t\r\n\f\v,")


def is_glob(name: str) -> bool:
    """Whether fnmatch would treat ``name`` as a pattern rather than a literal name.

    True for ``*``, ``?`` or a ``[..]`` class that fnmatch accepts (a ``[`` with no
    closing ``]`` is a literal character, as are ``[]`` and ``[!]``).
    """
    if "*" in name or "?" in name:
        return True
    n = len(name)
    for i, char in enumerate(name):
        if char != "[":
            continue
        j = i + 1
        if j < n and name[j] == "!":
            j += 1
        if j < n and name[j] == "]":
            j += 1
        if name.find("]", j) != -1:
            return True
    return False


def match(pattern: str, names: Iterable[str]) -> set[str]:
    """The lower-cased ``names`` that the glob ``pattern`` matches, ignoring case."""
    low = pattern.lower()
    return {name.lower() for name in names if fnmatch.fnmatchcase(name.lower(), low)}


def split_spec(spec: str) -> list[str]:
    """The non-empty, stripped ``;``-separated parts of a spec."""
    return [part.strip() for part in spec.split(SEPARATOR) if part.strip()]


def spec_needs_directory(spec: str, exclude_spec: str | None = None) -> bool:
    """Whether resolving needs the known minions: some part is a glob or a group.

    Lets the caller skip minion discovery when every part is a plain name.
    """
    parts = split_spec(spec) + split_spec(exclude_spec or "")
    return any(part.startswith(GROUP_PREFIX) or is_glob(part) for part in parts)


def resolve_spec(
    spec: str,
    known: Iterable[str],
    groups: Groups | None = None,
    exclude_spec: str | None = None,
) -> list[str]:
    """Sorted, lower-cased minion names that ``spec`` minus ``exclude_spec`` targets.

    ``known`` is the minions a glob may match; plain names need not be in it. An
    empty result is returned as such: the caller decides how to report it.
    """
    if not isinstance(spec, str) or not split_spec(spec):
        raise Func_Client_Exception(
            f"empty target spec {spec!r}: give minion names or globs separated by ';', "
            "or '@group' (for example \"web*;db1\" or \"@web\")"
        )
    directory = {name.lower() for name in known}
    targets = _resolve(spec, directory, groups)
    if exclude_spec and split_spec(exclude_spec):
        # Exclusion globs also reach plain names that were targeted without being known.
        targets -= _resolve(exclude_spec, directory | targets, groups)
    return sorted(targets)


def _resolve(spec: str, directory: set[str], groups: Groups | None) -> set[str]:
    targets: set[str] = set()
    for part in split_spec(spec):
        if part.startswith(GROUP_PREFIX):
            targets |= _resolve_group(part, directory, groups)
        else:
            targets |= _resolve_name(part, part, directory)
    return targets


def _check_name(pattern: str, part: str) -> None:
    bad = sorted(_NAME_BREAKERS.intersection(pattern))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise Func_Client_Exception(
            f"invalid target {part!r}: a minion name or glob may not contain {shown}; "
            "separate several targets with ';'"
        )


def _resolve_name(pattern: str, part: str, directory: set[str]) -> set[str]:
    _check_name(pattern, part)
    if is_glob(pattern):
        return match(pattern, directory)
    return {pattern.lower()}


def _resolve_group(part: str, directory: set[str], groups: Groups | None) -> set[str]:
    body = part[len(GROUP_PREFIX) :]
    name, has_glob, host_glob = body.partition(GROUP_HOST_SEPARATOR)
    name = name.strip().lower()
    host_glob = host_glob.strip()
    if not name:
        raise Func_Client_Exception(
            f"invalid target {part!r}: '@' must be followed by a group name, "
            "as in '@web' or '@web:www*'"
        )
    if has_glob and not host_glob:
        raise Func_Client_Exception(
            f"invalid target {part!r}: ':' must be followed by a host name or glob, "
            f"as in '@{name}:www*'; write '@{name}' for the whole group"
        )
    if has_glob:
        _check_name(host_glob, part)
    if groups is None or not groups.has_group(name):
        raise Func_Client_Exception(_unknown_group_message(name, groups))
    members: set[str] = set()
    for member in groups.get_hosts(name):
        if is_glob(member):
            members |= match(member, directory)
        else:
            members.add(member.lower())
    if has_glob:
        members = match(host_glob, members)
    return members


def _unknown_group_message(name: str, groups: Groups | None) -> str:
    if groups is not None and groups.path is not None:
        where = str(groups.path)
    else:
        where = f"the '{GROUPS_FILE}' file in the configuration directory"
    defined = groups.get_groups() if groups is not None else []
    known = f"defined groups: {', '.join(defined)}" if defined else "no groups are defined"
    return (
        f"unknown group '{name}' in target spec: groups are defined in {where} "
        f"({known}); add a '[{name}]' section with a 'host = ...' line there"
    )
