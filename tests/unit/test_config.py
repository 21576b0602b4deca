"""Configuration: directories, INI parsing, validation and the broker URL's precedence."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from func_amqp import config
from func_amqp.config import (
    ENV_BROKER_URL,
    ENV_CONFIG_DIR,
    ENV_STATE_DIR,
    MinionConfig,
    OverlordConfig,
    Paths,
    parse_bool,
    parse_list,
    resolve_broker_url,
)
from func_amqp.errors import ConfigError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No overrides; HOME points at an empty directory; XDG variables unset."""
    for var in (ENV_CONFIG_DIR, ENV_STATE_DIR, ENV_BROKER_URL, "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def as_user(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: uid)


# --- directories ----------------------------------------------------------------------


def test_root_defaults(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, 0)
    paths = Paths.resolve()
    assert paths.config_dir == Path("/etc/func-amqp")
    assert paths.state_dir == Path("/var/lib/func-amqp")
    assert paths.minion_conf == Path("/etc/func-amqp/minion.conf")


def test_user_defaults_follow_home(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, 1000)
    paths = Paths.resolve()
    assert paths.config_dir == no_env / ".config" / "func-amqp"
    assert paths.state_dir == no_env / ".local" / "state" / "func-amqp"


def test_user_defaults_follow_xdg(no_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    as_user(monkeypatch, 1000)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xc"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xs"))
    paths = Paths.resolve()
    assert paths.config_dir == tmp_path / "xc" / "func-amqp"
    assert paths.state_dir == tmp_path / "xs" / "func-amqp"


def test_empty_xdg_variables_are_ignored(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, 1000)
    monkeypatch.setenv("XDG_CONFIG_HOME", "")
    monkeypatch.setenv("XDG_STATE_HOME", "")
    paths = Paths.resolve()
    assert paths.config_dir == no_env / ".config" / "func-amqp"
    assert paths.state_dir == no_env / ".local" / "state" / "func-amqp"


def test_xdg_is_not_used_by_root(no_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    as_user(monkeypatch, 0)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xc"))
    assert Paths.resolve().config_dir == Path("/etc/func-amqp")


@pytest.mark.parametrize("uid", [0, 1000])
def test_env_overrides_win(no_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uid: int) -> None:
    as_user(monkeypatch, uid)
    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "c"))
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "s"))
    paths = Paths.resolve()
    assert paths == Paths(tmp_path / "c", tmp_path / "s")


def test_empty_env_overrides_are_ignored(no_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, 0)
    monkeypatch.setenv(ENV_CONFIG_DIR, "")
    monkeypatch.setenv(ENV_STATE_DIR, "")
    assert Paths.resolve() == Paths(Path("/etc/func-amqp"), Path("/var/lib/func-amqp"))


def test_conf_argument_wins_over_env_and_keeps_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "env-conf"))
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "state"))
    paths = Paths.resolve(str(tmp_path / "arg-conf"))
    assert paths.config_dir == tmp_path / "arg-conf"
    assert paths.state_dir == tmp_path / "state"
    assert Paths.resolve(tmp_path / "pathlike").config_dir == tmp_path / "pathlike"


def test_empty_conf_argument_means_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "env-conf"))
    assert Paths.resolve("").config_dir == tmp_path / "env-conf"
    assert Paths.resolve(None).config_dir == tmp_path / "env-conf"


def test_derived_paths(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "c", tmp_path / "s")
    assert paths.minion_conf == tmp_path / "c" / "minion.conf"
    assert paths.overlord_conf == tmp_path / "c" / "overlord.conf"
    assert paths.groups_file == tmp_path / "c" / "groups"
    assert paths.module_conf("Command") == tmp_path / "c" / "modules" / "Command.conf"
    assert paths.private_broker_dir == tmp_path / "s" / "broker"
    assert paths.private_broker_url_file == tmp_path / "s" / "broker" / "url"
    assert paths.minion_directory_file == tmp_path / "s" / "minions.json"


def test_paths_are_immutable(tmp_path: Path) -> None:
    paths = Paths(tmp_path, tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        paths.config_dir = Path("/")  # type: ignore[misc]


# --- value parsers --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "yes", "true", "on", "YES", "True", " on ", "ON\n"])
def test_true_forms(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "no", "false", "off", "NO", "False", " off "])
def test_false_forms(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "y", "n", "2", "enabled", "nope", "truee"])
def test_other_bool_forms_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected yes/no"):
        parse_bool(text)


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("a,b,c", ("a", "b", "c")),
        ("a, b ,c", ("a", "b", "c")),
        ("a b\tc", ("a", "b", "c")),
        ("a\nb\n  c", ("a", "b", "c")),
        (" ,a,,b, ", ("a", "b")),
        ("", ()),
        ("  \n ", ()),
        ("single", ("single",)),
    ],
)
def test_list_forms(text: str, items: tuple[str, ...]) -> None:
    assert parse_list(text) == items


@dataclass(frozen=True)
class _Sample(config._Section):
    flag: bool = False
    names: tuple[str, ...] = ()
    count: int = 1
    ratio: float = 0.5
    label: str = ""


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("off", False), ("1", True), ("FALSE", False)])
def test_bool_settings(text: str, value: bool) -> None:
    assert _Sample.from_mapping({"flag": text}).flag is value


def test_bad_bool_setting_names_key_and_source() -> None:
    with pytest.raises(ConfigError, match=r"invalid value for 'flag' in /x/y\.conf: expected yes/no") as info:
        _Sample.from_mapping({"flag": "maybe"}, "/x/y.conf")
    assert "Fix or remove the line" in str(info.value)


def test_error_without_source_has_no_location() -> None:
    with pytest.raises(ConfigError) as info:
        _Sample.from_mapping({"count": "lots"})
    assert str(info.value).startswith("invalid value for 'count': ")


def test_mapping_types() -> None:
    sample = _Sample.from_mapping({"names": "a, b", "count": "3", "ratio": "2", "label": " kept "})
    assert sample == _Sample(False, ("a", "b"), 3, 2.0, " kept ")
    assert type(sample.ratio) is float and type(sample.count) is int


# --- minion.conf ----------------------------------------------------------------------


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    conf = MinionConfig.load(tmp_path / "absent.conf")
    assert conf == MinionConfig()
    assert conf.log_level == "INFO"
    assert conf.minion_name == "" and conf.broker_url == ""
    assert conf.module_list == () and conf.module_dirs == ()
    assert conf.max_concurrent_calls == 16
    assert conf.heartbeat_interval == 30.0
    assert conf.max_message_bytes == 16 * 1024 * 1024


def test_missing_directory_gives_defaults(tmp_path: Path) -> None:
    assert MinionConfig.load(tmp_path / "no" / "such" / "minion.conf") == MinionConfig()


def test_minion_values_are_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path / "minion.conf",
        "[main]\n"
        "log_level = DEBUG\n"
        "minion_name = web01.example.org\n"
        "broker_url = amqp://user:p%40ss@broker:5672/%2F\n"
        "module_list = command, test\n"
        "    service\n"
        "module_dirs = /opt/mods /srv/mods,/x\n"
        "max_concurrent_calls = 4\n"
        "heartbeat_interval = 2.5\n"
        "max_message_bytes = 1024\n",
    )
    assert MinionConfig.load(path) == MinionConfig(
        log_level="DEBUG",
        minion_name="web01.example.org",
        broker_url="amqp://user:p%40ss@broker:5672/%2F",
        module_list=("command", "test", "service"),
        module_dirs=("/opt/mods", "/srv/mods", "/x"),
        max_concurrent_calls=4,
        heartbeat_interval=2.5,
        max_message_bytes=1024,
    )


def test_int_for_float_setting_becomes_float(tmp_path: Path) -> None:
    conf = MinionConfig.load(write(tmp_path / "m.conf", "[main]\nheartbeat_interval = 10\n"))
    assert conf.heartbeat_interval == 10.0 and type(conf.heartbeat_interval) is float


def test_alternative_ini_syntax(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "# comment\n; other comment\n[main]\nLog_Level: WARNING\nmax_concurrent_calls=2\n")
    conf = MinionConfig.load(path)
    assert conf.log_level == "WARNING"
    assert conf.max_concurrent_calls == 2


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[main]\ncert_dir = /etc/pki/certmaster\nlisten_port = 51234\nlog_level = ERROR\n")
    assert MinionConfig.load(path) == MinionConfig(log_level="ERROR")


def test_other_sections_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "m.conf", "[other]\nmax_concurrent_calls = nope\n[main]\nlog_level = ERROR\n")
    assert MinionConfig.load(path) == MinionConfig(log_level="ERROR")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "[other]\nlog_level = DEBUG\n"])
def test_missing_main_section_gives_defaults(tmp_path: Path, text: str) -> None:
    assert MinionConfig.load(write(tmp_path / "m.conf", text)) == MinionConfig()


def test_percent_signs_are_not_interpolated(tmp_path: Path) -> None:
    conf = MinionConfig.load(write(tmp_path / "m.conf", "[main]\nbroker_url = amqp://u:%(x)s%%@h/\n"))
    assert conf.broker_url == "amqp://u:%(x)s%%@h/"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_concurrent_calls = many", "max_concurrent_calls"),
        ("max_concurrent_calls = 2.5", "max_concurrent_calls"),
        ("max_concurrent_calls =", "max_concurrent_calls"),
        ("heartbeat_interval = soon", "heartbeat_interval"),
        ("max_message_bytes = 16MB", "max_message_bytes"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path / "minion.conf", f"[main]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        MinionConfig.load(path)
    message = str(info.value)
    assert f"'{key}'" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_concurrent_calls = 0", "max_concurrent_calls"),
        ("max_concurrent_calls = -3", "max_concurrent_calls"),
        ("heartbeat_interval = 0", "heartbeat_interval"),
        ("heartbeat_interval = -0.5", "heartbeat_interval"),
        ("heartbeat_interval = nan", "heartbeat_interval"),
        ("max_message_bytes = 0", "max_message_bytes"),
    ],
)
def test_non_positive_values_are_refused(tmp_path: Path, line: str, key: str) -> None:
    path = write(tmp_path / "minion.conf", f"[main]\n{line}\n")
    with pytest.raises(ConfigError, match="greater than 0") as info:
        MinionConfig.load(path)
    assert f"'{key}'" in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "this is not an ini file\n",
        "log_level = DEBUG\n",
        "[main\nlog_level = DEBUG\n",
        "[main]\nlog_level = DEBUG\nlog_level = INFO\n",
        "[main]\n[main]\n",
        "[main]\n  indented continuation without a key\n",
    ],
)
def test_garbage_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "minion.conf", text)
    with pytest.raises(ConfigError, match="cannot parse") as info:
        MinionConfig.load(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = write(tmp_path / "minion.conf", b"[main]\nlog_level = \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot parse") as info:
        MinionConfig.load(path)
    assert str(path) in str(info.value)


def test_directory_in_place_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "minion.conf"
    path.mkdir()
    with pytest.raises(ConfigError, match="cannot read") as info:
        MinionConfig.load(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "minion.conf", "[main]\n")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="cannot read"):
            MinionConfig.load(path)
    finally:
        path.chmod(0o600)


def test_unreadable_file_whatever_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "minion.conf", "[main]\n")
    real_open = Path.open

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConfigError, match="cannot read .*: Permission denied"):
        MinionConfig.load(path)


def test_unsearchable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked" / "minion.conf"

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "stat", refuse)
    with pytest.raises(ConfigError, match="cannot read .*: Permission denied"):
        MinionConfig.load(path)


def test_configs_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MinionConfig().log_level = "DEBUG"  # type: ignore[misc]


# --- overlord.conf ---------------------------------------------------------------------


def test_overlord_defaults(tmp_path: Path) -> None:
    conf = OverlordConfig.load(tmp_path / "overlord.conf")
    assert conf == OverlordConfig()
    assert conf.broker_url == ""
    assert conf.socket_timeout == 0.0
    assert conf.call_timeout == 300.0
    assert conf.locate_timeout == 1.0
    assert conf.max_message_bytes == 16 * 1024 * 1024
    assert conf.default_timeout == 300.0


def test_overlord_values_are_parsed(tmp_path: Path) -> None:
    path = write(
        tmp_path / "overlord.conf",
        "[main]\nbroker_url = amqps://b/\nsocket_timeout = 12\ncall_timeout = 60\nlocate_timeout = 0.25\n"
        "max_message_bytes = 2048\nlisten_port = 1\n",
    )
    assert OverlordConfig.load(path) == OverlordConfig("amqps://b/", 12.0, 60.0, 0.25, 2048)


@pytest.mark.parametrize(
    ("socket_timeout", "call_timeout", "expected"),
    [(0.0, 300.0, 300.0), (5.0, 300.0, 5.0), (0.0, 7.5, 7.5), (-1.0, 60.0, 60.0), (600.0, 60.0, 600.0)],
)
def test_default_timeout(socket_timeout: float, call_timeout: float, expected: float) -> None:
    conf = OverlordConfig(socket_timeout=socket_timeout, call_timeout=call_timeout)
    assert conf.default_timeout == expected


def test_socket_timeout_may_be_zero_or_negative(tmp_path: Path) -> None:
    for value in ("0", "-1"):
        conf = OverlordConfig.load(write(tmp_path / "o.conf", f"[main]\nsocket_timeout = {value}\n"))
        assert conf.default_timeout == 300.0


@pytest.mark.parametrize("key", ["call_timeout", "locate_timeout", "max_message_bytes"])
def test_overlord_positive_settings(tmp_path: Path, key: str) -> None:
    path = write(tmp_path / "overlord.conf", f"[main]\n{key} = 0\n")
    with pytest.raises(ConfigError, match=f"'{key}' in .*overlord.conf must be a finite number greater than 0, got 0"):
        OverlordConfig.load(path)


def test_overlord_bad_value(tmp_path: Path) -> None:
    path = write(tmp_path / "overlord.conf", "[main]\nsocket_timeout = forever\n")
    with pytest.raises(ConfigError, match="invalid value for 'socket_timeout'"):
        OverlordConfig.load(path)


# --- broker URL -----------------------------------------------------------------------


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.delenv(ENV_BROKER_URL, raising=False)
    return Paths(tmp_path / "conf", tmp_path / "state")


def test_env_url_wins(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    write(paths.private_broker_url_file, "amqp://private/\n")
    monkeypatch.setenv(ENV_BROKER_URL, "amqp://from-env/")
    assert resolve_broker_url("amqp://from-config/", paths) == "amqp://from-env/"


def test_empty_env_url_is_ignored(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_BROKER_URL, "")
    assert resolve_broker_url("amqp://from-config/", paths) == "amqp://from-config/"


def test_configured_url_wins_over_private_node(paths: Paths) -> None:
    write(paths.private_broker_url_file, "amqp://private/\n")
    assert resolve_broker_url("amqp://from-config/", paths) == "amqp://from-config/"


def test_private_node_url(paths: Paths) -> None:
    write(paths.private_broker_url_file, "  amqp://guest:guest@127.0.0.1:35672/\n\n")
    assert resolve_broker_url("", paths) == "amqp://guest:guest@127.0.0.1:35672/"


def test_no_broker_at_all(paths: Paths) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_broker_url("", paths)
    message = str(info.value)
    assert "no broker is configured" in message
    assert "func-amqp broker start" in message
    assert ENV_BROKER_URL in message
    assert "broker_url" in message
    assert str(paths.private_broker_url_file) in message


@pytest.mark.parametrize("text", ["", "\n", "   \n\t"])
def test_empty_private_url_file(paths: Paths, text: str) -> None:
    write(paths.private_broker_url_file, text)
    with pytest.raises(ConfigError, match="no broker is configured"):
        resolve_broker_url("", paths)


def test_private_url_file_that_cannot_be_read(paths: Paths) -> None:
    paths.private_broker_url_file.mkdir(parents=True)
    with pytest.raises(ConfigError, match="cannot read the private broker's URL") as info:
        resolve_broker_url("", paths)
    assert "func-amqp broker start" in str(info.value)


def test_private_url_file_not_utf8(paths: Paths) -> None:
    write(paths.private_broker_url_file, b"amqp://\xff/\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        resolve_broker_url("", paths)


def test_sample_config_files_state_the_defaults() -> None:
    """etc/*.conf document the defaults: they must load to exactly the defaults."""
    from func_amqp.config import MinionConfig, OverlordConfig

    etc = Path(__file__).resolve().parents[2] / "etc"
    assert MinionConfig.load(etc / "minion.conf") == MinionConfig()
    assert OverlordConfig.load(etc / "overlord.conf") == OverlordConfig()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_values_are_refused(tmp_path: Path, value: str) -> None:
    from func_amqp.config import MinionConfig

    conf = tmp_path / "minion.conf"
    conf.write_text(f"[main]\nheartbeat_interval = {value}\n")
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        MinionConfig.load(conf)
