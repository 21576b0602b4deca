"""Argument registrations: func's vocabulary, and every kind of refusal."""

from __future__ import annotations

from typing import Any

import pytest

from func_amqp.errors import FuncException
from func_amqp.minion.func_arg import (
    ArgCompatibility,
    ArgumentRegistrationError,
    IncompatibleTypesException,
    NonExistingMethodRegistered,
    UnregisteredMethodArgument,
    validate_registration,
)
from func_amqp.minion.modules.func_module import FuncModule


class Target(FuncModule):
    not_callable = "a string"

    def calc(self, number, ratio, name, flag, table, items, *rest, **extra):  # noqa: PLR0917
        return None

    def single(self, value=None):
        return value


def one_arg(spec: dict[str, Any], arg: str = "number", method: str = "calc") -> dict:
    return {method: {"args": {arg: spec}, "description": "d"}}


def check(registration: dict) -> dict:
    return validate_registration(Target(), registration)


GOOD = {
    "calc": {
        "args": {
            "number": {"type": "int", "range": [1, 10], "optional": False, "default": 2},
            "ratio": {"type": "float", "min": 0, "max": 5, "description": "a ratio"},
            "name": {"type": "string", "min_length": 1, "max_length": 9, "validator": "^a"},
            "flag": {"type": "boolean", "optional": True, "default": False},
            "table": {"type": "hash", "validator": "x"},
            "items": {"type": "list"},
            "rest": {"type": "list*"},
            "extra": {"type": "hash"},
        },
        "description": "everything at once",
    },
    "single": {"args": {"value": {"type": "string", "options": ["a", "b"]}}},
}


def test_a_good_registration_passes_with_order_set() -> None:
    result = check(GOOD)
    orders = {name: spec["order"] for name, spec in result["calc"]["args"].items()}
    assert orders == {
        "number": 0, "ratio": 1, "name": 2, "flag": 3,
        "table": 4, "items": 5, "rest": 6, "extra": 7,
    }
    assert result["single"]["args"]["value"]["order"] == 0
    assert "order" not in GOOD["calc"]["args"]["number"]  # the input is not modified


def test_a_spec_shared_by_two_arguments_gets_two_orders() -> None:
    shared = {"type": "int"}
    result = check({"calc": {"args": {"number": shared, "ratio": shared}}})
    assert result["calc"]["args"]["number"]["order"] == 0
    assert result["calc"]["args"]["ratio"]["order"] == 1


def test_a_user_given_order_is_replaced_by_the_position() -> None:
    result = check(one_arg({"type": "int", "order": 5}, "ratio"))
    assert result["calc"]["args"]["ratio"]["order"] == 1


def test_exceptions_are_func_exceptions_under_funcs_names() -> None:
    subclasses = (
        NonExistingMethodRegistered, ArgumentRegistrationError, UnregisteredMethodArgument
    )
    for exc in subclasses:
        assert issubclass(exc, IncompatibleTypesException)
    assert issubclass(IncompatibleTypesException, FuncException)


def test_a_missing_method_is_refused() -> None:
    with pytest.raises(NonExistingMethodRegistered, match="nosuch"):
        check({"nosuch": {"args": {}}})


def test_a_non_callable_attribute_is_not_a_method() -> None:
    with pytest.raises(NonExistingMethodRegistered, match="not_callable"):
        check({"not_callable": {"args": {}}})


def test_an_argument_missing_from_the_signature_is_refused() -> None:
    with pytest.raises(ArgumentRegistrationError, match=r"'bogus'.*calc"):
        check(one_arg({"type": "int"}, "bogus"))


def test_a_method_without_args_is_refused() -> None:
    with pytest.raises(UnregisteredMethodArgument, match="single"):
        check({"single": {"description": "no args key"}})


@pytest.mark.parametrize(
    ("registration", "message"),
    [
        ({"single": {"args": {}, "help": "x"}}, "unknown key 'help'"),
        ({"single": "just a string"}, "must be a dict"),
        (one_arg("int"), "described by a dict"),
        (one_arg({"optional": True}), "type None"),
        (one_arg({"type": "integer"}), "type 'integer'"),
        (one_arg({"type": "int", "colour": "red"}), "unknown key 'colour'"),
        (one_arg({"type": "boolean", "min": 1}), "'min' does not apply to type 'boolean'"),
        (one_arg({"type": "int", "options": [1]}), "'options' does not apply"),
        (one_arg({"type": "string", "range": [1, 2]}, "name"), "'range' does not apply"),
        (one_arg({"type": "list", "min_length": 1}, "items"), "does not apply"),
        (one_arg({"type": 3}), "'type' must be of type str"),
        (one_arg({"type": "int", "optional": "no"}), "'optional' must be of type bool"),
        (one_arg({"type": "int", "optional": 0}), "'optional' must be of type bool"),
        (one_arg({"type": "int", "description": 5}), "'description' must be of type str"),
        (one_arg({"type": "int", "min": "1"}), "'min' must be of type int"),
        (one_arg({"type": "int", "max": 1.5}), "'max' must be of type int"),
        (one_arg({"type": "int", "min": True}), "'min' must be of type int"),
        (one_arg({"type": "int", "range": (1, 2)}), "'range' must be of type list"),
        (one_arg({"type": "string", "options": "ab"}, "name"), "'options' .* type list"),
        (one_arg({"type": "string", "max_length": "9"}, "name"), "'max_length' .* int"),
        (one_arg({"type": "string", "validator": 1}, "name"), "'validator' .* type str"),
        (one_arg({"type": "int", "range": [1]}), "two numbers"),
        (one_arg({"type": "int", "range": ["a", "b"]}), "two numbers"),
        (one_arg({"type": "int", "range": [5, 1]}), "min < max"),
        (
            one_arg({"type": "int", "range": [1, 5], "min": 0}),
            "'range' cannot be combined with min",
        ),
        (
            one_arg({"type": "string", "options": ["a"], "validator": "a"}, "name"),
            "'options' cannot be combined with validator",
        ),
    ],
)
def test_bad_specs_are_refused(registration: dict, message: str) -> None:
    with pytest.raises(IncompatibleTypesException, match=message):
        check(registration)


def test_funcs_class_api_is_kept() -> None:
    registration = one_arg({"type": "int"}, "ratio")
    checker = ArgCompatibility(registration)
    args = registration["calc"]["args"]
    assert checker.is_all_arguments_registered(Target(), "calc", args)
    assert registration["calc"]["args"]["ratio"]["order"] == 1
    assert checker.validate_all() is True
