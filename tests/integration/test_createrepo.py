"""The createrepo module against the real createrepo_c, on tiny noarch RPMs built by
rpmbuild at the start of the session. The module class is called directly."""

from __future__ import annotations

import fcntl
import gzip
import importlib
import os
import shutil
import subprocess
import threading
import time
import types
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from func_amqp.minion import progress
from func_amqp.minion.loader import shipped_modules_dir

PACKAGES = ("one", "two", "three", "four", "five", "six")
VERSION_RELEASE = "1.0-1"
REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"


def _import_module() -> types.ModuleType:
    shipped_modules_dir()  # makes func_amqp.modules importable from a source tree
    return importlib.import_module("func_amqp.modules.createrepo")


cr = _import_module()


# --- test RPMs --------------------------------------------------------------------------


def spec_text(names: tuple[str, ...]) -> str:
    """One noarch package per name, as subpackages of one spec: one rpmbuild run."""
    head = (
        "Name: hello-func-one\nVersion: 1.0\nRelease: 1\nSummary: test package\n"
        "License: MIT\nBuildArch: noarch\n\n%description\nA tiny test package.\n\n"
    )
    subpackages = "".join(
        f"%package -n hello-func-{n}\nSummary: test package {n}\n"
        f"%description -n hello-func-{n}\nA tiny test package.\n\n"
        for n in names[1:]
    )
    install = "%prep\n%build\n%install\n" + "".join(
        f"mkdir -p %{{buildroot}}/usr/share/hello-func-{n}\n"
        f"echo {n} > %{{buildroot}}/usr/share/hello-func-{n}/README\n"
        for n in names
    )
    files = "".join(
        f"\n%files{'' if n == names[0] else f' -n hello-func-{n}'}\n"
        f"/usr/share/hello-func-{n}/README\n"
        for n in names
    )
    return head + subpackages + install + files


def rpm_name(name: str) -> str:
    return f"hello-func-{name}-{VERSION_RELEASE}.noarch.rpm"


@pytest.fixture(scope="session")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{name: path}`` of the test RPMs, built once."""
    rpmbuild = shutil.which("rpmbuild")
    if rpmbuild is None:
        pytest.skip("rpmbuild is not installed (Debian: apt-get install rpm); no test RPMs")
    work = tmp_path_factory.mktemp("rpmbuild")
    spec = work / "hello-func.spec"
    spec.write_text(spec_text(PACKAGES))
    completed = subprocess.run(
        [rpmbuild, "-bb", "--define", f"_topdir {work / 'top'}",
         "--define", f"_rpmdir {work / 'rpms'}", str(spec)],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    built = {name: work / "rpms" / "noarch" / rpm_name(name) for name in PACKAGES}
    assert all(path.is_file() for path in built.values())
    return built


@pytest.fixture(scope="session")
def createrepo_c() -> str:
    try:
        return cr.find_command("createrepo_c")
    except cr.CreaterepoNotFound as exc:
        pytest.skip(f"createrepo_c is not installed: {exc}")


@pytest.fixture
def repo(tmp_path: Path, createrepo_c: str) -> Path:
    path = tmp_path / "fedora-rawhide-x86_64"
    path.mkdir()
    return path


@pytest.fixture
def make_build(repo: Path, rpms: dict[str, Path]) -> Callable[..., str]:
    """Put build results into the repository as the builder would: a numbered
    directory with the RPM and a log. Returns the directory's name."""

    def make(number: int, name: str) -> str:
        build = repo / f"{number:08d}-hello-func-{name}"
        build.mkdir()
        shutil.copy(rpms[name], build)
        (build / "builder-live.log").write_text("built\n")
        return build.name

    return make


def href(build: str, name: str) -> str:
    return f"{build}/{rpm_name(name)}"


def listed_by_xml(repo: Path) -> list[str]:
    """The primary metadata's packages, read without createrepo_c's bindings."""
    repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
    primary = next(d for d in repomd.iter(f"{REPO_NS}data") if d.get("type") == "primary")
    location = primary.find(f"{REPO_NS}location")
    assert location is not None
    with gzip.open(repo / location.get("href", "")) as fh:
        root = ET.parse(fh).getroot()
    return sorted(
        p.find(f"{COMMON_NS}location").get("href")  # type: ignore[union-attr]
        for p in root.iter(f"{COMMON_NS}package")
    )


def module(command: str | None = None, **options: object) -> Any:
    """A fresh module instance, as the minion makes one per call, with options set."""
    instance = cr.Createrepo()
    if command is not None:
        instance.options.createrepo_command = command
    for key, value in options.items():
        setattr(instance.options, key, value)
    return instance


def script(tmp_path: Path, name: str, body: str) -> str:
    """A stand-in for createrepo_c: a shell script named ``name``."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


# --- creating and updating --------------------------------------------------------------


def test_create_add_add_delete(
    repo: Path, make_build: Callable[..., str], tmp_path: Path, createrepo_c: str
) -> None:
    created = module().update(str(repo))
    assert created["package_count"] == 0
    assert (repo / "repodata" / "repomd.xml").is_file()
    assert not any(repo.glob("repodata/*.sqlite*"))
    assert all(p.name.endswith((".gz", ".xml")) for p in (repo / "repodata").iterdir())

    first = make_build(1, "one")
    result = module().update(str(repo), add=[first])
    assert result["packages"] == [href(first, "one")]
    assert result["added"] == [first] and result["deleted"] == []

    second = make_build(2, "two")
    result = module().update(str(repo), add=[second])
    assert result["packages"] == [href(first, "one"), href(second, "two")]
    assert result["package_count"] == 2
    assert listed_by_xml(repo) == result["packages"]

    seen = tmp_path / "seen-during-run"
    spy_body = f'[ -d "{repo / first}" ] && echo present > "{seen}"\nexec "{createrepo_c}" "$@"\n'
    spy = script(tmp_path, "spy", spy_body)
    result = module(spy).update(str(repo), delete=[first])
    assert seen.read_text() == "present\n"  # still on disk while createrepo_c ran
    assert not (repo / first).exists()
    assert (repo / second).is_dir()
    assert result["packages"] == [href(second, "two")]
    assert result["deleted"] == [first]
    assert listed_by_xml(repo) == [href(second, "two")]
    assert f"removed {first}" in (repo / "prune.log").read_text()
    assert not list(repo.glob(cr.PKGLIST_PREFIX + "*"))

    checked = module().check(str(repo))
    assert checked["packages"] == [href(second, "two")]
    assert checked["revision"] == result["revision"]
    assert checked["unlisted"] == []
    assert "added" not in checked and "deleted" not in checked


def test_summary_shape(repo: Path, make_build: Callable[..., str]) -> None:
    build = make_build(1, "one")
    result = module().update(str(repo), add=[build])
    assert set(result) == {
        "repo_dir", "revision", "package_count", "packages", "added", "deleted", "duration"
    }
    assert result["repo_dir"] == str(repo)
    assert isinstance(result["revision"], str) and result["revision"]
    assert isinstance(result["duration"], float)


def test_full_run_lists_every_rpm(repo: Path, make_build: Callable[..., str]) -> None:
    builds = [make_build(n, name) for n, name in enumerate(("one", "two", "three"), 1)]
    result = module().update(str(repo))
    assert result["packages"] == [href(b, n) for b, n in zip(builds, ("one", "two", "three"))]
    assert result["added"] == [] and result["deleted"] == []


def test_delete_of_a_single_rpm_keeps_its_directory(
    repo: Path, make_build: Callable[..., str]
) -> None:
    first, second = make_build(1, "one"), make_build(2, "two")
    module().update(str(repo), add=[first, second])
    result = module().update(str(repo), delete=[href(first, "one")])
    assert result["packages"] == [href(second, "two")]
    assert (repo / first / "builder-live.log").is_file()
    assert not (repo / href(first, "one")).exists()


def test_check_reports_rpms_not_added_yet(repo: Path, make_build: Callable[..., str]) -> None:
    module().update(str(repo), add=[make_build(1, "one")])
    pending = make_build(2, "two")
    assert module().check(str(repo))["unlisted"] == [href(pending, "two")]


def test_comps_is_published(repo: Path, make_build: Callable[..., str]) -> None:
    (repo / "comps.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<comps>\n  <group>\n    <id>hello</id>\n'
        "    <name>Hello</name>\n    <description>Test group</description>\n"
        '    <packagelist>\n      <packagereq type="default">hello-func-one</packagereq>\n'
        "    </packagelist>\n  </group>\n</comps>\n"
    )
    module().update(str(repo), add=[make_build(1, "one")])
    repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
    assert "group" in {d.get("type") for d in repomd.iter(f"{REPO_NS}data")}


# --- locking ----------------------------------------------------------------------------


def test_concurrent_updates_all_land(repo: Path, make_build: Callable[..., str]) -> None:
    module().update(str(repo))
    builds = {make_build(n, name): name for n, name in enumerate(PACKAGES, 1)}
    start = threading.Barrier(len(builds))
    failures: list[Exception] = []

    def add(build: str) -> None:
        start.wait()
        try:
            module().update(str(repo), add=[build])
        except Exception as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=add, args=(b,)) for b in builds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    expected = sorted(href(b, n) for b, n in builds.items())
    assert module().check(str(repo))["packages"] == expected
    assert listed_by_xml(repo) == expected


def test_update_waits_for_the_lock(repo: Path, make_build: Callable[..., str]) -> None:
    build = make_build(1, "one")
    fd = os.open(repo / cr.LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    phases: list[str] = []
    outcome: list[dict[str, Any]] = []
    context = progress.CallContext("call-1", on_progress=lambda p: phases.append(p.phase))

    def run() -> None:
        with progress.bound(context):
            outcome.append(module().update(str(repo), add=[build]))

    thread = threading.Thread(target=run)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while "waiting for lock" not in phases and time.monotonic() < deadline:
            time.sleep(0.05)
        assert phases == ["waiting for lock"]
        assert not (repo / "repodata").exists()
    finally:
        os.close(fd)
    thread.join(timeout=30)
    assert outcome and outcome[0]["packages"] == [href(build, "one")]
    assert phases[:3] == ["waiting for lock", "createrepo", "checking"]


# --- failures ---------------------------------------------------------------------------


def test_failing_createrepo_leaves_everything(
    repo: Path, make_build: Callable[..., str], tmp_path: Path
) -> None:
    first, second = make_build(1, "one"), make_build(2, "two")
    module().update(str(repo), add=[first, second])
    repomd_before = (repo / "repodata" / "repomd.xml").read_bytes()
    failing = script(tmp_path, "failing", 'echo "createrepo_c: disk on fire" >&2\nexit 1\n')
    with pytest.raises(cr.CreaterepoFailed, match=r"(?s)exited with 1.*disk on fire"):
        module(failing).update(str(repo), delete=[first])
    with pytest.raises(cr.CreaterepoFailed, match="exited with 1"):
        module("false").update(str(repo), delete=[first])
    assert (repo / first / rpm_name("one")).is_file()
    assert (repo / "repodata" / "repomd.xml").read_bytes() == repomd_before
    assert not (repo / "prune.log").exists()
    assert not list(repo.glob(cr.PKGLIST_PREFIX + "*"))
    assert module().check(str(repo))["package_count"] == 2


def test_timeout_ends_createrepo(
    repo: Path, make_build: Callable[..., str], tmp_path: Path
) -> None:
    first = make_build(1, "one")
    module().update(str(repo), add=[first])
    slow = script(tmp_path, "slow", "exec sleep 60\n")
    started = time.monotonic()
    with pytest.raises(cr.CreaterepoFailed, match="timed out after 1 s"):
        module(slow, timeout=1).update(str(repo), delete=[first])
    assert time.monotonic() - started < 15
    assert (repo / first).is_dir()


def test_cancel_ends_createrepo(
    repo: Path, make_build: Callable[..., str], tmp_path: Path
) -> None:
    first = make_build(1, "one")
    module().update(str(repo), add=[first])
    slow = script(tmp_path, "slow", "exec sleep 60\n")
    context = progress.CallContext("call-2")
    threading.Timer(0.5, context.cancel).start()
    started = time.monotonic()
    with progress.bound(context), pytest.raises(progress.CallCancelled):
        module(slow).update(str(repo), delete=[first])
    assert time.monotonic() - started < 15
    assert (repo / first).is_dir()


def test_missing_command_is_reported(repo: Path) -> None:
    with pytest.raises(cr.CreaterepoNotFound, match="not an executable file"):
        module("/nonexistent/createrepo_c").update(str(repo))


# --- damaged repositories ---------------------------------------------------------------


def damage(repo: Path, kind: str) -> str:
    """Remove the metadata file of record ``kind``; returns its name."""
    repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
    data = next(d for d in repomd.iter(f"{REPO_NS}data") if d.get("type") == kind)
    location = data.find(f"{REPO_NS}location")
    assert location is not None
    (repo / location.get("href", "")).unlink()
    return location.get("href", "")


@pytest.mark.parametrize("kind", ["primary", "filelists", "other"])
def test_check_of_a_damaged_repository_raises(
    repo: Path, make_build: Callable[..., str], kind: str
) -> None:
    module().update(str(repo), add=[make_build(1, "one")])
    removed = damage(repo, kind)
    with pytest.raises(cr.RepositoryCheckFailed, match=f"{kind} file {removed} is missing"):
        module().check(str(repo))


def test_check_of_corrupt_metadata_raises(repo: Path, make_build: Callable[..., str]) -> None:
    module().update(str(repo), add=[make_build(1, "one")])
    primary = next((repo / "repodata").glob("*-primary.xml.gz"))
    primary.write_bytes(gzip.compress(b"<metadata>"))
    with pytest.raises(cr.RepositoryCheckFailed, match="does not match its checksum"):
        module().check(str(repo))


def test_check_of_a_package_missing_on_disk_raises(
    repo: Path, make_build: Callable[..., str]
) -> None:
    build = make_build(1, "one")
    module().update(str(repo), add=[build])
    (repo / href(build, "one")).unlink()
    with pytest.raises(cr.RepositoryCheckFailed, match="listed but missing on disk"):
        module().check(str(repo))


def test_check_without_metadata_raises(repo: Path) -> None:
    with pytest.raises(cr.RepositoryCheckFailed, match="has no repodata/repomd.xml"):
        module().check(str(repo))


def test_damaged_repository_is_rebuilt_by_a_full_run(
    repo: Path, make_build: Callable[..., str]
) -> None:
    first, second = make_build(1, "one"), make_build(2, "two")
    module().update(str(repo), add=[first])
    damage(repo, "primary")
    with pytest.raises(cr.RepositoryCheckFailed, match="without add/delete to rebuild"):
        module().update(str(repo), add=[second])
    result = module().update(str(repo))
    assert result["packages"] == [href(first, "one"), href(second, "two")]
    assert module().check(str(repo))["package_count"] == 2
