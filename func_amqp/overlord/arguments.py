"""Turn ``func`` command-line strings into the values a method registered.

func passed CLI arguments as strings (``func m1 call test add 1 2`` gave ``"12"``);
func-amqp converts them with the method's ``get_method_args`` spec, so the same
command gives ``3``. Arguments without a spec stay strings, as in func.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from func_amqp.config import parse_bool
from func_amqp.errors import ArgumentError

VARARGS_TYPE = "list*"


def _structured(expected: type) -> Callable[[str], Any]:
    """Parse JSON, else a Python literal, and insist on ``expected``."""

    def parse(raw: str) -> Any:
        try:
            value = json.loads(raw)
        except ValueError:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise ValueError(raw) from None
        if expected is list and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, expected):
            raise ValueError(raw)
        return value

    return parse


# type name -> (converter, what a user must give)
CONVERTERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "int": (int, "an int"),
    "float": (float, "a float"),
    "boolean": (parse_bool, "a boolean (yes/no, true/false, 1/0)"),
    "hash": (_structured(dict), "a hash (a JSON object such as '{\"key\": 1}')"),
    "list": (_structured(list), "a list (a JSON array such as '[1, 2]')"),
}


def convert_cli_args(
    method_spec: Mapping[str, Mapping[str, Any]] | None,
    args: Sequence[Any],
    method_name: str = "",
) -> list[Any]:
    """Convert ``args`` by position with ``method_spec`` (one method's ``args`` dict).

    ``method_name`` (``"test.add"``) only improves error messages. A ``list*``
    argument (``*args``) takes every remaining value unchanged.
    """
    by_position = _specs_by_position(method_spec or {})
    varargs_start = _varargs_start(by_position)
    converted: list[Any] = []
    for position, raw in enumerate(args):
        if varargs_start is not None and position >= varargs_start:
            converted.append(raw)
            continue
        name, spec = by_position.get(position, ("", None))
        converted.append(_convert_one(name, spec, raw, method_name))
    return converted


def _specs_by_position(
    method_spec: Mapping[str, Mapping[str, Any]],
) -> dict[int, tuple[str, Mapping[str, Any]]]:
    """Specs keyed by ``order``; without one, by declaration order."""
    result: dict[int, tuple[str, Mapping[str, Any]]] = {}
    for index, (name, spec) in enumerate(method_spec.items()):
        order = spec.get("order", index)
        result[order if isinstance(order, int) else index] = (name, spec)
    return result


def _varargs_start(
    by_position: Mapping[int, tuple[str, Mapping[str, Any]]],
) -> int | None:
    """Where a ``list*`` (``*args``) argument starts taking every remaining value."""
    starts = [
        pos for pos, (_, spec) in by_position.items() if spec.get("type") == VARARGS_TYPE
    ]
    return min(starts, default=None)


def _convert_one(
    name: str, spec: Mapping[str, Any] | None, raw: Any, method_name: str
) -> Any:
    if spec is None or not isinstance(raw, str):
        return raw
    converter = CONVERTERS.get(spec.get("type", ""))
    if converter is None:
        return raw
    parse, expected = converter
    try:
        return parse(raw)
    except ValueError:
        of_method = f" of {method_name}" if method_name else ""
        raise ArgumentError(
            f"argument {name}{of_method} must be {expected}, got {raw!r}"
        ) from None
