"""The module loader: shipped modules, site directories, filters, failures."""

from __future__ import annotations

import json as stdlib_json
import logging
import sys
from pathlib import Path

import pytest

from func_amqp.minion.loader import (
    SHIPPED_PACKAGE,
    SITE_PACKAGE_PREFIX,
    load_modules,
    module_files,
    shipped_modules_dir,
)
from func_amqp.minion.modules.func_module import FuncModule

MODULE_HEADER = "from func_amqp.minion.modules.func_module import FuncModule\n\n"


def write_module(directory: Path, relative: str, body: str) -> Path:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MODULE_HEADER + body, encoding="utf-8")
    return path


def simple_module(class_name: str, value: str) -> str:
    return (
        f"class {class_name}(FuncModule):\n"
        f"    def which(self):\n"
        f"        return {value!r}\n"
    )


def test_shipped_modules_load_under_the_package_name() -> None:
    modules = load_modules()
    assert {"test", "command"} <= set(modules)
    assert type(modules["test"]).__module__ == f"{SHIPPED_PACKAGE}.test"
    assert type(modules["test"]).__name__ == "Test"
    assert all(isinstance(m, FuncModule) for m in modules.values())


def test_shipped_modules_dir_is_the_modules_folder() -> None:
    assert (shipped_modules_dir() / "test.py").is_file()


def test_module_list_filters_with_fnmatch() -> None:
    assert set(load_modules(["te*"])) == {"test"}
    assert set(load_modules(["command", "nothing*"])) == {"command"}


def test_site_modules_load_with_nested_names(tmp_path: Path) -> None:
    write_module(tmp_path, "alpha.py", simple_module("Alpha", "alpha"))
    write_module(tmp_path, "net/__init__.py", simple_module("Net", "net"))
    write_module(tmp_path, "net/port.py", simple_module("Port", "port"))
    write_module(tmp_path, "deep/er/leaf.py", simple_module("Leaf", "leaf"))  # no __init__
    modules = load_modules(["alpha", "net*", "deep*"], [tmp_path])
    assert {name: m.which() for name, m in modules.items()} == {
        "alpha": "alpha",
        "net": "net",
        "net.port": "port",
        "deep.er.leaf": "leaf",
    }


def test_module_files_names_and_skips() -> None:
    names = dict(module_files(shipped_modules_dir()))
    assert "test" in names and "" not in names and "__init__" not in names


def test_a_broken_site_module_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = write_module(tmp_path, "broken.py", "raise RuntimeError('kaboom')\n")
    write_module(tmp_path, "good.py", simple_module("Good", "good"))
    bad_init = write_module(
        tmp_path,
        "badinit.py",
        "class BadInit(FuncModule):\n"
        "    def __init__(self):\n"
        "        raise ValueError('no way')\n",
    )
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def (:\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        modules = load_modules(["good", "broken", "badinit", "syntax", "test"], [tmp_path])
    assert set(modules) == {"good", "test"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(broken) in w and "RuntimeError: kaboom" in w for w in warnings)
    assert any(str(bad_init) in w and "ValueError: no way" in w for w in warnings)
    assert any(str(syntax) in w and "SyntaxError" in w for w in warnings)


def test_the_last_class_in_a_file_wins_and_imported_classes_do_not_count(
    tmp_path: Path,
) -> None:
    write_module(
        tmp_path,
        "multi.py",
        "from func_amqp.modules.test import Test\n\n"
        + simple_module("First", "first")
        + simple_module("Second", "second"),
    )
    modules = load_modules(["multi"], [tmp_path])
    assert modules["multi"].which() == "second"


def test_a_file_that_only_imports_modules_loads_nothing(tmp_path: Path) -> None:
    write_module(tmp_path, "helper.py", "from func_amqp.modules.test import Test\n")
    (tmp_path / "plain.py").write_text("VALUE = 1\n", encoding="utf-8")
    assert load_modules(["helper", "plain"], [tmp_path]) == {}


def test_a_site_module_overrides_a_shipped_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = write_module(tmp_path, "test.py", simple_module("SiteTest", "site"))
    with caplog.at_level(logging.INFO):
        modules = load_modules(["test"], [tmp_path])
    assert modules["test"].which() == "site"
    assert any(
        r.levelno == logging.INFO and str(site) in r.getMessage() for r in caplog.records
    )


def test_site_modules_cannot_shadow_the_standard_library(tmp_path: Path) -> None:
    write_module(tmp_path, "json.py", simple_module("Json", "site json"))
    modules = load_modules(["json"], [tmp_path])
    assert modules["json"].which() == "site json"
    assert type(modules["json"]).__module__.startswith(SITE_PACKAGE_PREFIX)
    assert sys.modules["json"] is stdlib_json


def test_a_missing_site_dir_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        modules = load_modules(["test"], [tmp_path / "absent"])
    assert set(modules) == {"test"}
    assert any("absent" in r.getMessage() for r in caplog.records)


def test_a_given_logger_receives_the_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_module(tmp_path, "broken.py", "import no_such_module_anywhere\n")
    logger = logging.getLogger("custom.loader")
    with caplog.at_level(logging.WARNING, logger="custom.loader"):
        load_modules(["broken"], [tmp_path], logger=logger)
    warned = [r.name for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["custom.loader"]
