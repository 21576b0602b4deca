"""The shipped ``test`` and ``command`` modules, called as a minion calls them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from func_amqp.config import MinionConfig, Paths
from func_amqp.minion.loader import load_modules
from func_amqp.minion.modules import func_module
from func_amqp.minion.server import AmqpInterface


@pytest.fixture(scope="module")
def interface() -> AmqpInterface:
    return AmqpInterface(load_modules(["test", "command"]))


@pytest.fixture
def conf_dir(tmp_path: Path) -> Iterator[Path]:
    func_module.configure(MinionConfig(), Paths(config_dir=tmp_path, state_dir=tmp_path))
    yield tmp_path
    func_module.configure()


def call(interface: AmqpInterface, name: str, *args: object) -> object:
    method = interface.get_dispatch_method(name)
    method.check_arguments(args)
    return method(*args)


# --- test ---------------------------------------------------------------------------------


def test_test_module_identity(interface: AmqpInterface) -> None:
    assert call(interface, "test.module_version") == "11.11.11"
    assert call(interface, "test.ping") == 1


def test_add_echo_bigint(interface: AmqpInterface) -> None:
    assert call(interface, "test.add", 1, 2) == 3
    assert call(interface, "test.add", "1", "2") == "12"  # func's behaviour for strings
    assert call(interface, "test.echo", {"a": [1, None]}) == {"a": [1, None]}
    assert call(interface, "test.bigint") == 2**32


def test_sleep_returns_the_time_after_sleeping(interface: AmqpInterface) -> None:
    before = time.time()
    assert call(interface, "test.sleep", "0") >= before


def test_explode_raises_funcs_message(interface: AmqpInterface) -> None:
    with pytest.raises(Exception, match=r"^khhhhhhaaaaaan!!!!!!$"):
        call(interface, "test.explode")
    with pytest.raises(Exception) as info:
        call(interface, "test.explode_no_string")
    assert str(info.value) == ""


def test_registered_argument_types(interface: AmqpInterface) -> None:
    args = call(interface, "test.get_method_args")
    assert args["add"]["args"]["numb1"]["type"] == "int"
    assert args["add"]["args"]["numb2"] == {
        "type": "int", "optional": False, "description": "An int", "order": 1
    }
    assert args["sleep"]["args"]["t"]["type"] == "int"
    assert args["echo"]["args"]["data"]["type"] == "string"


def test_config_helpers_read_and_write_options(
    interface: AmqpInterface, conf_dir: Path
) -> None:
    assert call(interface, "test.config_get_test") == "this is a test. It is only a test"
    assert call(interface, "test.configfoo")["int_option"] == 37
    assert call(interface, "test.config_get", "float_option") == 3.14159
    changed = call(interface, "test.config_set", "int_option", "40")
    assert changed["int_option"] == 40
    assert "int_option = 40" in (conf_dir / "modules" / "Test.conf").read_text()
    # a fresh instance per call: the value comes back from the file
    assert call(interface, "test.config_get", "int_option") == 40
    assert call(interface, "test.config_save")["bool_option"] is True


def test_config_get_of_an_unknown_option(interface: AmqpInterface, conf_dir: Path) -> None:
    with pytest.raises(AttributeError, match="no option 'nope'"):
        call(interface, "test.config_get", "nope")


# --- command ------------------------------------------------------------------------------


def test_run_returns_code_stdout_stderr(interface: AmqpInterface) -> None:
    assert call(interface, "command.run", "echo out; echo err >&2") == [0, "out\n", "err\n"]


def test_run_of_a_failing_command(interface: AmqpInterface) -> None:
    rc, out, err = call(interface, "command.run", "echo partial; exit 3")
    assert (rc, out, err) == (3, "partial\n", "")
    rc, _, err = call(interface, "command.run", "/no/such/program")
    assert rc == 127 and "/no/such/program" in err


def test_run_uses_the_shell(interface: AmqpInterface) -> None:
    assert call(interface, "command.run", "printf 'a b' | wc -w")[1].strip() == "2"


def test_run_decodes_non_utf8_output_with_replacement(interface: AmqpInterface) -> None:
    rc, out, err = call(interface, "command.run", r"printf 'ok\377\n'; printf '\376' >&2")
    assert rc == 0
    assert out == "ok\ufffd\n"
    assert err == "\ufffd"


def test_run_with_env_replaces_the_environment(interface: AmqpInterface) -> None:
    command = 'echo "$GREETING:$HOME"'
    rc, out, _ = call(interface, "command.run", command, {"GREETING": "hi"})
    assert (rc, out) == (0, "hi:\n")


def test_run_without_env_inherits_the_environment(
    interface: AmqpInterface, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNC_AMQP_TEST_VALUE", "inherited")
    assert call(interface, "command.run", "echo $FUNC_AMQP_TEST_VALUE")[1] == "inherited\n"


def test_run_does_not_read_the_minions_stdin(interface: AmqpInterface) -> None:
    assert call(interface, "command.run", "cat")[:2] == [0, ""]


def test_exists(interface: AmqpInterface, tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    assert call(interface, "command.exists", str(script)) is False
    os.chmod(script, 0o755)
    assert call(interface, "command.exists", str(script)) is True
    assert call(interface, "command.exists", str(tmp_path)) is False  # a directory
    assert call(interface, "command.exists", "/no/such/file") is False


def test_command_registration(interface: AmqpInterface) -> None:
    args = call(interface, "command.get_method_args")
    assert args["run"]["args"]["command"]["order"] == 0
    assert args["run"]["args"]["env"]["type"] == "hash"
    assert args["exists"]["args"]["command"]["type"] == "string"
