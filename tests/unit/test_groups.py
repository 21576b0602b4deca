"""The groups file: func's conf-backend format and editing API."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from func_amqp.config import Paths
from func_amqp.errors import ConfigError
from func_amqp.overlord.groups import Groups, split_hosts


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def groups_file(tmp_path: Path) -> Path:
    return tmp_path / "groups"


# --- parsing -------------------------------------------------------------------------


def test_missing_file_means_no_groups(groups_file: Path) -> None:
    groups = Groups.load(groups_file)
    assert groups.get_groups() == []
    assert groups.path == groups_file
    assert not groups_file.exists()


def test_load_accepts_str_path(groups_file: Path) -> None:
    write(groups_file, "[web]\nhost = a\n")
    assert Groups.load(str(groups_file)).get_hosts("web") == ["a"]


def test_separators_comma_semicolon_whitespace(groups_file: Path) -> None:
    write(groups_file, "[web]\nhost = h1, h2; h3 h4,h5;h6\n\th7\n")
    assert Groups.load(groups_file).get_hosts("web") == [f"h{i}" for i in range(1, 8)]


def test_func_written_file_without_spaces(groups_file: Path) -> None:
    write(groups_file, "[web]\nhost = web1,web2,\n\n[db]\nhost = \n")
    groups = Groups.load(groups_file)
    assert groups.get_groups() == ["db", "web"]
    assert groups.get_hosts("web") == ["web1", "web2"]
    assert groups.get_hosts("db") == []


def test_names_are_lower_cased_and_deduplicated(groups_file: Path) -> None:
    write(groups_file, "[Web]\nHOST = Web1, WEB1, web2\n[WEB]\nhost = web3\n")
    groups = Groups.load(groups_file)
    assert groups.get_groups() == ["web"]
    assert groups.get_hosts("web") == ["web1", "web2", "web3"]
    assert groups.get_hosts("WEB") == ["web1", "web2", "web3"]


def test_globs_are_kept_as_members(groups_file: Path) -> None:
    write(groups_file, "[build]\nhost = builder*, arm[0-9], x86-?\n")
    assert Groups.load(groups_file).get_hosts("build") == ["builder*", "arm[0-9]", "x86-?"]


def test_section_without_host_is_an_empty_group(groups_file: Path) -> None:
    write(groups_file, "[spare]\n")
    groups = Groups.load(groups_file)
    assert groups.has_group("spare")
    assert groups.get_hosts("spare") == []


def test_percent_signs_are_not_interpolated(groups_file: Path) -> None:
    write(groups_file, "[odd]\nhost = a%b\n")
    assert Groups.load(groups_file).get_hosts("odd") == ["a%b"]


def test_comments_are_ignored(groups_file: Path) -> None:
    write(groups_file, "# groups\n[web]\n; members\nhost = web1\n")
    assert Groups.load(groups_file).get_hosts("web") == ["web1"]


@pytest.mark.parametrize(
    "text",
    [
        "this is not an ini file\n",
        "host = web1\n",
        "[web\nhost = web1\n",
        "[web]\nhost web1\n",
    ],
)
def test_garbage_file_is_a_config_error(groups_file: Path, text: str) -> None:
    write(groups_file, text)
    with pytest.raises(ConfigError) as info:
        Groups.load(groups_file)
    message = str(info.value)
    assert str(groups_file) in message
    assert "'[group]' section" in message


def test_binary_file_is_a_config_error(groups_file: Path) -> None:
    groups_file.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot parse"):
        Groups.load(groups_file)


def test_unreadable_path_is_a_config_error(groups_file: Path) -> None:
    groups_file.mkdir()
    with pytest.raises(ConfigError, match="cannot read") as info:
        Groups.load(groups_file)
    assert str(groups_file) in str(info.value)


@pytest.mark.parametrize("section", ["web:prod", "web farm", "@web", "a;b"])
def test_bad_group_name_in_file_is_a_config_error(groups_file: Path, section: str) -> None:
    write(groups_file, f"[{section}]\nhost = a\n")
    with pytest.raises(ConfigError, match="Rename the section") as info:
        Groups.load(groups_file)
    assert str(groups_file) in str(info.value)


def test_nested_group_member_is_a_config_error(groups_file: Path) -> None:
    write(groups_file, "[all]\nhost = @web\n")
    with pytest.raises(ConfigError, match="Fix the 'host' line"):
        Groups.load(groups_file)


def test_groups_file_location_comes_from_paths(tmp_path: Path) -> None:
    paths = Paths.resolve(tmp_path)
    write(paths.groups_file, "[web]\nhost = a\n")
    assert Groups.load(paths.groups_file).get_groups() == ["web"]


def test_split_hosts() -> None:
    assert split_hosts(" A;b, c d;;,A ") == ["a", "b", "c", "d"]
    assert split_hosts("") == []


# --- queries -------------------------------------------------------------------------


def test_get_groups_patterns() -> None:
    groups = Groups({"web": [], "webdev": [], "db": []})
    assert groups.get_groups() == ["db", "web", "webdev"]
    assert groups.get_groups("WEB") == ["web"]
    assert groups.get_groups("nosuch") == []
    assert groups.get_groups("web", exact=False) == ["web", "webdev"]
    assert groups.get_groups("web", exact=False, exclude=["webdev"]) == ["web"]
    assert groups.get_groups(exclude=["db"]) == ["web", "webdev"]


def test_get_hosts_patterns() -> None:
    groups = Groups({"web": ["web1", "web2", "mail"]})
    assert groups.get_hosts("nosuch") == []
    assert groups.get_hosts(group="web") == ["web1", "web2", "mail"]
    assert groups.get_hosts("web", pattern="WEB2") == ["web2"]
    assert groups.get_hosts("web", pattern=["mail", "web1", "x"]) == ["web1", "mail"]
    assert groups.get_hosts("web", pattern="web", exact=False) == ["web1", "web2"]
    assert groups.get_hosts("web", exclude=["mail"]) == ["web1", "web2"]


def test_get_hosts_returns_a_copy() -> None:
    groups = Groups({"web": ["web1"]})
    groups.get_hosts("web").append("intruder")
    assert groups.get_hosts("web") == ["web1"]


def test_show() -> None:
    groups = Groups({"web": ["web1", "web*"], "db": []})
    out = io.StringIO()
    groups.show(out)
    assert out.getvalue() == "Group : db\nGroup : web\n\t Host : web1\n\t Host : web*\n"


def test_show_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    Groups({"web": ["web1"]}).show()
    assert capsys.readouterr().out == "Group : web\n\t Host : web1\n"


def test_constructor_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        Groups({"a:b": []})
    with pytest.raises(ValueError):
        Groups({"web": ["a,b"]})


# --- editing -------------------------------------------------------------------------


def test_add_group() -> None:
    groups = Groups()
    assert groups.add_group("Web", save=False) == (True, "")
    assert groups.get_groups() == ["web"]
    ok, message = groups.add_group("WEB", save=False)
    assert not ok and "already exists" in message


@pytest.mark.parametrize("name", ["", " ", "a:b", "a b", "@a", "a;b", "a,b", "[a]"])
def test_add_group_rejects_bad_names(name: str) -> None:
    groups = Groups()
    ok, message = groups.add_group(name, save=False)
    assert not ok and message
    assert groups.get_groups() == []


def test_add_host_to_group_creates_group_and_lower_cases() -> None:
    groups = Groups()
    assert groups.add_host_to_group("Web", " Web1 ", save=False) == (True, "")
    assert groups.add_host_to_group("web", "WEB*", save=False) == (True, "")
    assert groups.get_hosts("web") == ["web1", "web*"]
    ok, message = groups.add_host_to_group("web", "WEB1", save=False)
    assert not ok and "already" in message


@pytest.mark.parametrize("host", ["", "a,b", "a;b", "a b", "@web"])
def test_add_host_to_group_rejects_bad_names(host: str) -> None:
    groups = Groups({"web": []})
    ok, message = groups.add_host_to_group("web", host, save=False)
    assert not ok and message
    assert groups.get_hosts("web") == []


def test_add_hosts_to_group() -> None:
    groups = Groups({"web": ["web1"]})
    assert groups.add_hosts_to_group("web", "web1;WEB2; web3,web4 web*", save=False) == (True, "")
    assert groups.get_hosts("web") == ["web1", "web2", "web3", "web4", "web*"]
    assert groups.add_hosts_to_group("new", "a", save=False) == (True, "")
    assert groups.get_hosts("new") == ["a"]


def test_add_hosts_to_group_is_all_or_nothing() -> None:
    groups = Groups({"web": []})
    ok, message = groups.add_hosts_to_group("web", "web1;@db", save=False)
    assert not ok and "@db" in message
    assert groups.get_hosts("web") == []
    ok, message = groups.add_hosts_to_group("web", " ; ", save=False)
    assert not ok and "no host names" in message


def test_remove_group() -> None:
    groups = Groups({"web": ["web1"], "db": []})
    assert groups.remove_group("WEB", save=False) == (True, "")
    assert groups.get_groups() == ["db"]
    ok, message = groups.remove_group("web", save=False)
    assert not ok and "web" in message


def test_remove_host() -> None:
    groups = Groups({"web": ["web1", "web*"]})
    assert groups.remove_host("web", "WEB1", save=False) == (True, "")
    assert groups.remove_host("web", "web*", save=False) == (True, "")
    assert groups.get_hosts("web") == []
    assert groups.has_group("web")
    ok, _ = groups.remove_host("web", "web1", save=False)
    assert not ok
    ok, _ = groups.remove_host("nosuch", "web1", save=False)
    assert not ok


def test_save_without_path_is_an_error() -> None:
    groups = Groups()
    with pytest.raises(ConfigError, match="not loaded from a file"):
        groups.add_group("web")


# --- saving --------------------------------------------------------------------------


def test_save_load_round_trip(groups_file: Path) -> None:
    groups = Groups.load(groups_file)
    groups.add_group("empty", save=False)
    groups.add_hosts_to_group("web", "web1;web2;web[3-5]", save=False)
    groups.add_host_to_group("db", "db*", save=False)
    groups.save_changes()

    again = Groups.load(groups_file)
    assert again.get_groups() == ["db", "empty", "web"]
    assert again.get_hosts("web") == ["web1", "web2", "web[3-5]"]
    assert again.get_hosts("db") == ["db*"]
    assert again.get_hosts("empty") == []


def test_saved_file_is_readable_by_func(groups_file: Path) -> None:
    groups = Groups(path=groups_file)
    groups.add_hosts_to_group("web", "web1;web2")
    text = groups_file.read_text(encoding="utf-8")
    assert "[web]\nhost = web1,web2\n" in text


def test_editing_saves_by_default(groups_file: Path) -> None:
    groups = Groups.load(groups_file)
    groups.add_host_to_group("web", "web1")
    assert Groups.load(groups_file).get_hosts("web") == ["web1"]
    groups.remove_host("web", "web1")
    assert Groups.load(groups_file).get_hosts("web") == []
    groups.remove_group("web")
    assert Groups.load(groups_file).get_groups() == []


def test_save_keeps_other_options_and_drops_removed_groups(groups_file: Path) -> None:
    write(groups_file, "[web]\nhost = web1\nsubgroup = x; y\n\n[old]\nhost = gone\n")
    groups = Groups.load(groups_file)
    groups.remove_group("old")
    text = groups_file.read_text(encoding="utf-8")
    assert "subgroup = x; y" in text
    assert "old" not in text
    assert Groups.load(groups_file).get_hosts("web") == ["web1"]


def test_save_creates_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "conf" / "dir" / "groups"
    Groups.load(target).add_group("web")
    assert Groups.load(target).get_groups() == ["web"]


def test_save_is_atomic_and_leaves_no_temp_files(groups_file: Path) -> None:
    write(groups_file, "[web]\nhost = web1\n")
    before = groups_file.stat().st_ino
    Groups.load(groups_file).add_host_to_group("web", "web2")
    assert groups_file.stat().st_ino != before
    assert sorted(p.name for p in groups_file.parent.iterdir()) == ["groups"]


def test_save_keeps_file_mode(groups_file: Path) -> None:
    write(groups_file, "[web]\nhost = web1\n")
    os.chmod(groups_file, 0o640)
    Groups.load(groups_file).add_group("db")
    assert stat.S_IMODE(groups_file.stat().st_mode) == 0o640


def test_new_file_is_world_readable(groups_file: Path) -> None:
    Groups.load(groups_file).add_group("db")
    assert stat.S_IMODE(groups_file.stat().st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    groups = Groups.load(conf / "groups")
    os.chmod(conf, 0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write") as info:
            groups.add_group("web")
        assert str(conf / "groups") in str(info.value)
    finally:
        os.chmod(conf, 0o700)


def test_parent_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path / "conf", "not a directory\n")
    with pytest.raises(ConfigError, match="cannot write"):
        Groups(path=tmp_path / "conf" / "groups").add_group("web")


def test_failed_write_leaves_old_file_and_no_temp(
    groups_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(groups_file, "[web]\nhost = web1\n")
    groups = Groups.load(groups_file)

    def fail(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ConfigError, match="No space left"):
        groups.add_group("db")
    monkeypatch.undo()
    assert groups_file.read_text(encoding="utf-8") == "[web]\nhost = web1\n"
    assert sorted(p.name for p in groups_file.parent.iterdir()) == ["groups"]
