"""AmqpInterface and FuncApiMethod: handler table, system.*, dispatch, arguments.

Also func's REMOTE_ERROR helpers, which turn a dispatch failure into func's value.
"""

from __future__ import annotations

import logging

import pytest

from func_amqp import utils
from func_amqp.errors import ArgumentError, InvalidMethodException, ModuleNotFoundException
from func_amqp.minion.modules.func_module import FuncModule
from func_amqp.minion.server import AmqpInterface, FuncApiMethod

LOG = logging.getLogger("test.server")


class Counter(FuncModule):
    version = "2.0"
    description = "counts calls"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def bump(self):
        self.calls += 1
        return self.calls

    def add(self, numb1, numb2):
        return numb1 + numb2

    def pair(self, first, second=None):
        return [first, second]

    def many(self, *values):
        return list(values)

    def fail(self):
        raise ValueError("broken on purpose")

    def register_method_args(self):
        return {"add": {"args": {"numb1": {"type": "int"}, "numb2": {"type": "int"}}}}


class SingleCounter(Counter):
    _single = True


class NotAModule:
    """Lacks register_rpc: AmqpInterface must skip it."""


class BadRegister(FuncModule):
    def register_rpc(self, handlers, module_name):
        raise RuntimeError("cannot register")


@pytest.fixture
def interface() -> AmqpInterface:
    return AmqpInterface({"counter": Counter(), "net.port": SingleCounter()}, LOG)


def test_handlers_map_module_method_names(interface: AmqpInterface) -> None:
    assert interface.handlers["counter.add"](1, 2) == 3
    assert "net.port.bump" in interface.handlers
    assert interface.handlers["counter.module_version"]() == "2.0"


def test_system_handlers_exist_but_system_is_not_a_module(interface: AmqpInterface) -> None:
    for name in ("listMethods", "list_methods", "list_modules", "inventory", "grep"):
        assert f"system.{name}" in interface.handlers
    assert interface.handlers["system.list_modules"]() == ["counter", "net.port"]
    assert "system" not in interface.inventory()


def test_list_methods_is_every_handler_sorted(interface: AmqpInterface) -> None:
    methods = interface.list_methods()
    assert methods == sorted(interface.handlers)
    assert "counter.bump" in methods and "system.listMethods" in methods
    assert interface.handlers["system.listMethods"]() == methods


def test_inventory_splits_on_the_last_dot(interface: AmqpInterface) -> None:
    inventory = interface.inventory()
    assert set(inventory) == {"counter", "net.port"}
    assert "bump" in inventory["net.port"]
    assert {"module_version", "list_methods", "grep", "get_method_args"} <= set(
        inventory["counter"]
    )
    assert inventory["counter"] == sorted(inventory["counter"])


def test_grep_is_case_insensitive_on_modules_and_methods(interface: AmqpInterface) -> None:
    found = interface.grep(" PORT ")
    assert found["system.list_modules"] == ["net.port"]
    assert "net.port.bump" in found["system.list_methods"]
    assert interface.grep("no-such-thing") == {}
    assert interface.handlers["system.grep"]("bump") == {
        "system.list_methods": ["counter.bump", "net.port.bump"]
    }


def test_a_module_without_register_rpc_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        interface = AmqpInterface(
            {"odd": NotAModule(), "bad": BadRegister(), "counter": Counter()}  # type: ignore[dict-item]
        )
    assert not any(h.startswith(("odd.", "bad.")) for h in interface.handlers)
    assert "counter.bump" in interface.handlers
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "odd" in messages and "register_rpc" in messages
    assert "bad" in messages and "cannot register" in messages


def test_dispatch_returns_a_func_api_method(interface: AmqpInterface) -> None:
    method = interface.get_dispatch_method("counter.add")
    assert isinstance(method, FuncApiMethod)
    assert method.name == "counter.add"
    assert method(2, 3) == 5


def test_dispatch_of_an_unknown_module(interface: AmqpInterface) -> None:
    with pytest.raises(ModuleNotFoundException, match="'nosuch'"):
        interface.get_dispatch_method("nosuch.ping")
    with pytest.raises(ModuleNotFoundException, match="'net'"):
        interface.get_dispatch_method("net.bump")  # 'net.port' is loaded, 'net' is not
    with pytest.raises(ModuleNotFoundException):
        interface.get_dispatch_method("nodot")


def test_dispatch_of_an_unknown_method(interface: AmqpInterface) -> None:
    with pytest.raises(InvalidMethodException, match="'counter' has no method 'nosuch'"):
        interface.get_dispatch_method("counter.nosuch")
    with pytest.raises(InvalidMethodException):
        interface.get_dispatch_method("net.port._private")


def test_calls_raise_the_methods_exception(interface: AmqpInterface) -> None:
    with pytest.raises(ValueError, match="broken on purpose"):
        interface.get_dispatch_method("counter.fail")()


def test_each_call_gets_a_fresh_instance(interface: AmqpInterface) -> None:
    bump = interface.get_dispatch_method("counter.bump")
    assert [bump(), bump(), bump()] == [1, 1, 1]
    assert interface.modules["counter"].calls == 0  # type: ignore[attr-defined]


def test_a_single_module_keeps_its_instance(interface: AmqpInterface) -> None:
    bump = interface.get_dispatch_method("net.port.bump")
    assert [bump(), bump(), bump()] == [1, 2, 3]


def test_private_named_methods_use_the_loaded_instance() -> None:
    module = Counter()
    method = FuncApiMethod(LOG, "counter.module_version", module._module_version)
    assert method.target() == module._module_version


def test_system_handlers_are_not_reinstantiated(interface: AmqpInterface) -> None:
    assert interface.get_dispatch_method("system.list_modules")() == ["counter", "net.port"]


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("counter.add", [1], r"counter.add takes 2 arguments \(numb1, numb2\), 1 given"),
        ("counter.add", [1, 2, 3], r"takes 2 arguments \(numb1, numb2\), 3 given"),
        ("counter.bump", [1], r"counter.bump takes no arguments, 1 given"),
        ("counter.pair", [], r"takes 1 to 2 arguments \(first, second=None\), 0 given"),
    ],
)
def test_check_arguments_refuses_bad_calls(
    interface: AmqpInterface, name: str, args: list, message: str
) -> None:
    with pytest.raises(ArgumentError, match=message):
        interface.get_dispatch_method(name).check_arguments(args)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("counter.add", [1, 2]),
        ("counter.pair", [1]),
        ("counter.pair", [1, 2]),
        ("counter.many", []),
        ("counter.many", [1, 2, 3, 4]),
        ("system.grep", ["x"]),
    ],
)
def test_check_arguments_accepts_good_calls(
    interface: AmqpInterface, name: str, args: list
) -> None:
    interface.get_dispatch_method(name).check_arguments(args)


def test_check_arguments_skips_callables_without_a_signature() -> None:
    FuncApiMethod(LOG, "builtin.max", max).check_arguments([])


def test_get_method_args_of_a_module(interface: AmqpInterface) -> None:
    args = interface.get_method_args("counter")
    assert args["add"]["args"]["numb2"] == {"type": "int", "order": 1}
    with pytest.raises(ModuleNotFoundException):
        interface.get_method_args("nosuch")


def test_describe_lists_versions_and_methods(interface: AmqpInterface) -> None:
    described = interface.describe()
    assert list(described) == ["counter", "net.port"]
    counter = described["counter"]
    assert counter["version"] == "2.0"
    assert counter["description"] == "counts calls"
    assert counter["methods"] == interface.inventory()["counter"]


def test_construction_reads_no_config(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNC_AMQP_CONFIG_DIR", str(tmp_path / "does-not-exist"))
    AmqpInterface({"counter": Counter()})
    assert not (tmp_path / "does-not-exist").exists()


# --- REMOTE_ERROR values ----------------------------------------------------------------


def test_nice_exception_has_funcs_shape(interface: AmqpInterface) -> None:
    try:
        interface.get_dispatch_method("counter.fail")()
    except ValueError as exc:
        value = utils.nice_exception(exc)
    assert value[:3] == ["REMOTE_ERROR", "builtins.ValueError", "broken on purpose"]
    assert "Traceback" in value[3] and "in fail" in value[3]
    assert utils.is_error(value)


def test_nice_exception_names_func_exceptions() -> None:
    value = utils.nice_exception(ModuleNotFoundException("gone"))
    assert value == ["REMOTE_ERROR", "func_amqp.errors.ModuleNotFoundException", "gone",
                     "func_amqp.errors.ModuleNotFoundException: gone\n"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["REMOTE_ERROR", "t", "m", ""], True),
        (("REMOTE_ERROR",), True),
        ([], False),
        (["ok"], False),
        ("REMOTE_ERROR", False),
        ({"REMOTE_ERROR": 1}, False),
        (None, False),
        (0, False),
    ],
)
def test_is_error(value: object, expected: bool) -> None:
    assert utils.is_error(value) is expected


def test_remote_error_builds_the_list() -> None:
    assert utils.remote_error("socket.error", "refused") == [
        utils.REMOTE_ERROR, "socket.error", "refused", ""
    ]
