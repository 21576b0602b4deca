"""Target spec resolution: func's ';', glob, '@group' and exclusion syntax."""

from __future__ import annotations

import pytest

from func_amqp.errors import Func_Client_Exception
from func_amqp.overlord.groups import Groups
from func_amqp.overlord.targets import is_glob, resolve_spec, spec_needs_directory

KNOWN = ["web1", "web2", "web10", "db1", "DB2", "mail.example.com", "build-a", "build-b"]


@pytest.fixture
def groups() -> Groups:
    return Groups(
        {
            "web": ["web1", "web2", "newweb"],
            "db": ["db*"],
            "mixed": ["build-[ab]", "mail.example.com", "offline"],
            "empty": [],
        }
    )


# --- is_glob -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["*", "web*", "web?", "w?b1", "web[12]", "web[!1]", "db[0-9]", "[]]", "[!]]", "a[b]c*"],
)
def test_is_glob_true(name: str) -> None:
    assert is_glob(name)


@pytest.mark.parametrize(
    "name",
    ["web1", "mail.example.com", "", "web[", "web]", "web[1", "[]", "[!]", "a]b[", "@web"],
)
def test_is_glob_false(name: str) -> None:
    assert not is_glob(name)


# --- plain names and globs -----------------------------------------------------------


def test_plain_known_name() -> None:
    assert resolve_spec("web1", KNOWN) == ["web1"]


def test_plain_unknown_name_is_targeted_as_given_lower_cased() -> None:
    assert resolve_spec("NewHost.Example.COM", KNOWN) == ["newhost.example.com"]


def test_plain_name_needs_no_known_minions() -> None:
    assert resolve_spec("web1;web2", []) == ["web1", "web2"]


def test_star_matches_everything_known_lower_cased() -> None:
    assert resolve_spec("*", KNOWN) == sorted(n.lower() for n in KNOWN)


def test_star_glob() -> None:
    assert resolve_spec("web*", KNOWN) == ["web1", "web10", "web2"]


def test_question_mark_glob() -> None:
    assert resolve_spec("web?", KNOWN) == ["web1", "web2"]


def test_bracket_glob() -> None:
    assert resolve_spec("web[12]", KNOWN) == ["web1", "web2"]
    assert resolve_spec("build-[!a]", KNOWN) == ["build-b"]
    assert resolve_spec("db[0-9]", KNOWN) == ["db1", "db2"]


def test_glob_matching_nothing_gives_nothing() -> None:
    assert resolve_spec("nomatch*", KNOWN) == []


def test_glob_is_case_insensitive_both_ways() -> None:
    assert resolve_spec("DB*", KNOWN) == ["db1", "db2"]
    assert resolve_spec("WEB[1]", ["Web1"]) == ["web1"]


def test_plain_name_case_insensitive_against_known() -> None:
    assert resolve_spec("WEB1", KNOWN) == ["web1"]
    assert resolve_spec("db2", KNOWN) == ["db2"]


def test_unclosed_bracket_is_a_literal_name() -> None:
    assert resolve_spec("web[1", KNOWN) == ["web[1"]


# --- multiple parts ------------------------------------------------------------------


def test_parts_are_united_sorted_and_deduplicated() -> None:
    assert resolve_spec("web2;db*;web2;WEB2", KNOWN) == ["db1", "db2", "web2"]


def test_empty_parts_and_whitespace_are_ignored() -> None:
    assert resolve_spec(" ;web1 ;; db1; ;", KNOWN) == ["db1", "web1"]


# --- groups --------------------------------------------------------------------------


def test_group_plain_members_are_taken_as_given(groups: Groups) -> None:
    assert resolve_spec("@web", KNOWN, groups) == ["newweb", "web1", "web2"]


def test_group_glob_members_match_known(groups: Groups) -> None:
    assert resolve_spec("@db", KNOWN, groups) == ["db1", "db2"]


def test_group_mixed_members(groups: Groups) -> None:
    expected = ["build-a", "build-b", "mail.example.com", "offline"]
    assert resolve_spec("@mixed", KNOWN, groups) == expected


def test_empty_group(groups: Groups) -> None:
    assert resolve_spec("@empty", KNOWN, groups) == []


def test_group_name_is_case_insensitive(groups: Groups) -> None:
    assert resolve_spec("@WEB", KNOWN, groups) == ["newweb", "web1", "web2"]


def test_group_with_host_glob(groups: Groups) -> None:
    assert resolve_spec("@web:web*", KNOWN, groups) == ["web1", "web2"]
    assert resolve_spec("@web:*2", KNOWN, groups) == ["web2"]
    assert resolve_spec("@web:web[!1]", KNOWN, groups) == ["web2"]


def test_group_host_glob_applies_to_expanded_glob_members(groups: Groups) -> None:
    assert resolve_spec("@db:*1", KNOWN, groups) == ["db1"]


def test_group_host_glob_is_case_insensitive(groups: Groups) -> None:
    assert resolve_spec("@Web:WEB?", KNOWN, groups) == ["web1", "web2"]


def test_group_with_plain_host_selects_that_member(groups: Groups) -> None:
    assert resolve_spec("@web:newweb", KNOWN, groups) == ["newweb"]
    assert resolve_spec("@web:db1", KNOWN, groups) == []


def test_groups_and_names_combine(groups: Groups) -> None:
    assert resolve_spec("@db;web1;@web:new*", KNOWN, groups) == ["db1", "db2", "newweb", "web1"]


def test_unknown_group_says_which_and_where(groups: Groups, tmp_path) -> None:
    with pytest.raises(Func_Client_Exception) as info:
        resolve_spec("web1;@nosuch", KNOWN, groups)
    message = str(info.value)
    assert "'nosuch'" in message
    assert "'groups' file" in message
    assert "db, empty, mixed, web" in message

    loaded = Groups.load(tmp_path / "groups")
    with pytest.raises(Func_Client_Exception) as info:
        resolve_spec("@nosuch", KNOWN, loaded)
    assert str(tmp_path / "groups") in str(info.value)
    assert "no groups are defined" in str(info.value)


def test_group_without_groups_object_is_unknown() -> None:
    with pytest.raises(Func_Client_Exception, match="unknown group 'web'"):
        resolve_spec("@web", KNOWN)


# --- exclusion -----------------------------------------------------------------------


def test_exclude_plain_name() -> None:
    assert resolve_spec("web*", KNOWN, exclude_spec="web10") == ["web1", "web2"]


def test_exclude_glob_and_several_parts() -> None:
    assert resolve_spec("*", KNOWN, exclude_spec="web*;build-?; DB1") == [
        "db2",
        "mail.example.com",
    ]


def test_exclude_is_case_insensitive() -> None:
    assert resolve_spec("web1;web2", KNOWN, exclude_spec="WEB2") == ["web1"]


def test_exclude_group(groups: Groups) -> None:
    assert resolve_spec("*", KNOWN, groups, exclude_spec="@web;@db") == [
        "build-a",
        "build-b",
        "mail.example.com",
        "web10",
    ]


def test_exclude_group_with_host_glob(groups: Groups) -> None:
    assert resolve_spec("@web", KNOWN, groups, exclude_spec="@web:web*") == ["newweb"]


def test_exclude_glob_reaches_unknown_plain_targets() -> None:
    assert resolve_spec("new1;new2;web1", [], exclude_spec="new*") == ["web1"]


def test_exclude_everything_gives_empty_list() -> None:
    assert resolve_spec("web1", KNOWN, exclude_spec="*") == []


@pytest.mark.parametrize("exclude", [None, "", " ", ";;"])
def test_empty_exclude_excludes_nothing(exclude: str | None) -> None:
    assert resolve_spec("web1", KNOWN, exclude_spec=exclude) == ["web1"]


def test_exclude_unknown_group_is_an_error(groups: Groups) -> None:
    with pytest.raises(Func_Client_Exception, match="unknown group 'nosuch'"):
        resolve_spec("*", KNOWN, groups, exclude_spec="@nosuch")


# --- bad specs -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", "   ", ";", " ; ;; "])
def test_empty_spec_is_an_error(spec: str) -> None:
    with pytest.raises(Func_Client_Exception, match="empty target spec"):
        resolve_spec(spec, KNOWN)


def test_non_string_spec_is_an_error() -> None:
    with pytest.raises(Func_Client_Exception, match="empty target spec"):
        resolve_spec(None, KNOWN)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["@", "@ ", "@:web*"])
def test_at_without_group_name_is_an_error(spec: str, groups: Groups) -> None:
    with pytest.raises(Func_Client_Exception, match="group name"):
        resolve_spec(spec, KNOWN, groups)


def test_group_with_empty_host_glob_is_an_error(groups: Groups) -> None:
    with pytest.raises(Func_Client_Exception, match="':' must be followed"):
        resolve_spec("@web:", KNOWN, groups)


@pytest.mark.parametrize("spec", ["web1,web2", "web1 web2", "@web:web1,web2"])
def test_wrong_separator_is_an_error(spec: str, groups: Groups) -> None:
    with pytest.raises(Func_Client_Exception, match="separate several targets with ';'"):
        resolve_spec(spec, KNOWN, groups)


def test_errors_are_func_exceptions() -> None:
    from func_amqp.errors import FuncException

    with pytest.raises(FuncException):
        resolve_spec("", KNOWN)


# --- spec_needs_directory ------------------------------------------------------------


@pytest.mark.parametrize("spec", ["web1", "web1;db1", " web1 ; ", "web[1", ""])
def test_plain_specs_need_no_directory(spec: str) -> None:
    assert not spec_needs_directory(spec)


@pytest.mark.parametrize("spec", ["*", "web1;db*", "web?", "web[12]", "@web", "web1;@web:x"])
def test_globs_and_groups_need_the_directory(spec: str) -> None:
    assert spec_needs_directory(spec)


def test_exclude_spec_counts_for_directory() -> None:
    assert not spec_needs_directory("web1", "web2")
    assert spec_needs_directory("web1", "web*")
    assert spec_needs_directory("web1", "@web")
    assert not spec_needs_directory("web1", None)
