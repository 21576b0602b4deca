"""CLI argument conversion with a method's registered argument spec."""

from __future__ import annotations

import pytest

from func_amqp.errors import ArgumentError
from func_amqp.minion.loader import load_modules
from func_amqp.overlord.arguments import convert_cli_args

ADD = {
    "numb2": {"type": "int", "order": 1},
    "numb1": {"type": "int", "order": 0},
}


def spec_of(arg_type: str) -> dict:
    return {"value": {"type": arg_type, "order": 0}}


def test_test_add_converts_to_ints_with_the_real_registration() -> None:
    registration = load_modules(["test"])["test"].get_method_args()
    assert convert_cli_args(registration["add"]["args"], ["1", "2"], "test.add") == [1, 2]


def test_order_decides_the_position() -> None:
    spec = {"name": {"type": "string", "order": 1}, "count": {"type": "int", "order": 0}}
    assert convert_cli_args(spec, ["3", "4"]) == [3, "4"]


def test_without_a_spec_strings_stay_strings() -> None:
    assert convert_cli_args(None, ["1", "2"]) == ["1", "2"]
    assert convert_cli_args({}, ["1"]) == ["1"]


def test_arguments_beyond_the_spec_stay_strings() -> None:
    assert convert_cli_args(ADD, ["1", "2", "3"]) == [1, 2, "3"]


def test_fewer_arguments_than_the_spec() -> None:
    assert convert_cli_args(ADD, ["5"]) == [5]


@pytest.mark.parametrize(
    ("arg_type", "raw", "expected"),
    [
        ("int", "-7", -7),
        ("float", "2.5", 2.5),
        ("float", "3", 3.0),
        ("string", "42", "42"),
        ("boolean", "yes", True),
        ("boolean", "False", False),
        ("boolean", "1", True),
        ("boolean", "no", False),
        ("hash", '{"a": [1, 2]}', {"a": [1, 2]}),
        ("hash", "{'a': None}", {"a": None}),
        ("list", "[1, \"x\"]", [1, "x"]),
        ("list", "(1, 2)", [1, 2]),
        ("no-such-type", "raw", "raw"),
    ],
)
def test_conversions(arg_type: str, raw: str, expected: object) -> None:
    converted = convert_cli_args(spec_of(arg_type), [raw])
    assert converted == [expected]
    assert type(converted[0]) is type(expected)


def test_varargs_take_the_rest_unchanged() -> None:
    spec = {
        "first": {"type": "int", "order": 0},
        "rest": {"type": "list*", "order": 1},
        "extra": {"type": "hash", "order": 2},
    }
    assert convert_cli_args(spec, ["1", "2", "x", "{}"]) == [1, "2", "x", "{}"]


def test_non_string_values_pass_through() -> None:
    assert convert_cli_args(ADD, [1, "2"]) == [1, 2]


def test_a_spec_without_order_uses_declaration_order() -> None:
    spec = {"a": {"type": "int"}, "b": {"type": "float"}}
    assert convert_cli_args(spec, ["1", "2"]) == [1, 2.0]


@pytest.mark.parametrize(
    ("arg_type", "raw", "message"),
    [
        ("int", "x", r"argument value of m.f must be an int, got 'x'"),
        ("int", "1.5", r"must be an int, got '1.5'"),
        ("float", "fast", r"must be a float, got 'fast'"),
        ("boolean", "maybe", r"must be a boolean \(yes/no, true/false, 1/0\), got 'maybe'"),
        ("hash", "[1]", r"must be a hash"),
        ("hash", "{oops", r"must be a hash"),
        ("list", '{"a": 1}', r"must be a list"),
        ("list", "nope", r"must be a list"),
    ],
)
def test_bad_values_name_the_argument_type_and_value(
    arg_type: str, raw: str, message: str
) -> None:
    with pytest.raises(ArgumentError, match=message):
        convert_cli_args(spec_of(arg_type), [raw], "m.f")


def test_the_message_for_test_add() -> None:
    with pytest.raises(ArgumentError) as info:
        convert_cli_args(ADD, ["x", "2"], "test.add")
    assert str(info.value) == "argument numb1 of test.add must be an int, got 'x'"


def test_without_a_method_name_the_message_still_names_the_argument() -> None:
    with pytest.raises(ArgumentError, match=r"^argument numb2 must be an int, got 'y'$"):
        convert_cli_args(ADD, ["1", "y"])
