"""The ``mock`` module's pure parts: argv builders, option checks, log parsers, layout."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from func_amqp.config import MinionConfig, Paths
from func_amqp.errors import ArgumentError, ConfigError
from func_amqp.minion.loader import load_modules, shipped_modules_dir
from func_amqp.minion.modules import func_module


def _load() -> ModuleType:
    shipped_modules_dir()  # registers func_amqp.modules in a source checkout
    return importlib.import_module("func_amqp.modules.mock")


m = _load()

ALL_OPTIONS: dict[str, Any] = {
    "uniqueext": "u1",
    "no_clean": True,
    "enable_network": True,
    "define": {"packager": "Jane Doe", "dist": ".fc40"},
    "with": ["tests"],
    "without": ["docs", "x11"],
    "isolation": "simple",
    "bootstrap_chroot": False,
    "timeout": 60,
    "build_id": 7,
    "owner": "@group",
    "project": "demo",
}


# --- argv builders --------------------------------------------------------------------------


def test_mock_argv_minimal() -> None:
    argv = m.mock_argv("mock", "fedora-40-x86_64", "/s/x-1-1.src.rpm", "/r", "123.456", m.BuildOptions())
    assert argv == [
        "mock", "-r", "fedora-40-x86_64", "--rebuild", "/s/x-1-1.src.rpm",
        "--resultdir", "/r", "--uniqueext", "123.456",
    ]


def test_mock_argv_every_option() -> None:
    options = m.parse_options(ALL_OPTIONS)
    argv = m.mock_argv("/usr/bin/mock", "/etc/mock/c.cfg", Path("/s/x-1-1.src.rpm"), Path("/r"), "u1", options)
    assert argv == [
        "/usr/bin/mock", "-r", "/etc/mock/c.cfg", "--rebuild", "/s/x-1-1.src.rpm",
        "--resultdir", "/r", "--uniqueext", "u1",
        "--no-clean", "--enable-network",
        "--define", "packager Jane Doe", "--define", "dist .fc40",
        "--with", "tests", "--without", "docs", "--without", "x11",
        "--isolation=simple", "--no-bootstrap-chroot",
    ]


def test_mock_argv_bootstrap_on() -> None:
    argv = m.mock_argv("mock", "c", "/s.src.rpm", "/r", "u", m.BuildOptions(bootstrap_chroot=True))
    assert argv[-1] == "--bootstrap-chroot"


def test_rpmbuild_argv_every_option() -> None:
    options = m.parse_options(ALL_OPTIONS)
    argv = m.rpmbuild_argv("rpmbuild", "/s/x-1-1.src.rpm", "/w", "/r", options)
    assert argv == [
        "rpmbuild", "--rebuild",
        "--define", "_topdir /w",
        "--define", "_rpmdir /r",
        "--define", "_srcrpmdir /r",
        "--define", "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
        "--define", "packager Jane Doe", "--define", "dist .fc40",
        "--with", "tests", "--without", "docs", "--without", "x11",
        "/s/x-1-1.src.rpm",
    ]


def test_rpmbuild_argv_escapes_percent_in_paths() -> None:
    argv = m.rpmbuild_argv("rpmbuild", "/s.src.rpm", "/w/100%", "/r/%{x}", m.BuildOptions())
    assert "_topdir /w/100%%" in argv
    assert "_rpmdir /r/%%{x}" in argv


def test_ignored_by_rpmbuild_lists_mock_only_options() -> None:
    assert m.ignored_by_rpmbuild(m.BuildOptions()) == []
    assert m.ignored_by_rpmbuild(m.parse_options(ALL_OPTIONS)) == [
        "uniqueext", "no_clean", "enable_network", "isolation", "bootstrap_chroot",
    ]


def test_default_uniqueext_is_coprs_format() -> None:
    assert m.default_uniqueext(1700000000.5) == "1700000000.500000"
    assert m.default_uniqueext() != ""


# --- options ---------------------------------------------------------------------------------


def test_options_default() -> None:
    assert m.parse_options(None) == m.BuildOptions()
    assert m.parse_options({}) == m.BuildOptions()


def test_options_all_valid() -> None:
    options = m.parse_options(ALL_OPTIONS)
    assert options.defines == (("packager", "Jane Doe"), ("dist", ".fc40"))
    assert options.with_ == ("tests",)
    assert options.without == ("docs", "x11")
    assert options.timeout == 60.0
    assert options.build_id == 7
    assert (options.owner, options.project) == ("@group", "demo")


def test_defines_as_list_of_strings() -> None:
    options = m.parse_options({"define": ["packager Jane Doe", "_smp_mflags -j2", "n 1"]})
    assert options.defines == (("packager", "Jane Doe"), ("_smp_mflags", "-j2"), ("n", "1"))


def test_define_numbers_become_strings() -> None:
    assert m.parse_options({"define": {"jobs": 4}}).defines == (("jobs", "4"),)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"nosuch": 1}, "nosuch"),
        ({"uniqueext": 5}, "uniqueext"),
        ({"uniqueext": "-rf"}, "uniqueext"),
        ({"uniqueext": "a/b"}, "uniqueext"),
        ({"uniqueext": ".."}, "uniqueext"),
        ({"uniqueext": "a b"}, "uniqueext"),
        ({"uniqueext": "a\nb"}, "uniqueext"),
        ({"uniqueext": "x" * 101}, "uniqueext"),
        ({"no_clean": "yes"}, "no_clean"),
        ({"enable_network": 1}, "enable_network"),
        ({"bootstrap_chroot": "false"}, "bootstrap_chroot"),
        ({"define": "packager x"}, "define"),
        ({"define": {"-x": "1"}}, "define"),
        ({"define": {"a b": "1"}}, "define"),
        ({"define": {"x": "a\nb"}}, "define"),
        ({"define": {"x": "a\0b"}}, "define"),
        ({"define": {"x": ""}}, "define"),
        ({"define": {"x": "  "}}, "define"),
        ({"define": {"x": True}}, "define"),
        ({"define": {"x": ["1"]}}, "define"),
        ({"define": {"_topdir": "/etc"}}, "define"),
        ({"define": {"_rpmdir": "/etc"}}, "define"),
        ({"define": ["--eval x"]}, "define"),
        ({"define": ["nospace"]}, "define"),
        ({"define": ["x 1\n%y 2"]}, "define"),
        ({"define": [3]}, "define"),
        ({"with": "tests"}, "with"),
        ({"with": ["--nodeps"]}, "with"),
        ({"with": ["a b"]}, "with"),
        ({"with": [1]}, "with"),
        ({"without": ["-x"]}, "without"),
        ({"isolation": "chroot"}, "isolation"),
        ({"isolation": None}, "isolation"),
        ({"timeout": "10"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -5}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"build_id": "7"}, "build_id"),
        ({"build_id": 1.5}, "build_id"),
        ({"build_id": True}, "build_id"),
        ({"build_id": -1}, "build_id"),
        ({"owner": "alice"}, "owner"),
        ({"project": "demo"}, "project"),
        ({"owner": "../x", "project": "p"}, "owner"),
        ({"owner": "a", "project": "p/q"}, "project"),
        ({"owner": "a", "project": "-p"}, "project"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ArgumentError, match=key):
        m.parse_options(options)


@pytest.mark.parametrize("raw", ["uniqueext=x", ["no_clean"], 3])
def test_options_must_be_a_dict(raw: Any) -> None:
    with pytest.raises(ArgumentError, match="options must be a dict"):
        m.parse_options(raw)


# --- srpm and chroot arguments ----------------------------------------------------------------


def test_srpm_path_url_and_file_url() -> None:
    path = m.parse_srpm("/srv/in/hello-func-1.0-1.src.rpm")
    assert (path.url, path.path, path.pkgname) == (None, Path("/srv/in/hello-func-1.0-1.src.rpm"), "hello-func")
    url = m.parse_srpm("https://example.org/pkgs/hello-func-1.0-1.src.rpm?x=1")
    assert (url.url, url.path, url.filename) == (
        "https://example.org/pkgs/hello-func-1.0-1.src.rpm?x=1", None, "hello-func-1.0-1.src.rpm",
    )
    local = m.parse_srpm("file:///srv/in/my%20dir/python-foo-2.0~rc1-3.fc40.src.rpm")
    assert local.path == Path("/srv/in/my dir/python-foo-2.0~rc1-3.fc40.src.rpm")
    assert local.pkgname == "python-foo"
    assert m.parse_srpm("file://localhost/a/b-1-1.src.rpm").path == Path("/a/b-1-1.src.rpm")


@pytest.mark.parametrize(
    "srpm",
    [
        None,
        17,
        "",
        "relative/x-1-1.src.rpm",
        "x-1-1.src.rpm",
        "/a/x-1-1.rpm",
        "/a/x.src.rpm",
        "/a/-x-1-1.src.rpm",
        "/a/x-1-1.src.rpm\n",
        "ftp://example.org/x-1-1.src.rpm",
        "ssh://example.org/x-1-1.src.rpm",
        "file://otherhost/x-1-1.src.rpm",
        "http:///x-1-1.src.rpm",
        "https://example.org/",
        "https://example.org/a%2Fb-1-1.src.rpm",
    ],
)
def test_bad_srpm_arguments(srpm: Any) -> None:
    with pytest.raises(ArgumentError, match="srpm|SRPM"):
        m.parse_srpm(srpm)


def test_package_name_from_filename() -> None:
    assert m.package_name_from_filename("hello-func-1.0-1.src.rpm") == "hello-func"
    assert m.package_name_from_filename("gcc-c++-14.1-2.fc40.src.rpm") == "gcc-c++"
    with pytest.raises(ArgumentError):
        m.package_name_from_filename("noversion.src.rpm")


def test_chroot_names(tmp_path: Path) -> None:
    assert m.parse_chroot("fedora-40-x86_64") == m.Chroot("fedora-40-x86_64", "fedora-40-x86_64")
    assert m.parse_chroot("centos-stream+epel-next-9-x86_64").label == "centos-stream+epel-next-9-x86_64"
    cfg = tmp_path / "child.cfg"
    cfg.write_text("config_opts['root'] = 'x'\n")
    assert m.parse_chroot(str(cfg)) == m.Chroot(str(cfg), "child")


@pytest.mark.parametrize(
    "chroot",
    [
        None, "", "-r", "--help", "a/b", ".", "..", "a b", "x\n", "x" * 101, "fedora.cfg",
        "conf/x.cfg", "/nonexistent/x.cfg", "/etc/passwd",
    ],
)
def test_bad_chroots(chroot: Any) -> None:
    with pytest.raises(ArgumentError, match="chroot"):
        m.parse_chroot(chroot)


def test_chroot_cfg_must_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.cfg").mkdir()
    with pytest.raises(ArgumentError, match="not a file"):
        m.parse_chroot(str(tmp_path / "dir.cfg"))


# --- state.log and rpmbuild output ------------------------------------------------------------

STATE_LOG = """\
2024-05-01 10:00:00,001 - Mock Version: 5.5
2024-05-01 10:00:00,002 - Start(bootstrap): init plugins
2024-05-01 10:00:00,003 - Finish(bootstrap): init plugins
2024-05-01 10:00:00,004 - Start: init plugins
2024-05-01 10:00:00,005 - Finish: init plugins
2024-05-01 10:00:00,006 - Start: run
2024-05-01 10:00:00,007 - Start(bootstrap): chroot init
2024-05-01 10:00:01,000 - Start(bootstrap): installing dnf tooling
""".splitlines()


def test_parse_state_line() -> None:
    event = m.parse_state_line("2024-05-01 10:00:00,006 - Start: build phase for x-1-1.src.rpm")
    assert event == m.StateEvent("start", "build phase for x-1-1.src.rpm", False, "2024-05-01 10:00:00,006")
    boot = m.parse_state_line("2024-05-01 10:00:00,007 - Finish(bootstrap): chroot init")
    assert (boot.event, boot.name, boot.bootstrap) == ("finish", "chroot init", True)
    assert boot.phase == "chroot init (bootstrap)"
    assert m.parse_state_line("2024-05-01 10:00:00,001 - Mock Version: 5.5") is None
    assert m.parse_state_line("Start: no timestamp") is None
    assert m.parse_state_line("") is None


def test_current_phase_is_last_open_start() -> None:
    assert m.current_phase(STATE_LOG) == "installing dnf tooling (bootstrap)"
    more = [
        *STATE_LOG,
        "t - Finish(bootstrap): installing dnf tooling",
        "t - Finish(bootstrap): chroot init",
    ]
    assert m.current_phase(more) == "run"
    more += [
        "t - Start: chroot init",
        "t - Finish: chroot init",
        "t - Start: build phase for x-1-1.src.rpm",
        "t - Start: rpmbuild x-1-1.src.rpm",
    ]
    assert m.current_phase(more) == "rpmbuild x-1-1.src.rpm"
    more += ["t - Finish: rpmbuild x-1-1.src.rpm"]
    assert m.current_phase(more) == "build phase for x-1-1.src.rpm"
    more += ["t - Finish: build phase for x-1-1.src.rpm", "t - Finish: run"]
    assert m.current_phase(more) is None


def test_state_tracker_reports_changes_only() -> None:
    tracker = m.StateTracker()
    changes = [tracker.feed(line) for line in [
        "t - Start: run", "noise", "t - Start: chroot init", "t - Finish: chroot init", "t - Finish: run",
    ]]
    assert changes == ["run", None, "chroot init", "run", None]


def test_unbalanced_finish_is_ignored() -> None:
    assert m.current_phase(["t - Start: run", "t - Finish: something else"]) == "run"


@pytest.mark.parametrize(
    ("line", "section"),
    [
        ("Executing(%prep): /bin/sh -e /var/tmp/rpm-tmp.abc", "prep"),
        ("Executing(%build): /bin/sh -e /var/tmp/rpm-tmp.abc", "build"),
        ("Executing(%install): /bin/sh -e /var/tmp/rpm-tmp.abc", "install"),
        ("Executing(%check): /bin/sh -e /var/tmp/rpm-tmp.abc", "check"),
        ("Executing(%clean): /bin/sh -e /var/tmp/rpm-tmp.abc", "clean"),
        ("Executing(--clean): /bin/sh -e /var/tmp/rpm-tmp.abc", "clean"),
        ("Executing(rmbuild): /bin/sh -e /var/tmp/rpm-tmp.abc", "rmbuild"),
        ("+ echo Executing(%build)", None),
        ("Wrote: /r/x-1-1.noarch.rpm", None),
        ("", None),
    ],
)
def test_parse_rpmbuild_section(line: str, section: str | None) -> None:
    assert m.parse_rpmbuild_section(line) == section


def test_log_follower_returns_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "build.log"
    follower = m.LogFollower(path)
    assert follower.read_new() == []
    path.write_bytes(b"one\ntw")
    assert follower.read_new() == ["one"]
    with open(path, "ab") as fh:
        fh.write(b"o\nthr\xffee")
    assert follower.read_new() == ["two"]
    assert follower.flush() == ["thr\ufffdee"]
    assert follower.flush() == []


# --- exit codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rc", "status"),
    [
        (0, "succeeded"),
        (10, "build_failed"), (11, "build_failed"),
        (30, "deps_or_srpm_failed"), (31, "deps_or_srpm_failed"), (40, "deps_or_srpm_failed"),
        (3, "config_error"), (5, "config_error"), (6, "config_error"), (50, "config_error"), (70, "config_error"),
        (20, "infra_error"), (60, "infra_error"), (80, "infra_error"), (90, "infra_error"),
        (1, "infra_error"), (7, "infra_error"), (143, "infra_error"), (-9, "infra_error"),
    ],
)
def test_mock_exit_codes(rc: int, status: str) -> None:
    assert m.mock_status(rc) == status
    assert m.final_status("mock", rc, False, False) == status


def test_rpmbuild_outcomes() -> None:
    name = "x-1-1.src.rpm"
    assert m.rpmbuild_status(0, ["error: whatever"], name) == "succeeded"
    deps = ["error: Failed build dependencies:", "\tgcc is needed by x-1-1.noarch"]
    assert m.rpmbuild_status(11, deps, name) == "deps_or_srpm_failed"
    assert m.rpmbuild_status(1, [f"error: {name} cannot be installed"], name) == "deps_or_srpm_failed"
    assert m.rpmbuild_status(1, ["error: cannot open /x/y.src.rpm: No such file"], name) == "deps_or_srpm_failed"
    assert m.rpmbuild_status(1, ["error: y.src.rpm: not an rpm package"], name) == "deps_or_srpm_failed"
    build = ["RPM build errors:", "error: Bad exit status from /var/tmp/rpm-tmp.x (%build)"]
    assert m.rpmbuild_status(1, build, name) == "build_failed"
    assert m.rpmbuild_status(11, ["compiler: cannot open source file"], name) == "build_failed"
    after_prep = ["Executing(%prep): /bin/sh -e /var/tmp/rpm-tmp.x", "error: cannot open config.h"]
    assert m.rpmbuild_status(1, after_prep, name) == "build_failed"
    assert m.srpm_blamed(["Installing x", f"error: {name} cannot be installed"], name) == [
        f"error: {name} cannot be installed"
    ]


def test_cancel_and_timeout_win_over_exit_codes() -> None:
    assert m.final_status("mock", 7, True, False) == "timeout"
    assert m.final_status("rpmbuild", -2, True, False) == "timeout"
    assert m.final_status("mock", 7, True, True) == "cancelled"
    assert m.final_status("rpmbuild", 0, False, True) == "cancelled"


def test_srpm_problem(tmp_path: Path) -> None:
    good = tmp_path / "x-1-1.src.rpm"
    good.write_bytes(m.RPM_LEAD_MAGIC + b"rest")
    assert m.srpm_problem(good) is None
    bad = tmp_path / "y-1-1.src.rpm"
    bad.write_bytes(b"\x00\x01\x02\x03junk")
    assert "not an RPM" in m.srpm_problem(bad)
    empty = tmp_path / "e-1-1.src.rpm"
    empty.write_bytes(b"")
    assert "not an RPM" in m.srpm_problem(empty)
    assert "not found" in m.srpm_problem(tmp_path / "missing-1-1.src.rpm")
    (tmp_path / "d-1-1.src.rpm").mkdir()
    assert "not a regular file" in m.srpm_problem(tmp_path / "d-1-1.src.rpm")


def test_resolve_backend() -> None:
    both = {"mock": "/usr/bin/mock", "rpmbuild": "/usr/bin/rpmbuild"}.get
    only_rpmbuild = {"rpmbuild": "/usr/bin/rpmbuild"}.get
    assert m.resolve_backend("auto", "mock", "rpmbuild", both) == ("mock", "/usr/bin/mock")
    assert m.resolve_backend("auto", "mock", "rpmbuild", only_rpmbuild) == ("rpmbuild", "/usr/bin/rpmbuild")
    assert m.resolve_backend("rpmbuild", "mock", "rpmbuild", both) == ("rpmbuild", "/usr/bin/rpmbuild")
    assert m.resolve_backend("mock", "mock", "rpmbuild", only_rpmbuild) == ("mock", None)
    assert m.resolve_backend("auto", "mock", "rpmbuild", lambda name: None) == ("rpmbuild", None)
    with pytest.raises(ConfigError):
        m.resolve_backend("docker", "mock", "rpmbuild", both)


# --- result tree ---------------------------------------------------------------------------------


def test_result_dir_naming() -> None:
    root = Path("/srv/results")
    assert m.build_dir_name(42, "hello-func") == "00000042-hello-func"
    assert m.build_dir_name(123456789, "x") == "123456789-x"
    assert m.result_dir_path(root, "fedora-40-x86_64", "hello-func", 42) == Path(
        "/srv/results/fedora-40-x86_64/00000042-hello-func"
    )
    assert m.result_dir_path(root, "fedora-40-x86_64", "hello-func", 42, "@team", "demo") == Path(
        "/srv/results/@team/demo/fedora-40-x86_64/00000042-hello-func"
    )


def test_generated_build_ids_never_share_a_dir(tmp_path: Path) -> None:
    dirs = {m.reserve_result_dir(tmp_path, "c", "p", m.BuildOptions()) for _ in range(20)}
    assert len(dirs) == 20
    assert all(d.is_dir() and d.parent == tmp_path / "c" for d in dirs)


def test_rebuild_with_same_id_keeps_old_logs_only(tmp_path: Path) -> None:
    options = m.BuildOptions(build_id=5, owner="o", project="p")
    first = m.reserve_result_dir(tmp_path, "c", "pkg", options)
    for name in ("success", "results.json", "pkg-1-1.noarch.rpm", "build.log", "state.log"):
        (first / name).write_text(name)
    (first / "sub").mkdir()
    again = m.reserve_result_dir(tmp_path, "c", "pkg", options)
    assert again == first == tmp_path / "o" / "p" / "c" / "00000005-pkg"
    assert sorted(p.name for p in again.iterdir()) == ["prev_build_backup"]
    assert sorted(p.name for p in (again / "prev_build_backup").iterdir()) == ["build.log", "state.log"]


PACKAGES = [
    {"name": "hello-func", "epoch": None, "version": "1.0", "release": "1", "arch": "noarch"},
    {"name": "hello-func", "epoch": None, "version": "1.0", "release": "1", "arch": "src"},
    {"name": "bash", "epoch": 2, "version": "5.2", "release": "3.fc40", "arch": "x86_64"},
]


def test_package_entries() -> None:
    assert m.package_entry("hello-func (none) 1.0 1 noarch", "hello-func-1.0-1.noarch.rpm") == PACKAGES[0]
    assert m.package_entry("hello-func (none) 1.0 1 noarch", "hello-func-1.0-1.src.rpm") == PACKAGES[1]
    assert m.package_entry("bash 2 5.2 3.fc40 x86_64", "bash-5.2-3.fc40.x86_64.rpm") == PACKAGES[2]
    with pytest.raises(ValueError):
        m.package_entry("garbage", "x.rpm")
    assert m.package_entry_from_filename("hello-func-1.0-1.src.rpm") == PACKAGES[1]
    assert m.package_entry_from_filename("bash-5.2-3.fc40.x86_64.rpm") == {**PACKAGES[2], "epoch": None}
    with pytest.raises(ValueError):
        m.package_entry_from_filename("odd.rpm")


def test_results_json_and_success(tmp_path: Path) -> None:
    path = m.write_results_json(tmp_path, PACKAGES)
    assert path == tmp_path / "results.json"
    assert json.loads(path.read_text()) == {"packages": PACKAGES}
    assert m.write_success(tmp_path).read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "success"]


def test_tail_lines(tmp_path: Path) -> None:
    path = tmp_path / "build.log"
    assert m.tail_lines(path) == []
    path.write_text("".join(f"line {i}\n" for i in range(120)))
    tail = m.tail_lines(path)
    assert len(tail) == 50 and tail[0] == "line 70" and tail[-1] == "line 119"


def test_find_chroots(tmp_path: Path) -> None:
    etc, home = tmp_path / "etc", tmp_path / "home"
    (etc / "templates").mkdir(parents=True)
    home.mkdir()
    for name in ("fedora-40-x86_64.cfg", "site-defaults.cfg", "chroot-aliases.cfg", "logging.ini",
                 "templates/fedora-branched.tpl", "templates/x.cfg", "epel-9-x86_64.cfg"):
        (etc / name).write_text("")
    (home / "custom.cfg").write_text("")
    (home / "fedora-40-x86_64.cfg").write_text("")
    assert m.find_chroots([etc, home, tmp_path / "missing"]) == ["custom", "epel-9-x86_64", "fedora-40-x86_64"]


# --- the module as the minion sees it --------------------------------------------------------------


def test_settings_defaults_live_under_the_state_dir(tmp_path: Path) -> None:
    settings = m.settings_from(m.Mock.Config(), tmp_path)
    assert settings.result_root == tmp_path / "builds"
    assert settings.work_root == tmp_path / "build-work"
    assert (settings.backend, settings.default_timeout, settings.download_limit_bytes) == ("auto", 3600.0, 1073741824)
    assert settings.config_dirs == (Path("/etc/mock"), Path("~/.config/mock").expanduser())
    custom = m.Mock.Config({"result_root": "/srv/r", "config_dirs": "/a, /b"})
    assert m.settings_from(custom, tmp_path).config_dirs == (Path("/a"), Path("/b"))
    with pytest.raises(ConfigError, match="backend"):
        m.settings_from(m.Mock.Config({"backend": "podman"}), tmp_path)
    with pytest.raises(ConfigError, match="default_timeout"):
        m.settings_from(m.Mock.Config({"default_timeout": "0"}), tmp_path)


def test_module_loads_and_registers_its_arguments(tmp_path: Path) -> None:
    module = load_modules(["mock"])["mock"]
    assert {"build", "list_chroots"} <= set(module.list_methods())
    assert not any(name.startswith("_") or name == "settings" for name in module.list_methods())
    args = module.get_method_args()
    assert args["build"]["args"]["options"]["type"] == "hash"
    assert [args["build"]["args"][name]["order"] for name in ("srpm", "chroot", "options")] == [0, 1, 2]


def test_build_rejects_bad_arguments_before_touching_disk(tmp_path: Path) -> None:
    func_module.configure(MinionConfig(), Paths(config_dir=tmp_path / "conf", state_dir=tmp_path / "state"))
    try:
        module = m.Mock()
        with pytest.raises(ArgumentError, match="nosuch"):
            module.build("/x/a-1-1.src.rpm", "fedora-40-x86_64", {"nosuch": True})
        with pytest.raises(ArgumentError, match="chroot"):
            module.build("/x/a-1-1.src.rpm", "../etc")
        with pytest.raises(ArgumentError, match="srpm"):
            module.build("a-1-1.src.rpm", "fedora-40-x86_64")
        assert not (tmp_path / "state").exists()
    finally:
        func_module.configure()


def test_list_chroots_uses_configured_dirs(tmp_path: Path) -> None:
    (tmp_path / "fedora-41-aarch64.cfg").write_text("")
    module = m.Mock()
    module.options.config_dirs = str(tmp_path)
    assert module.list_chroots() == ["fedora-41-aarch64"]
