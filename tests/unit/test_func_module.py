"""FuncModule: lazy config and options, handler registration, base methods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from func_amqp.config import ENV_CONFIG_DIR, MinionConfig, Paths
from func_amqp.errors import ConfigError
from func_amqp.minion.modules import func_module
from func_amqp.minion.modules.func_module import BaseConfig, FuncModule, findout


class Sample(FuncModule):
    version = "1.2.3"
    api_version = "0.1"
    description = "a sample"

    class Config(FuncModule.Config):
        name = "default name"
        count = 3
        ratio = 0.5
        enabled = False
        hosts = ("a", "b")

    def hello(self, who):
        return f"hello {who}"

    def _private(self):
        return "hidden"

    @property
    def computed(self):
        raise AssertionError("listing methods must not evaluate properties")

    def register_method_args(self):
        return {"hello": {"args": {"who": {"type": "string"}}, "description": "greet"}}


class OwnVersion(FuncModule):
    def module_version(self):
        return "overridden"


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[Paths]:
    """Modules see ``tmp_path`` as the minion's config dir."""
    p = Paths(config_dir=tmp_path / "conf", state_dir=tmp_path / "state")
    func_module.configure(MinionConfig(minion_name="m1"), p)
    yield p
    func_module.configure()


def write_options(paths: Paths, class_name: str, body: str) -> Path:
    path = paths.module_conf(class_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[main]\n{body}", encoding="utf-8")
    return path


def test_class_attributes_have_funcs_defaults() -> None:
    assert FuncModule.version == "0.0.0"
    assert FuncModule.api_version == "0.0.0"
    assert FuncModule.description == "No Description provided"
    assert FuncModule._single is False


def test_constructor_reads_nothing(tmp_path: Path) -> None:
    broken = Paths(config_dir=tmp_path / "conf", state_dir=tmp_path)
    write_options(broken, "Sample", "count = not-a-number\n")
    func_module.configure(paths=broken)
    try:
        module = Sample()  # must not parse the broken file yet
        with pytest.raises(ConfigError, match="count"):
            _ = module.options
    finally:
        func_module.configure()


def test_config_is_the_configured_minion_config(paths: Paths) -> None:
    assert Sample().config.minion_name == "m1"


def test_config_defaults_without_configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    func_module.configure()
    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path))
    assert Sample().config == MinionConfig()
    assert Sample().options_file == tmp_path / "modules" / "Sample.conf"


def test_options_default_when_file_missing(paths: Paths) -> None:
    options = Sample().options
    assert options.as_dict() == {
        "name": "default name",
        "count": 3,
        "ratio": 0.5,
        "enabled": False,
        "hosts": ("a", "b"),
    }


def test_options_are_typed_like_their_defaults(paths: Paths) -> None:
    lines = ["name = x y", "count = 7", "ratio = 2", "enabled = yes", "hosts = h1, h2 h3"]
    write_options(paths, "Sample", "\n".join(lines) + "\n")
    options = Sample().options
    assert options.name == "x y"
    assert options.count == 7
    assert options.ratio == 2.0 and isinstance(options.ratio, float)
    assert options.enabled is True
    assert options.hosts == ("h1", "h2", "h3")


def test_unknown_keys_in_the_file_are_ignored(paths: Paths) -> None:
    write_options(paths, "Sample", "surprise = 1\n")
    assert "surprise" not in Sample().options.as_dict()


def test_save_config_round_trips(paths: Paths) -> None:
    module = Sample()
    module.options.count = 42
    module.options.enabled = "true"  # strings parse like the file's values
    module.options.hosts = ("x", "y")
    assert module.save_config() is True
    again = Sample().options
    assert again.count == 42
    assert again.enabled is True
    assert again.hosts == ("x", "y")


def test_setting_unknown_option_names_the_options(paths: Paths) -> None:
    with pytest.raises(AttributeError, match=r"no option 'colour'.*name, count"):
        Sample().options.colour = "red"


def test_setting_a_bad_string_is_a_config_error(paths: Paths) -> None:
    with pytest.raises(ConfigError, match="count"):
        Sample().options.count = "many"


def test_config_items(paths: Paths) -> None:
    assert Sample().config_items()[:2] == [("name", "default name"), ("count", 3)]


def test_option_defaults_must_be_plain_values() -> None:
    with pytest.raises(TypeError, match=r"Bad\.when"):

        class Bad(BaseConfig):
            when = object()


def test_subclass_options_extend_and_override() -> None:
    class Parent(BaseConfig):
        a = 1
        b = "x"

    class Child(Parent):
        b = "y"
        c = True

    assert Child.defaults() == {"a": 1, "b": "y", "c": True}


def test_register_rpc_adds_public_and_base_methods(paths: Paths) -> None:
    module = Sample()
    handlers: dict = {}
    module.register_rpc(handlers, "sample")
    assert handlers["sample.hello"]("you") == "hello you"
    assert handlers["sample.module_version"]() == "1.2.3"
    assert handlers["sample.module_api_version"]() == "0.1"
    assert handlers["sample.module_description"]() == "a sample"
    for base in ("list_methods", "grep", "get_method_args"):
        assert f"sample.{base}" in handlers
    assert "sample._private" not in handlers
    assert "sample.register_rpc" not in handlers
    assert "sample.register_method_args" not in handlers
    assert "sample.computed" not in handlers
    assert "sample.options" not in handlers


def test_subclass_method_wins_over_base_method() -> None:
    handlers: dict = {}
    OwnVersion().register_rpc(handlers, "own")
    assert handlers["own.module_version"]() == "overridden"


def test_list_methods_has_public_and_base_names_once() -> None:
    names = Sample().list_methods()
    assert "hello" in names and "module_version" in names
    assert len(names) == len(set(names))
    assert "_private" not in names and "computed" not in names


def test_grep_default_is_empty() -> None:
    assert Sample().grep("anything") == {}


def test_get_method_args_validates_and_orders() -> None:
    args = Sample().get_method_args()
    assert args == {
        "hello": {"args": {"who": {"type": "string", "order": 0}}, "description": "greet"}
    }


def test_get_method_args_without_registration_is_empty() -> None:
    assert FuncModule().get_method_args() == {}


class Searchable(FuncModule):
    items = ("Apple", "banana")

    @findout
    def grep(self, word):
        return {
            self.fruits: [i for i in self.items if word in i.lower()],
            self.nothing: [],
        }

    def fruits(self):
        return list(self.items)

    def nothing(self):
        return []


def test_findout_keys_by_method_and_drops_empty_hits() -> None:
    assert Searchable().grep("  APP ") == {f"{__name__}.fruits": ["Apple"]}
    assert Searchable().grep("cherry") == {}
