"""Validation of ``register_method_args()`` results, with func's vocabulary and rules.

A module describes its methods' arguments so that overlords (the ``func`` CLI, web
front ends) can convert and check values before calling. The shape is::

    {method: {"args": {argname: spec, ...}, "description": str}}

where ``spec`` is a dict with a required ``type`` and keys allowed for that type
(see ``TYPE_KEYS`` and ``COMMON_KEYS``). ``order`` is always set here, to the
argument's position in the method's signature, as func did.
"""

from __future__ import annotations

import copy
import inspect
import numbers
from collections.abc import Mapping
from typing import Any

from func_amqp.errors import FuncException

METHOD_KEYS = ("description", "args")
COMMON_KEYS = ("optional", "default", "description", "order")

# Extra keys each argument type accepts on top of COMMON_KEYS.
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("range", "min", "max"),
    "float": ("range", "min", "max"),
    "string": ("options", "min_length", "max_length", "validator"),
    "boolean": (),
    "hash": ("validator",),
    "list": ("validator",),
    "list*": ("validator",),
}

# The Python type each key's value must have exactly ('default' may be anything).
KEY_VALUE_TYPES: dict[str, type] = {
    "type": str,
    "optional": bool,
    "description": str,
    "order": int,
    "range": list,
    "min": int,
    "max": int,
    "options": list,
    "min_length": int,
    "max_length": int,
    "validator": str,
}

_NUMERIC_BOUNDS = ("range", "min", "max")
_STRING_CONSTRAINTS = ("min_length", "max_length", "validator")


class IncompatibleTypesException(FuncException):
    """A registration breaks func's argument vocabulary (unknown key, wrong value type)."""


class NonExistingMethodRegistered(IncompatibleTypesException):
    """A registration names a method the module does not have."""


class ArgumentRegistrationError(IncompatibleTypesException):
    """A registered argument is not in the method's signature."""


class UnregisteredMethodArgument(IncompatibleTypesException):
    """A registered method gives no ``args`` mapping for its arguments."""


class ArgCompatibility:
    """Checks one module's ``register_method_args()`` result (func's class and API)."""

    def __init__(self, get_args_result: Mapping[str, Any]) -> None:
        self._registration = get_args_result

    def is_all_arguments_registered(
        self, module: object, method_name: str, arguments: dict[str, dict[str, Any]]
    ) -> bool:
        """Check every registered name is in the signature and set its ``order``."""
        names = signature_names(getattr(module, method_name))
        for arg_name, spec in arguments.items():
            if arg_name not in names:
                raise ArgumentRegistrationError(
                    f"argument {arg_name!r} is registered but {method_name}() has no such "
                    f"parameter (it takes: {', '.join(names) or 'nothing'})"
                )
            if isinstance(spec, dict):
                spec["order"] = names.index(arg_name)
        return True

    def validate_all(self) -> bool:
        """Check the method-level keys and every argument spec."""
        for method, entry in self._registration.items():
            if not isinstance(entry, Mapping):
                raise IncompatibleTypesException(
                    f"the registration of {method} must be a dict with 'args' and "
                    f"'description', got {type(entry).__name__}"
                )
            for key in entry:
                if key not in METHOD_KEYS:
                    raise IncompatibleTypesException(
                        f"{method} registers unknown key {key!r}; allowed: "
                        f"{', '.join(METHOD_KEYS)}"
                    )
            for arg_name, spec in _method_args(method, entry).items():
                where = f"argument {arg_name} of {method}"
                _check_value_types(where, spec)
                _check_type_options(where, spec)
        return True


def validate_registration(
    module: object, registration: Mapping[str, Any]
) -> dict[str, Any]:
    """A checked copy of ``registration`` with ``order`` set; raises on a bad one."""
    result = _copy_registration(registration)
    checker = ArgCompatibility(result)
    for method, entry in result.items():
        _check_method_exists(module, method)
        if isinstance(entry, Mapping):
            checker.is_all_arguments_registered(module, method, _method_args(method, entry))
    checker.validate_all()
    return result


def _copy_registration(registration: Mapping[str, Any]) -> dict[str, Any]:
    """Copy every spec separately: modules share one spec dict between arguments
    (a common idiom), and each copy must get its own ``order``."""
    result: dict[str, Any] = {}
    for method, entry in registration.items():
        copied = copy.deepcopy(entry)
        if isinstance(entry, Mapping) and isinstance(entry.get("args"), Mapping):
            args = {name: copy.deepcopy(spec) for name, spec in entry["args"].items()}
            copied = {**copied, "args": args}
        result[method] = copied
    return result


def signature_names(method: Any) -> list[str]:
    """Parameter names in signature order, ``*args`` and ``**kwargs`` included."""
    return list(inspect.signature(method).parameters)


def _check_method_exists(module: object, method: str) -> None:
    if not isinstance(method, str) or not callable(getattr(module, method, None)):
        raise NonExistingMethodRegistered(
            f"{method!r} is registered but is not a method of {type(module).__name__}"
        )


def _method_args(method: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    args = entry.get("args")
    if not isinstance(args, dict):
        raise UnregisteredMethodArgument(
            f"{method} must register its arguments as an 'args' dict ({{}} for none)"
        )
    return args


def _check_value_types(where: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise IncompatibleTypesException(
            f"{where} must be described by a dict, got {type(spec).__name__}"
        )
    for key, value in spec.items():
        if key == "default":
            continue
        expected = KEY_VALUE_TYPES.get(key)
        if expected is None:
            raise IncompatibleTypesException(
                f"{where} uses unknown key {key!r}; known keys: "
                f"{', '.join(sorted([*KEY_VALUE_TYPES, 'default']))}"
            )
        if type(value) is not expected:
            raise IncompatibleTypesException(
                f"{where}: {key!r} must be of type {expected.__name__}, "
                f"got {type(value).__name__} {value!r}"
            )


def _check_type_options(where: str, spec: Mapping[str, Any]) -> None:
    arg_type = spec.get("type")
    if arg_type not in TYPE_KEYS:
        raise IncompatibleTypesException(
            f"{where} has type {arg_type!r}; valid types: {', '.join(TYPE_KEYS)}"
        )
    allowed = (*TYPE_KEYS[arg_type], *COMMON_KEYS)
    for key in spec:
        if key != "type" and key not in allowed:
            raise IncompatibleTypesException(
                f"{where}: key {key!r} does not apply to type {arg_type!r}"
            )
    if "options" in spec:
        _refuse_together(where, "options", _STRING_CONSTRAINTS, spec)
    if "range" in spec:
        _check_range(where, spec["range"])
        _refuse_together(where, "range", _NUMERIC_BOUNDS, spec)


def _refuse_together(
    where: str, key: str, exclusive: tuple[str, ...], spec: Mapping[str, Any]
) -> None:
    clash = [other for other in exclusive if other != key and other in spec]
    if clash:
        raise IncompatibleTypesException(
            f"{where}: {key!r} cannot be combined with {', '.join(clash)}"
        )


def _check_range(where: str, bounds: list[Any]) -> None:
    numeric = all(
        isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds
    )
    if len(bounds) != 2 or not numeric:
        raise IncompatibleTypesException(
            f"{where}: 'range' must be two numbers [min, max], got {bounds!r}"
        )
    if not bounds[0] < bounds[1]:
        raise IncompatibleTypesException(
            f"{where}: 'range' must have min < max, got {bounds!r}"
        )
