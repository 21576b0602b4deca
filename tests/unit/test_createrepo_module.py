"""The createrepo module's pure parts: command lines, package lists, path validation,
finding the command, the lock. Nothing here runs createrepo_c."""

from __future__ import annotations

import fcntl
import importlib
import os
import sys
import threading
import types
from pathlib import Path

import pytest

from func_amqp.errors import ArgumentError
from func_amqp.minion import progress
from func_amqp.minion.loader import load_modules, shipped_modules_dir


def _import_module() -> types.ModuleType:
    shipped_modules_dir()  # makes func_amqp.modules importable from a source tree
    return importlib.import_module("func_amqp.modules.createrepo")


cr = _import_module()

CMD = "/opt/bin/createrepo_c"
BASE = [CMD, "--no-database", "--general-compress-type=gz", "--ignore-lock"]
RPM_A = "00000001-hello/hello-1.0-1.noarch.rpm"
SRPM_A = "00000001-hello/hello-1.0-1.src.rpm"
RPM_B = "00000002-world/noarch/world-2.0-1.noarch.rpm"
RPM_C = "00000003-other/other-1-1.noarch.rpm"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository directory with three build directories (empty stand-in RPMs)."""
    root = tmp_path / "repo"
    for name in (RPM_A, SRPM_A, RPM_B, RPM_C):
        touch(root / name)
    touch(root / "00000002-world" / "build.log")
    return Path(os.path.realpath(root))


# --- command lines ----------------------------------------------------------------------


def test_full_run_of_a_new_repository(repo: Path) -> None:
    plan = cr.plan_run(repo, [], [], None)
    assert not plan.incremental
    assert cr.build_argv(CMD, plan) == [*BASE, "--", str(repo)]


def test_full_run_of_an_existing_repository_updates(repo: Path) -> None:
    plan = cr.plan_run(repo, [], [], [RPM_A])
    assert cr.build_argv(CMD, plan) == [*BASE, "--update", "--skip-stat", "--", str(repo)]


def test_add_lists_existing_and_new_packages(repo: Path) -> None:
    plan = cr.plan_run(repo, ["00000002-world"], [], [RPM_A, SRPM_A])
    assert plan.pkglist == (RPM_A, SRPM_A, RPM_B)
    assert plan.add == ("00000002-world",)
    argv = cr.build_argv(CMD, plan, "/tmp/list")
    assert argv == [*BASE, "--update", "--skip-stat", "--pkglist=/tmp/list", "--", str(repo)]
    assert "--recycle-pkglist" not in argv


def test_add_to_a_new_repository_lists_only_the_added(repo: Path) -> None:
    plan = cr.plan_run(repo, ["00000001-hello"], [], None)
    assert plan.pkglist == (RPM_A, SRPM_A)
    assert cr.build_argv(CMD, plan, "L") == [*BASE, "--pkglist=L", "--", str(repo)]


def test_add_drops_listed_packages_missing_on_disk(repo: Path) -> None:
    plan = cr.plan_run(repo, ["00000003-other"], [], [RPM_A, "gone/x.rpm", "../outside.rpm"])
    assert plan.pkglist == (RPM_A, RPM_C)


def test_add_of_a_single_rpm(repo: Path) -> None:
    plan = cr.plan_run(repo, [RPM_C], [], [])
    assert plan.pkglist == (RPM_C,)


def test_delete_becomes_excludes_and_leaves_the_list(repo: Path) -> None:
    plan = cr.plan_run(repo, [], ["00000001-hello", RPM_B], [RPM_A, SRPM_A, RPM_B, RPM_C])
    assert plan.pkglist == (RPM_C,)
    assert plan.excludes == ("00000001-hello/*", RPM_B)
    assert cr.build_argv(CMD, plan, "L") == [
        *BASE, "--update", "--skip-stat", "--pkglist=L",
        "--excludes=00000001-hello/*", f"--excludes={RPM_B}", "--", str(repo),
    ]


def test_delete_of_a_missing_directory_still_excludes_it(repo: Path) -> None:
    plan = cr.plan_run(repo, [], ["00000009-gone"], [RPM_A, "00000009-gone/x.rpm"])
    assert plan.excludes == ("00000009-gone/*",)
    assert plan.pkglist == (RPM_A,)


def test_added_and_deleted_entry_is_only_deleted(repo: Path) -> None:
    plan = cr.plan_run(repo, ["00000001-hello", "00000003-other"], ["00000001-hello"], [])
    assert plan.add == ("00000003-other",)
    assert plan.pkglist == (RPM_C,)


def test_comps_becomes_the_groupfile(repo: Path) -> None:
    touch(repo / "comps.xml")
    full = cr.build_argv(CMD, cr.plan_run(repo, [], [], None))
    added = cr.build_argv(CMD, cr.plan_run(repo, ["00000003-other"], [], []), "L")
    for argv in (full, added):
        assert f"--groupfile={repo / 'comps.xml'}" in argv
        assert argv[-2:] == ["--", str(repo)]


def test_deleted_prefix_does_not_match_a_longer_name() -> None:
    assert cr.is_deleted("1-foo/a.rpm", ["1-foo"])
    assert cr.is_deleted("1-foo/a.rpm", ["1-foo/a.rpm"])
    assert not cr.is_deleted("11-foo/a.rpm", ["1-foo"])
    assert not cr.is_deleted("1-foobar/a.rpm", ["1-foo"])


def test_find_rpms_skips_createrepo_output(repo: Path) -> None:
    touch(repo / "repodata" / "stray.rpm")
    touch(repo / ".repodata" / "stray.rpm")
    assert cr.find_rpms(repo) == sorted([RPM_A, SRPM_A, RPM_B, RPM_C])


# --- checking what the metadata lists ---------------------------------------------------


def test_package_problems_names_each_kind(repo: Path) -> None:
    listed = [RPM_A, RPM_A, "gone/x.rpm", RPM_B]
    problems = cr.package_problems(repo, listed, [RPM_A, RPM_C], ["00000002-world"])
    assert problems == [
        f"{RPM_A} is listed more than once",
        "gone/x.rpm is listed but missing on disk",
        f"{RPM_B} is listed although it was deleted",
        f"{RPM_C} is not listed",
    ]
    assert cr.package_problems(repo, [RPM_A, RPM_C], [RPM_C]) == []


# --- validating paths from callers ------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("..", "'..'"),
        ("../repo/00000001-hello", "'..'"),
        ("00000001-hello/../../x", "'..'"),
        ("/etc", "relative"),
        ("/etc/passwd", "relative"),
        ("00000001-hello\nfoo", "control characters"),
        ("00000001-hello\x00", "control characters"),
        ("-rf", "start with '-'"),
        ("./--excludes=x", "start with '-'"),
        ("--help", "start with '-'"),
        ("0000*", "'*' or '?'"),
        ("00000001-hell?", "'*' or '?'"),
        ("", "non-empty"),
        (".", "repository itself"),
        ("./", "repository itself"),
        ("repodata", "createrepo's own"),
        (".repodata/x", "createrepo's own"),
        (cr.LOCK_NAME, "createrepo's own"),
        ("00000002-world/build.log", "neither a directory nor an RPM"),
        (5, "non-empty strings"),
        (None, "non-empty strings"),
    ],
)
@pytest.mark.parametrize("kind", ["add", "delete"])
def test_hostile_entries_are_refused(repo: Path, kind: str, entry: object, why: str) -> None:
    with pytest.raises(ArgumentError, match=why) as raised:
        cr.validate_entries(repo, [entry], kind=kind, must_exist=kind == "add")
    assert kind in str(raised.value)


@pytest.mark.parametrize("kind", ["add", "delete"])
def test_symlink_escaping_the_repository_is_refused(
    repo: Path, tmp_path: Path, kind: str
) -> None:
    outside = tmp_path / "outside"
    touch(outside / "evil.rpm")
    (repo / "evil").symlink_to(outside)
    (repo / "00000001-hello" / "evil.rpm").symlink_to(outside / "evil.rpm")
    for entry in ("evil", "evil/evil.rpm", "00000001-hello/evil.rpm"):
        with pytest.raises(ArgumentError, match="outside the repository") as raised:
            cr.validate_entries(repo, [entry], kind=kind, must_exist=True)
        assert repr(entry) in str(raised.value)


def test_symlink_inside_the_repository_is_accepted(repo: Path) -> None:
    (repo / "latest").symlink_to(repo / "00000003-other")
    assert cr.validate_entries(repo, ["latest"], kind="add", must_exist=True) == ["latest"]


def test_rpm_symlink_escaping_from_an_added_directory_is_refused(
    repo: Path, tmp_path: Path
) -> None:
    touch(tmp_path / "secret.rpm")
    (repo / "00000003-other" / "leak.rpm").symlink_to(tmp_path / "secret.rpm")
    with pytest.raises(ArgumentError, match="leak.rpm.*outside the repository"):
        cr.plan_run(repo, ["00000003-other"], [], [])


def test_rpm_with_a_newline_in_an_added_directory_is_refused(repo: Path) -> None:
    touch(repo / "00000003-other" / "bad\nname.rpm")
    with pytest.raises(ArgumentError, match="control characters"):
        cr.plan_run(repo, ["00000003-other"], [], [])


def test_entries_are_normalized_and_deduplicated(repo: Path) -> None:
    entries = ["00000001-hello/", "./00000001-hello", "00000002-world//noarch"]
    assert cr.validate_entries(repo, entries, kind="add", must_exist=True) == [
        "00000001-hello",
        "00000002-world/noarch",
    ]


def test_add_must_exist_but_delete_need_not(repo: Path) -> None:
    with pytest.raises(ArgumentError, match="'00000009-gone' does not exist"):
        cr.validate_entries(repo, ["00000009-gone"], kind="add", must_exist=True)
    assert cr.validate_entries(repo, ["00000009-gone"], kind="delete", must_exist=False) == [
        "00000009-gone"
    ]


@pytest.mark.parametrize("entries", ["00000001-hello", {"a": 1}, 3])
def test_entries_must_be_a_list(repo: Path, entries: object) -> None:
    with pytest.raises(ArgumentError, match="must be a list"):
        cr.validate_entries(repo, entries, kind="add", must_exist=True)


def test_no_entries(repo: Path) -> None:
    assert cr.validate_entries(repo, None, kind="add", must_exist=True) == []
    assert cr.validate_entries(repo, [], kind="delete", must_exist=False) == []


@pytest.mark.parametrize(
    ("repo_dir", "why"),
    [
        ("relative/repo", "absolute"),
        ("/nonexistent/func-createrepo-test", "not an existing directory"),
        ("/tmp/a\nb", "control characters"),
        ("", "non-empty"),
        (None, "path string"),
        (42, "path string"),
    ],
)
def test_bad_repo_dir_is_refused(repo_dir: object, why: str) -> None:
    with pytest.raises(ArgumentError, match=why):
        cr.validate_repo_dir(repo_dir)


def test_repo_dir_that_is_a_file_is_refused(repo: Path) -> None:
    with pytest.raises(ArgumentError, match="not an existing directory"):
        cr.validate_repo_dir(str(repo / RPM_A))


def test_repo_dir_is_resolved(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(repo)
    assert cr.validate_repo_dir(str(tmp_path / "link")) == repo


def test_update_validates_before_running_anything(repo: Path) -> None:
    module = cr.Createrepo()
    module.options.createrepo_command = "/nonexistent/createrepo_c"
    with pytest.raises(ArgumentError, match="'..'"):
        module.update(str(repo), add=["../x"])
    with pytest.raises(ArgumentError, match="relative"):
        module.update(str(repo), delete=["/etc"])
    assert not (repo / "repodata").exists()
    assert not (repo / cr.LOCK_NAME).exists()


# --- finding the command ----------------------------------------------------------------


def make_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_command_next_to_python_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = make_executable(tmp_path / "venv" / "bin" / "createrepo_c")
    on_path = make_executable(tmp_path / "path" / "createrepo_c")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert cr.find_command("createrepo_c") == str(beside)


def test_command_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = make_executable(tmp_path / "path" / "createrepo_c")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert cr.find_command("createrepo_c") == str(on_path)


def test_command_as_a_path(tmp_path: Path) -> None:
    script = make_executable(tmp_path / "my-createrepo")
    assert cr.find_command(str(script)) == str(script)
    script.chmod(0o644)
    with pytest.raises(cr.CreaterepoNotFound, match="not an executable file"):
        cr.find_command(str(script))


def test_missing_command_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(cr.CreaterepoNotFound, match="pip install createrepo-c"):
        cr.find_command("createrepo_c")


def test_default_options() -> None:
    options = cr.Createrepo.Config()
    assert options.createrepo_command == "createrepo_c"
    assert options.timeout == 3600


# --- the lock ---------------------------------------------------------------------------


def hold_lock(repo: Path, mode: int = fcntl.LOCK_EX) -> int:
    fd = os.open(repo / cr.LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, mode)
    return fd


def test_lock_waits_reports_and_times_out(repo: Path) -> None:
    fd = hold_lock(repo)
    reports: list[progress.Progress] = []
    context = progress.CallContext("c1", on_progress=reports.append)
    try:
        with progress.bound(context), pytest.raises(cr.RepositoryBusy, match="still locked"):
            with cr.repo_lock(repo, exclusive=True, timeout=0.3):
                pytest.fail("the lock was taken twice")
    finally:
        os.close(fd)
    assert [r.phase for r in reports] == ["waiting for lock"]


def test_lock_wait_ends_on_cancel(repo: Path) -> None:
    fd = hold_lock(repo)
    context = progress.CallContext("c2")
    threading.Timer(0.2, context.cancel).start()
    try:
        with progress.bound(context), pytest.raises(progress.CallCancelled):
            with cr.repo_lock(repo, exclusive=True, timeout=30):
                pytest.fail("the lock was taken twice")
    finally:
        os.close(fd)


def test_shared_locks_share_and_exclude_writers(repo: Path) -> None:
    fd = hold_lock(repo, fcntl.LOCK_SH)
    try:
        with cr.repo_lock(repo, exclusive=False, timeout=0.3):
            pass
        with pytest.raises(cr.RepositoryBusy):
            with cr.repo_lock(repo, exclusive=True, timeout=0.3):
                pass
    finally:
        os.close(fd)


def test_shared_lock_on_a_read_only_repository_is_skipped(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refuse_create(path: object, flags: int, *args: object) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse_create)
    with cr.repo_lock(repo, exclusive=False, timeout=0.1):
        pass
    with pytest.raises(cr.CreaterepoError, match="cannot open the lock file.*Permission denied"):
        with cr.repo_lock(repo, exclusive=True, timeout=0.1):
            pass


# --- the module as the minion sees it ---------------------------------------------------


def test_module_loads_and_registers_its_arguments() -> None:
    module = load_modules(["createrepo"])["createrepo"]
    assert type(module).__name__ == "Createrepo"
    registration = module.get_method_args()
    assert set(registration) == {"update", "check"}
    assert registration["update"]["args"]["delete"]["order"] == 2
    assert {"update", "check"} <= set(module.list_methods())


def test_errors_are_func_exceptions() -> None:
    from func_amqp.errors import FuncException

    for error in (cr.CreaterepoFailed, cr.RepositoryCheckFailed, cr.CreaterepoNotFound):
        assert issubclass(error, FuncException)
