"""The overlord's minion directory: remembered minions survive restarts and damage."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from func_amqp.overlord.directory import MinionDirectory
from func_amqp.protocol.messages import AgentInfo


def agent(name: str, version: str = "1.0", modules: list[str] | None = None, started: float = 100.0) -> AgentInfo:
    return AgentInfo(name=name, version=version, protocol=1, modules=modules or ["test"], heartbeat_interval=30.0, started=started)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "minions.json"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".minions."))


# --- loading --------------------------------------------------------------------------


def test_missing_file_is_empty(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        directory = MinionDirectory.load(path)
    assert directory.path == path
    assert directory.minions == {}
    assert directory.names() == set()
    assert not caplog.records
    assert not path.exists()


def test_round_trip(path: Path) -> None:
    directory = MinionDirectory.load(path)
    assert directory.record([agent("web01", "1.2", ["command", "test"], 10.5), agent("db01")])
    directory.save()
    loaded = MinionDirectory.load(path)
    assert loaded.names() == {"web01", "db01"}
    assert loaded.minions == directory.minions
    assert loaded.minions["web01"] == {"version": "1.2", "modules": ["command", "test"], "started": 10.5}


def test_saved_file_is_plain_json(path: Path) -> None:
    directory = MinionDirectory(path)
    directory.record([agent("b"), agent("a")])
    directory.save()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(data) == ["minions"]
    assert list(data["minions"]) == ["a", "b"]


def test_save_creates_the_state_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "minions.json"
    directory = MinionDirectory(path)
    directory.record([agent("m1")])
    directory.save()
    assert MinionDirectory.load(path).names() == {"m1"}


def test_save_replaces_and_leaves_no_temporary_files(path: Path) -> None:
    first = MinionDirectory(path)
    first.record([agent("m1"), agent("m2")])
    first.save()
    second = MinionDirectory.load(path)
    second.forget(["m1"])
    second.save()
    assert MinionDirectory.load(path).names() == {"m2"}
    assert leftovers(path.parent) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["minions.json"]


def test_empty_directory_round_trips(path: Path) -> None:
    MinionDirectory(path).save()
    assert json.loads(path.read_text()) == {"minions": {}}
    assert MinionDirectory.load(path).minions == {}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"minions": ' * 50_000 + b"{}" + b"}" * 50_000,
    ],
    ids=["empty", "truncated", "text", "binary", "deep-list", "deep-map"],
)
def test_damaged_file_is_ignored_and_logged(path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="func_amqp.overlord.directory"):
        directory = MinionDirectory.load(path)
    assert directory.minions == {}
    assert directory.path == path
    assert any(str(path) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "data",
    [[], [1, 2], "minions", 5, None, {}, {"other": {"m1": {}}}, {"minions": []}, {"minions": "m1"}, {"minions": None}, {"minions": 3}],
)
def test_unexpected_shapes_give_an_empty_directory(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    assert MinionDirectory.load(path).minions == {}


def test_directory_in_place_of_the_file(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        assert MinionDirectory.load(path).minions == {}
    assert caplog.records


def test_invalid_names_are_dropped(path: Path) -> None:
    path.parent.mkdir(parents=True)
    entries = {
        "good": {"version": "1"},
        "also-good.example.org": {},
        "": {},
        "Bad": {},
        "has space": {},
        "-dash": {},
        "x" * 300: {},
        "trailing\n": {},
        "../escape": {},
    }
    path.write_text(json.dumps({"minions": entries}), encoding="utf-8")
    assert MinionDirectory.load(path).names() == {"good", "also-good.example.org"}


def test_entries_that_are_not_maps_become_empty(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"minions": {"m1": "junk", "m2": [1], "m3": {"version": "2"}}}), encoding="utf-8")
    assert MinionDirectory.load(path).minions == {"m1": {}, "m2": {}, "m3": {"version": "2"}}


def test_loaded_entries_are_copies(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"minions": {"m1": {"version": "1"}}}), encoding="utf-8")
    directory = MinionDirectory.load(path)
    directory.minions["m1"]["version"] = "2"
    assert MinionDirectory.load(path).minions["m1"] == {"version": "1"}


# --- recording ------------------------------------------------------------------------


def test_record_reports_only_changes(path: Path) -> None:
    directory = MinionDirectory(path)
    assert directory.record([agent("m1")]) is True
    assert directory.record([agent("m1")]) is False
    assert directory.record([]) is False
    assert directory.record([agent("m1", version="2.0")]) is True
    assert directory.record([agent("m1", version="2.0", modules=["test", "command"])]) is True
    assert directory.record([agent("m1", version="2.0", modules=["test", "command"], started=200.0)]) is True
    assert directory.record([agent("m1", version="2.0", modules=["test", "command"], started=200.0)]) is False
    assert directory.minions == {"m1": {"version": "2.0", "modules": ["test", "command"], "started": 200.0}}


def test_record_ignores_presence_only_fields(path: Path) -> None:
    directory = MinionDirectory(path)
    directory.record([agent("m1")])
    same = AgentInfo("m1", "1.0", 2, ["test"], heartbeat_interval=5.0, started=100.0, stopping=True)
    assert directory.record([same]) is False


def test_record_after_reload_is_not_a_change(path: Path) -> None:
    directory = MinionDirectory(path)
    directory.record([agent("m1", modules=["a", "b"], started=1.25)])
    directory.save()
    assert MinionDirectory.load(path).record([agent("m1", modules=["a", "b"], started=1.25)]) is False


def test_record_with_one_new_among_known(path: Path) -> None:
    directory = MinionDirectory(path)
    directory.record([agent("m1"), agent("m2")])
    assert directory.record([agent("m1"), agent("m2"), agent("m3")]) is True
    assert directory.names() == {"m1", "m2", "m3"}


def test_record_accepts_any_iterable(path: Path) -> None:
    directory = MinionDirectory(path)
    assert directory.record(agent(n) for n in ("m1", "m2")) is True
    assert directory.names() == {"m1", "m2"}


@pytest.mark.parametrize("name", ["", "Web01", "a b", "-x", "x" * 300, "m1\n"])
def test_record_skips_invalid_names(path: Path, name: str) -> None:
    directory = MinionDirectory(path)
    assert directory.record([agent(name)]) is False
    assert directory.minions == {}


def test_recorded_modules_are_a_copy(path: Path) -> None:
    modules = ["test"]
    directory = MinionDirectory(path)
    directory.record([AgentInfo("m1", "1", 1, modules)])
    modules.append("command")
    assert directory.minions["m1"]["modules"] == ["test"]


# --- forgetting -----------------------------------------------------------------------


def test_forget(path: Path) -> None:
    directory = MinionDirectory(path)
    directory.record([agent("m1"), agent("m2"), agent("m3")])
    assert directory.forget(["m3", "nobody", "m1", "m1"]) == ["m3", "m1"]
    assert directory.names() == {"m2"}
    assert directory.forget([]) == []
    directory.save()
    assert MinionDirectory.load(path).names() == {"m2"}


def test_forget_an_entry_loaded_as_empty(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"minions": {"m1": "junk"}}), encoding="utf-8")
    directory = MinionDirectory.load(path)
    assert directory.forget(["m1"]) == ["m1"]
    assert directory.names() == set()


# --- saving where it cannot -----------------------------------------------------------


def test_save_under_a_file_logs_instead_of_raising(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file, not a directory")
    path = blocker / "minions.json"
    directory = MinionDirectory(path)
    directory.record([agent("m1")])
    with caplog.at_level(logging.WARNING, logger="func_amqp.overlord.directory"):
        directory.save()
    assert any("cannot save the minion directory" in r.getMessage() for r in caplog.records)
    assert blocker.read_text() == "a file, not a directory"
    assert directory.names() == {"m1"}


def test_save_over_a_directory_logs_and_cleans_up(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.mkdir(parents=True)
    (path / "keep").write_text("x")
    directory = MinionDirectory(path)
    directory.record([agent("m1")])
    with caplog.at_level(logging.WARNING, logger="func_amqp.overlord.directory"):
        directory.save()
    assert any("cannot save" in r.getMessage() for r in caplog.records)
    assert (path / "keep").read_text() == "x"
    assert leftovers(path.parent) == []


def test_failed_replace_keeps_the_old_file(path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    old = MinionDirectory(path)
    old.record([agent("m1")])
    old.save()

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    new = MinionDirectory.load(path)
    new.record([agent("m2")])
    with caplog.at_level(logging.WARNING, logger="func_amqp.overlord.directory"):
        new.save()
    monkeypatch.undo()
    assert any("No space left" in r.getMessage() for r in caplog.records)
    assert MinionDirectory.load(path).names() == {"m1"}
    assert leftovers(path.parent) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode")
def test_save_into_read_only_directory(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path.parent.mkdir(parents=True)
    path.parent.chmod(0o500)
    try:
        directory = MinionDirectory(path)
        directory.record([agent("m1")])
        with caplog.at_level(logging.WARNING):
            directory.save()
        assert caplog.records
        assert not path.exists()
    finally:
        path.parent.chmod(0o700)
