"""The ``repopublish`` module: index pages and Copr-style .repo files for a results tree."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.rpm_support import dnf_available, serve_directory

from func_amqp.errors import ArgumentError
from func_amqp.minion import progress
from func_amqp.minion.loader import load_modules

BASE = "https://copr.example.org/results"
HOST = "copr.example.org"
F40 = "fedora-40-x86_64"
EPEL = "epel-9-x86_64"
REPO_KEYS_NO_GPG = [
    "name", "baseurl", "type", "skip_if_unavailable", "gpgcheck",
    "repo_gpgcheck", "enabled", "enabled_metadata",
]


def _loaded() -> tuple[Any, ModuleType]:
    """The module as the minion loads it, and its Python module (for helpers)."""
    instance = load_modules(["repopublish"])["repopublish"]
    return instance, sys.modules[type(instance).__module__]


MODULE, rp = _loaded()


def publish(root: Path, base_url: str = BASE) -> dict[str, Any]:
    return MODULE.publish(str(root), base_url)


# --- building fake trees ------------------------------------------------------------------


def add_chroot(root: Path, owner: str, project: str, chroot: str) -> Path:
    path = root / owner / project / chroot
    (path / "repodata").mkdir(parents=True, exist_ok=True)
    (path / "repodata" / "repomd.xml").write_text("<repomd/>\n", encoding="utf-8")
    return path


def add_build(
    chroot: Path,
    build_id: int,
    pkgname: str,
    packages: Any,
    success: bool = True,
    raw: str | None = None,
) -> Path:
    build = chroot / f"{build_id:08d}-{pkgname}"
    build.mkdir(parents=True)
    text = raw if raw is not None else json.dumps({"packages": packages})
    (build / "results.json").write_text(text, encoding="utf-8")
    if success:
        (build / "success").write_text("done", encoding="utf-8")
    return build


def pkg(name: Any, version: Any = "1.0", release: Any = "1", arch: Any = "noarch",
        epoch: Any = None) -> dict[str, Any]:
    return {"name": name, "epoch": epoch, "version": version, "release": release, "arch": arch}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """alice/hello (two chroots, unsigned) and @team/tools (one chroot, signed)."""
    root = tmp_path / "results"
    f40 = add_chroot(root, "alice", "hello", F40)
    add_build(f40, 12, "hello", [pkg("hello", arch="src"), pkg("hello")])
    add_build(f40, 15, "hello", [pkg("hello", "1.1", "2", "x86_64", epoch=3)])
    add_build(f40, 13, "broken", [pkg("broken")], success=False)
    epel = add_chroot(root, "alice", "hello", EPEL)
    add_build(epel, 12, "hello", [pkg("hello", arch="src"), pkg("hello")])
    (root / "alice" / "hello" / "srpm-builds" / "00000012").mkdir(parents=True)
    add_chroot(root, "@team", "tools", F40)
    (root / "@team" / "tools" / "pubkey.gpg").write_text("KEY", encoding="utf-8")
    return root


# --- reading pages back -------------------------------------------------------------------


class Page(HTMLParser):
    """Title, links and table rows of a page: the content, without the styling."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.title = ""
        self.h1 = ""
        self.links: list[tuple[str, str]] = []
        self.rows: list[list[str]] = []
        self._tag: list[str] = []
        self._href: str | None = None
        self._text = ""
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th", "a", "title", "h1"):
            self._text = ""
        if tag == "a":
            self._href = dict(attrs)["href"]

    def handle_endtag(self, tag: str) -> None:
        self._tag.pop()
        if tag in ("td", "th"):
            self.rows[-1].append(self._text)
        elif tag == "a":
            self.links.append((self._href or "", self._text))
        elif tag == "title":
            self.title = self._text
        elif tag == "h1":
            self.h1 = self._text

    def handle_data(self, data: str) -> None:
        self._text += data


def page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>\n")
    assert '<meta charset="utf-8">' in text
    assert "<script" not in text.lower() and "://" not in text and " src=" not in text
    return Page(text)


def repo_section(path: Path) -> tuple[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text(encoding="utf-8"))
    (section,) = parser.sections()
    return section, dict(parser[section])


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- a normal tree ------------------------------------------------------------------------


def test_result_shape(tree: Path) -> None:
    result = publish(tree, BASE + "/")
    assert result == {
        "results_root": str(tree),
        "base_url": BASE,
        "owners": 2,
        "projects": 2,
        "repo_files": [
            f"@team/tools/@team-tools-{F40}.repo",
            f"alice/hello/alice-hello-{EPEL}.repo",
            f"alice/hello/alice-hello-{F40}.repo",
        ],
        "index_pages": [
            "@team/index.html",
            "@team/tools/index.html",
            "alice/hello/index.html",
            "alice/index.html",
            "index.html",
        ],
        "skipped": [],
    }


def test_repo_file_without_key_is_exact(tree: Path) -> None:
    publish(tree)
    path = tree / "alice" / "hello" / f"alice-hello-{F40}.repo"
    assert path.read_text(encoding="utf-8") == (
        f"[copr:{HOST}:alice:hello]\n"
        "name=Copr repo for hello owned by alice\n"
        f"baseurl={BASE}/alice/hello/{F40}/\n"
        "type=rpm-md\n"
        "skip_if_unavailable=True\n"
        "gpgcheck=0\n"
        "repo_gpgcheck=0\n"
        "enabled=1\n"
        "enabled_metadata=1\n"
    )
    section, values = repo_section(path)
    assert section == f"copr:{HOST}:alice:hello"
    assert list(values) == REPO_KEYS_NO_GPG
    assert values == {
        "name": "Copr repo for hello owned by alice",
        "baseurl": f"{BASE}/alice/hello/{F40}/",
        "type": "rpm-md",
        "skip_if_unavailable": "True",
        "gpgcheck": "0",
        "repo_gpgcheck": "0",
        "enabled": "1",
        "enabled_metadata": "1",
    }


def test_group_owner_with_key_gets_gpgcheck(tree: Path) -> None:
    publish(tree)
    section, values = repo_section(tree / "@team" / "tools" / f"@team-tools-{F40}.repo")
    assert section == f"copr:{HOST}:group_team:tools"
    assert values == {
        "name": "Copr repo for tools owned by @team",
        "baseurl": f"{BASE}/@team/tools/{F40}/",
        "type": "rpm-md",
        "skip_if_unavailable": "True",
        "gpgcheck": "1",
        "gpgkey": f"{BASE}/@team/tools/pubkey.gpg",
        "repo_gpgcheck": "0",
        "enabled": "1",
        "enabled_metadata": "1",
    }


def test_gpgcheck_follows_the_key(tree: Path) -> None:
    repo = tree / "alice" / "hello" / f"alice-hello-{F40}.repo"
    publish(tree)
    assert repo_section(repo)[1]["gpgcheck"] == "0"
    (tree / "alice" / "hello" / "pubkey.gpg").write_text("KEY", encoding="utf-8")
    publish(tree)
    values = repo_section(repo)[1]
    assert (values["gpgcheck"], values["gpgkey"]) == ("1", f"{BASE}/alice/hello/pubkey.gpg")
    assert "Packages are signed" in (tree / "alice" / "hello" / "index.html").read_text()


def test_hostname_drops_port_and_baseurl_keeps_it(tree: Path) -> None:
    publish(tree, "http://Builder.Example.org:8080/")
    section, values = repo_section(tree / "alice" / "hello" / f"alice-hello-{F40}.repo")
    assert section == "copr:builder.example.org:alice:hello"
    assert values["baseurl"] == f"http://Builder.Example.org:8080/alice/hello/{F40}/"


def test_root_and_owner_pages(tree: Path) -> None:
    publish(tree)
    top = page(tree / "index.html")
    assert (top.title, top.h1) == ("Repositories", "Repositories")
    assert top.rows == [["Owner", "Projects"], ["@team", "1"], ["alice", "1"]]
    assert top.links == [("@team/index.html", "@team"), ("alice/index.html", "alice")]
    owner = page(tree / "alice" / "index.html")
    assert owner.h1 == "alice"
    assert owner.rows == [["Project", "Chroots"], ["hello", f"{EPEL}, {F40}"]]
    assert owner.links == [("../index.html", "All owners"), ("hello/index.html", "hello")]


def test_project_page_lists_chroots_and_successful_builds(tree: Path) -> None:
    publish(tree)
    project = page(tree / "alice" / "hello" / "index.html")
    assert project.h1 == "alice/hello"
    assert project.rows == [
        ["Chroot", "Repo file", "Metadata", "Packages"],
        [EPEL, f"alice-hello-{EPEL}.repo", "repodata", "2"],
        [F40, f"alice-hello-{F40}.repo", "repodata", "3"],
        ["Name", "Version", "Arch", "Build"],
        ["hello", "1.0-1", "noarch", "12"],
        ["hello", "1.0-1", "src", "12"],
        ["Name", "Version", "Arch", "Build"],
        ["hello", "1.0-1", "noarch", "12"],
        ["hello", "1.0-1", "src", "12"],
        ["hello", "3:1.1-2", "x86_64", "15"],
    ]
    assert project.links == [
        ("../../index.html", "All owners"),
        ("../index.html", "alice"),
        (f"#{EPEL}", EPEL),
        (f"alice-hello-{EPEL}.repo", f"alice-hello-{EPEL}.repo"),
        (f"{EPEL}/repodata/", "repodata"),
        (f"#{F40}", F40),
        (f"alice-hello-{F40}.repo", f"alice-hello-{F40}.repo"),
        (f"{F40}/repodata/", "repodata"),
        (f"{EPEL}/00000012-hello/", "12"),
        (f"{EPEL}/00000012-hello/", "12"),
        (f"{F40}/00000012-hello/", "12"),
        (f"{F40}/00000012-hello/", "12"),
        (f"{F40}/00000015-hello/", "15"),
    ]
    text = (tree / "alice" / "hello" / "index.html").read_text()
    assert "broken" not in text and "gpgcheck=0" in text


def test_empty_tree_gets_a_root_page(tmp_path: Path) -> None:
    (tmp_path / "alice" / "hello" / F40).mkdir(parents=True)  # no repodata: not a repo
    result = publish(tmp_path)
    assert (result["owners"], result["projects"], result["repo_files"]) == (0, 0, [])
    assert result["index_pages"] == ["index.html"]
    assert "No repositories yet." in (tmp_path / "index.html").read_text()
    assert not (tmp_path / "alice" / "index.html").exists()


def test_project_without_builds(tmp_path: Path) -> None:
    add_chroot(tmp_path, "bob", "empty", F40)
    publish(tmp_path)
    assert "No successful builds." in (tmp_path / "bob" / "empty" / "index.html").read_text()


# --- hostile names and content ------------------------------------------------------------

HOSTILE = ["..x", "<script>", 'a"b', "a\nb", "a'b", "a b", "-dash", "q" * 101]
WHERE = {"owner": "", "project": "alice/", "chroot": "alice/hello/"}


@pytest.mark.parametrize("level", ["owner", "project", "chroot"])
def test_hostile_names_are_skipped_and_never_rendered(tmp_path: Path, level: str) -> None:
    add_chroot(tmp_path, "alice", "hello", F40)
    for name in HOSTILE:
        parts = {"owner": (name, "p", F40), "project": ("alice", name, F40),
                 "chroot": ("alice", "hello", name)}[level]
        add_chroot(tmp_path, *parts)
    result = publish(tmp_path)
    assert sorted(result["skipped"]) == sorted(
        f"{level} {WHERE[level]}{name!r}: invalid name" for name in HOSTILE
    )
    assert (result["owners"], result["projects"]) == (1, 1)
    assert result["repo_files"] == [f"alice/hello/alice-hello-{F40}.repo"]
    written = [tmp_path / p for p in result["repo_files"] + result["index_pages"]]
    for path in written:
        text = path.read_text(encoding="utf-8")
        for name in HOSTILE:
            assert name not in text
        assert "script" not in text
    pages = {p.relative_to(tmp_path) for p in tmp_path.rglob("index.html")}
    assert pages == {Path(p) for p in result["index_pages"]}


def test_names_at_the_limits(tmp_path: Path) -> None:
    long = "p" * 100
    add_chroot(tmp_path, "@g.r_p-1", long, "c+1.x_y-z")
    result = publish(tmp_path)
    assert result["skipped"] == []
    assert result["repo_files"] == [f"@g.r_p-1/{long}/@g.r_p-1-{long}-c+1.x_y-z.repo"]


def test_reserved_folder_names_are_skipped(tmp_path: Path) -> None:
    add_chroot(tmp_path, "alice", "index.html", F40)
    add_chroot(tmp_path, "alice", "hello", "x.repo")
    add_chroot(tmp_path, "alice", "hello", F40)
    add_chroot(tmp_path, "alice", "hello", "c1")
    (tmp_path / "alice" / "hello" / "alice-hello-c1.repo").mkdir()
    result = publish(tmp_path)
    assert result["skipped"] == [
        "project alice/'index.html': reserved name",
        "chroot alice/hello/'alice-hello-c1.repo': reserved name",
        "chroot alice/hello/'x.repo': reserved name",
        "alice/hello/alice-hello-c1.repo: not written, a folder is in the way",
        "alice/index.html: not written, a folder is in the way",
    ]
    assert result["repo_files"] == [f"alice/hello/alice-hello-{F40}.repo"]
    assert result["index_pages"] == ["alice/hello/index.html", "index.html"]


def test_hostile_results_json_is_escaped(tmp_path: Path) -> None:
    chroot = add_chroot(tmp_path, "alice", "hello", F40)
    add_build(chroot, 1, "evil", [
        pkg("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "1&2", "noarch"),
        pkg("odd", version=["1"], release={"r": 1}, arch=True, epoch=[0]),
        pkg(42, version=7, release=1, arch="x86_64", epoch=2),
        pkg(None),
        "not a package",
    ])
    result = publish(tmp_path)
    assert result["skipped"] == [
        f"alice/hello/{F40}/00000001-evil/results.json: package 3 has no usable name",
        f"alice/hello/{F40}/00000001-evil/results.json: package 4 has no usable name",
    ]
    path = tmp_path / "alice" / "hello" / "index.html"
    text = path.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;-1&amp;2" in text
    assert "<script" not in text and "<img" not in text
    rows = Page(text).rows
    assert rows[-3:] == [
        ["42", "2:7-1", "x86_64", "1"],
        ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>-1&2', "noarch", "1"],
        ["odd", "", "", "1"],
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "unreadable (JSONDecodeError"),
        ("[" * 100000 + "]" * 100000, "unreadable (RecursionError"),
        (json.dumps({"packages": {"name": "x"}}), "no 'packages' list"),
        (json.dumps(["x"]), "no 'packages' list"),
        (" " * (rp.MAX_RESULTS_JSON + 1), "unreadable (ValueError: larger than"),
    ],
)
def test_bad_results_json_is_skipped(tmp_path: Path, raw: str, reason: str) -> None:
    chroot = add_chroot(tmp_path, "alice", "hello", F40)
    add_build(chroot, 1, "bad", None, raw=raw)
    add_build(chroot, 2, "good", [pkg("good")])
    result = publish(tmp_path)
    (skipped,) = result["skipped"]
    assert skipped.startswith(f"alice/hello/{F40}/00000001-bad/results.json: {reason}")
    rows = page(tmp_path / "alice" / "hello" / "index.html").rows
    assert rows[-1] == ["good", "1.0-1", "noarch", "2"]


def test_build_folders(tmp_path: Path) -> None:
    chroot = add_chroot(tmp_path, "alice", "hello", F40)
    add_build(chroot, 3, "ok", [pkg("ok")])
    (chroot / "00000004-<b>").mkdir()
    (chroot / "devel" / "repodata").mkdir(parents=True)
    (chroot / "00000005-missing").mkdir()
    (chroot / "00000005-missing" / "success").write_text("done")
    result = publish(tmp_path)
    assert result["skipped"] == [
        f"build alice/hello/{F40}/'00000004-<b>': invalid name",
        f"alice/hello/{F40}/00000005-missing/results.json: "
        "missing or not a file, although the build succeeded",
    ]
    assert page(tmp_path / "alice" / "hello" / "index.html").rows[-1] == [
        "ok", "1.0-1", "noarch", "3"
    ]


# --- symbolic links -----------------------------------------------------------------------


def test_links_out_of_the_tree_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "results"
    outside = tmp_path / "outside"
    add_chroot(outside, "eve", "stolen", F40)
    secret = outside / "secret.json"
    secret.write_text(json.dumps({"packages": [pkg("secret")]}))
    (outside / "key").write_text("KEY")
    chroot = add_chroot(root, "alice", "hello", F40)
    build = add_build(chroot, 1, "hello", [pkg("hello")])
    (build / "results.json").unlink()
    (build / "results.json").symlink_to(secret)
    (root / "alice" / "hello" / "pubkey.gpg").symlink_to(outside / "key")
    (root / "eve").symlink_to(outside / "eve")
    (root / "alice" / "hello" / "fedora-39-x86_64").symlink_to(outside / "eve" / "stolen" / F40)
    result = publish(root)
    assert result["skipped"] == [
        "owner eve: is a symbolic link (pages are written there)",
        "alice/hello/pubkey.gpg: symbolic link out of results_root",
        "chroot alice/hello/fedora-39-x86_64: symbolic link out of results_root",
        f"alice/hello/{F40}/00000001-hello/results.json: symbolic link out of results_root",
    ]
    assert result["repo_files"] == [f"alice/hello/alice-hello-{F40}.repo"]
    assert repo_section(root / "alice" / "hello" / f"alice-hello-{F40}.repo")[1]["gpgcheck"] == "0"
    assert "secret" not in (root / "alice" / "hello" / "index.html").read_text()
    assert sorted(p.name for p in outside.rglob("*") if p.is_file()) == [
        "key", "repomd.xml", "secret.json"
    ]


def test_links_inside_the_tree(tmp_path: Path) -> None:
    add_chroot(tmp_path, "alice", "hello", F40)
    (tmp_path / "alice" / "hello" / "f40").symlink_to(F40)
    (tmp_path / "alice" / "alias").symlink_to("hello")
    result = publish(tmp_path)
    assert result["skipped"] == [
        "project alice/alias: is a symbolic link (pages are written there)"
    ]
    assert result["repo_files"] == [
        "alice/hello/alice-hello-f40.repo", f"alice/hello/alice-hello-{F40}.repo"
    ]


def test_a_link_where_a_page_goes_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.html"
    target.write_text("keep me")
    root = tmp_path / "results"
    add_chroot(root, "alice", "hello", F40)
    (root / "alice" / "index.html").symlink_to(target)
    os.mkfifo(root / "index.html")
    publish(root)
    assert target.read_text() == "keep me"
    for path in (root / "alice" / "index.html", root / "index.html"):
        assert path.is_file() and not path.is_symlink()


def test_results_root_given_through_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    add_chroot(real, "alice", "hello", F40)
    (tmp_path / "link").symlink_to(real)
    result = publish(tmp_path / "link")
    assert result["results_root"] == str(real)
    assert (real / "alice" / "hello" / "index.html").is_file()


# --- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "", "ftp://host/x", "http://", "host/x", "//host/x", "javascript:alert(1)",
        "http://host/a b", 'http://host/"x', "http://host/'x", "http://host/\nx",
        "http://host\n", "http://host/\x00", "http://host/\x7f", " http://host",
        "http://user@host/", "http://host/?q=1", "http://host/#f", "http://host:99999/",
        "http://host:/x", "http://ho_st/", "http://host/$releasever", "http://host/<x>",
        "http://host/%zz", "http://-host/", "http://host/" + "a" * 2048, 42, None,
    ],
)
def test_bad_base_url_is_refused(tree: Path, base_url: Any) -> None:
    with pytest.raises(ArgumentError, match="base_url"):
        MODULE.publish(str(tree), base_url)
    assert not (tree / "index.html").exists()


@pytest.mark.parametrize(
    ("base_url", "normalised"),
    [
        ("http://localhost", "http://localhost"),
        ("HTTPS://h.example.org:8443/a/b//", "https://h.example.org:8443/a/b"),
        ("http://10.0.0.1/~copr/res%20ults/", "http://10.0.0.1/~copr/res%20ults"),
        ("http://[::1]:8080/r/", "http://[::1]:8080/r"),
    ],
)
def test_good_base_url_is_normalised(tree: Path, base_url: str, normalised: str) -> None:
    assert publish(tree, base_url)["base_url"] == normalised


def test_repo_file_is_not_html_escaped(tree: Path) -> None:
    publish(tree, "http://h/a&b=c")
    values = repo_section(tree / "alice" / "hello" / f"alice-hello-{F40}.repo")[1]
    assert values["baseurl"] == f"http://h/a&b=c/alice/hello/{F40}/"


def test_bad_results_root_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative").mkdir()
    for bad in ("relative", str(tmp_path / "missing"), str(afile), "", "/tmp/\0x", 1, None):
        with pytest.raises(ArgumentError, match="results_root"):
            MODULE.publish(bad, BASE)


# --- writing ------------------------------------------------------------------------------


def test_files_are_0644_and_no_temp_files_remain(tree: Path) -> None:
    old = os.umask(0o077)
    try:
        result = publish(tree)
    finally:
        os.umask(old)
    for relative in result["repo_files"] + result["index_pages"]:
        assert (tree / relative).stat().st_mode & 0o777 == 0o644
    assert [p for p in tree.rglob(".*")] == []


def test_failed_write_leaves_the_old_file_and_no_temp(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(tree)
    index = tree / "index.html"
    index.write_text("old")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rp.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        publish(tree)
    assert index.read_text() == "old"
    assert [p for p in tree.rglob(".*")] == []


def test_rerunning_is_idempotent(tree: Path) -> None:
    first = publish(tree)
    files = all_files(tree)
    stats = {p: (tree / p).stat() for p in first["repo_files"] + first["index_pages"]}
    assert publish(tree) == first
    assert all_files(tree) == files
    for relative, before in stats.items():
        after = (tree / relative).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_rerunning_repairs_changed_files(tree: Path) -> None:
    publish(tree)
    files = all_files(tree)
    (tree / "index.html").write_text("tampered")
    (tree / "alice" / "index.html").chmod(0o600)
    publish(tree)
    assert all_files(tree) == files
    assert (tree / "alice" / "index.html").stat().st_mode & 0o777 == 0o644


# --- module plumbing ----------------------------------------------------------------------


def test_progress_is_reported_per_project(tree: Path) -> None:
    reports: list[progress.Progress] = []
    with progress.bound(progress.CallContext("c1", on_progress=reports.append)):
        publish(tree)
    assert [(r.phase, r.current, r.total, r.message) for r in reports[1:]] == [
        ("publish", 1, 2, "@team/tools"),
        ("publish", 2, 2, "alice/hello"),
    ]
    assert reports[0].phase == "scan"


def test_cancel_stops_before_writing(tree: Path) -> None:
    context = progress.CallContext("c1")
    context.cancel()
    with progress.bound(context), pytest.raises(progress.CallCancelled):
        publish(tree)
    assert not (tree / "index.html").exists()


def test_registration_and_templates() -> None:
    args = MODULE.get_method_args()
    assert list(args["publish"]["args"]) == ["results_root", "base_url"]
    assert args["publish"]["args"]["base_url"]["order"] == 1
    names = sorted(p.name for p in rp.TEMPLATE_DIR.iterdir())
    assert names == [
        "layout.html.j2", "owner.html.j2", "project.html.j2", "repo.j2", "root.html.j2"
    ]
    env = rp.environment()
    assert env.get_template("root.html.j2").render(owners=[]).count("<") > 0
    assert env.autoescape("project.html.j2") and env.autoescape("new.txt")
    assert not env.autoescape("repo.j2")


# --- end to end with dnf (skipped unless dnf, rpmbuild and createrepo_c exist) -----------

SPEC = """\
Name: hello-copr
Version: 1.0
Release: 1
Summary: A package for the repopublish test
License: MIT
BuildArch: noarch

%description
A package for the repopublish test.

%prep
%build
%install
mkdir -p %{buildroot}%{_datadir}/hello-copr
echo hello > %{buildroot}%{_datadir}/hello-copr/hello.txt

%files
%{_datadir}/hello-copr/hello.txt
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A results root served over HTTP on localhost, and its URL."""
    root = tmp_path / "results"
    root.mkdir()
    with serve_directory(root) as url:
        yield root, url


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("dnf", "rpmbuild", "createrepo_c")),
    reason="needs dnf, rpmbuild and createrepo_c",
)
def test_dnf_reads_a_published_repo(tmp_path: Path, served: tuple[Path, str]) -> None:
    root, url = served
    spec = tmp_path / "hello-copr.spec"
    spec.write_text(SPEC)
    top = tmp_path / "rpmbuild"
    run("rpmbuild", "-bb", "--define", f"_topdir {top}", str(spec))
    chroot = root / "alice" / "hello" / "debian-12-noarch"
    build = add_build(chroot, 1, "hello-copr", [pkg("hello-copr")])
    shutil.copy(top / "RPMS" / "noarch" / "hello-copr-1.0-1.noarch.rpm", build)
    run("createrepo_c", "--no-database", "--general-compress-type=gz", str(chroot))
    result = MODULE.publish(str(root), url)
    found = dnf_available(root / result["repo_files"][0], tmp_path, "hello-copr")
    assert "hello-copr-1.0-1.noarch copr:127.0.0.1:alice:hello" in found
