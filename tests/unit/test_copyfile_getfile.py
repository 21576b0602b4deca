"""File transfer: the ``copyfile`` and ``getfile`` modules called directly, and the
overlord's ``send``/``get`` driven against in-process minions."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from func_amqp import utils
from func_amqp.cli.transfer import add_transfer_commands
from func_amqp.config import MinionConfig, Paths
from func_amqp.minion.loader import shipped_modules_dir
from func_amqp.minion.modules import func_module
from func_amqp.overlord.local import LocalModules, TransferError, check_chunk_size, copyfile as local_copyfile
from func_amqp.overlord.local import getfile as local_getfile

shipped_modules_dir()  # makes func_amqp.modules importable from a source checkout
copyfile_mod = importlib.import_module("func_amqp.modules.copyfile")
getfile_mod = importlib.import_module("func_amqp.modules.getfile")


@pytest.fixture(autouse=True)
def minion_conf(tmp_path: Path) -> Iterator[Path]:
    conf = tmp_path / "conf"
    conf.mkdir()
    func_module.configure(MinionConfig(), Paths(config_dir=conf, state_dir=conf))
    yield conf
    func_module.configure()


@pytest.fixture
def cf() -> Any:
    return copyfile_mod.CopyFile()


@pytest.fixture
def gf() -> Any:
    return getfile_mod.GetFile()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def part_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".part" in p.name]


# --- copyfile: chunked writes ---------------------------------------------------------------


def test_chunked_write_then_commit_installs_the_file(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    data = os.urandom(150_000)
    assert cf.open(str(target), 0o640) == str(target)
    for start in range(0, len(data), 60000):
        assert cf.append(str(target), data[start : start + 60000]) == 1
    assert target.read_bytes() == b"old contents"  # nothing replaced before commit
    assert cf.commit(str(target), sha1(data), len(data)) == 1
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert part_files(tmp_path) == []


def test_open_without_mode_keeps_the_targets_mode(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_bytes(b"#!/bin/sh\n")
    target.chmod(0o750)
    cf.open(str(target))
    cf.append(str(target), b"echo hi\n")
    cf.commit(str(target), sha1(b"echo hi\n"), 8)
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


def test_open_accepts_an_octal_string_mode(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "f"
    cf.open(str(target), "0600")
    cf.commit(str(target), sha1(b""), 0)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_bytes() == b""


def test_checksum_mismatch_is_refused_and_the_target_untouched(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"keep me")
    cf.open(str(target))
    cf.append(str(target), b"new data")
    with pytest.raises(copyfile_mod.TransferError, match="checksum mismatch"):
        cf.commit(str(target), sha1(b"other data"), 8)
    assert target.read_bytes() == b"keep me"
    assert part_files(tmp_path) == []


def test_size_mismatch_is_refused(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "out"
    cf.open(str(target))
    cf.append(str(target), b"abc")
    with pytest.raises(copyfile_mod.TransferError, match="size mismatch"):
        cf.commit(str(target), sha1(b"abc"), 4)
    assert not target.exists()


def test_commit_or_append_without_open_fails(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "never-opened"
    assert cf.append(str(target), b"x") == -1
    with pytest.raises(copyfile_mod.TransferError, match="call open first"):
        cf.commit(str(target), sha1(b"x"), 1)
    assert not target.exists()


def test_append_refuses_to_grow_past_max_file_bytes(cf: Any, tmp_path: Path) -> None:
    cf.options.max_file_bytes = 10
    target = tmp_path / "big"
    cf.open(str(target))
    assert cf.append(str(target), b"x" * 8) == 1
    assert cf.append(str(target), b"x" * 3) == -1
    assert cf.append(str(target), b"x" * 2) == 1  # exactly the limit is fine
    assert cf.commit(str(target), sha1(b"x" * 10), 10) == 1


def test_max_file_bytes_comes_from_the_module_options_file(minion_conf: Path, tmp_path: Path) -> None:
    (minion_conf / "modules").mkdir()
    (minion_conf / "modules" / "CopyFile.conf").write_text("[main]\nmax_file_bytes = 4\n")
    module = copyfile_mod.CopyFile()
    assert module.copyfile(str(tmp_path / "f"), b"12345") == -1
    assert module.copyfile(str(tmp_path / "f"), b"1234") == 1


@pytest.mark.parametrize(
    "path",
    ["relative/file", "file", "", "/tmp/../etc/passwd", "/no/such/directory/file", "/tmp/dir/", 42, None],
)
def test_bad_paths_are_refused(cf: Any, path: Any) -> None:
    assert cf.open(path) == -1
    assert cf.append(path, b"x") == -1
    assert cf.copyfile(path, b"x") == -1
    with pytest.raises(copyfile_mod.TransferError):
        cf.commit(path, sha1(b"x"), 1)


def test_a_directory_is_not_a_target(cf: Any, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert cf.open(str(tmp_path / "sub")) == -1
    assert cf.copyfile(str(tmp_path / "sub"), b"x") == -1


def test_a_symlink_planted_at_the_part_name_is_not_followed(cf: Any, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "out"
    copyfile_mod.part_path(target).symlink_to(victim)
    cf.open(str(target))
    cf.append(str(target), b"payload")
    cf.commit(str(target), sha1(b"payload"), 7)
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"payload"


def test_a_symlink_at_the_target_is_replaced_not_written_through(cf: Any, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "link"
    target.symlink_to(victim)
    assert cf.copyfile(str(target), b"new", 0o644, -1, -1) == 1
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and target.read_bytes() == b"new"


def test_abort_drops_the_part_file(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "out"
    cf.open(str(target))
    assert cf.abort(str(target)) == 1
    assert cf.abort(str(target)) == 0
    assert part_files(tmp_path) == []


# --- copyfile: one-call copies ----------------------------------------------------------------


def test_copyfile_copies_backs_up_and_reports_unchanged(cf: Any, tmp_path: Path) -> None:
    target = tmp_path / "app.ini"
    assert cf.copyfile(str(target), b"v1", 0o600, -1, -1) == 1
    assert target.read_bytes() == b"v1" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert cf.copyfile(str(target), b"v1", 0o600, -1, -1) == 0
    assert cf.copyfile(str(target), b"v2", 0o600, -1, -1) == 1
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("app.ini.") and p.name.endswith("~")]
    assert [b.read_bytes() for b in backups] == [b"v1"]
    assert cf.copyfile(str(target), b"v2", 0o600, -1, -1, True) == 1  # force rewrites


def test_copyfile_respects_max_file_bytes(cf: Any, tmp_path: Path) -> None:
    cf.options.max_file_bytes = 3
    assert cf.copyfile(str(tmp_path / "f"), b"1234", 0o644, -1, -1) == -1
    assert not (tmp_path / "f").exists()


def test_copyfile_owner_change_refused_leaves_the_old_file(cf: Any, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may give files away")
    target = tmp_path / "f"
    target.write_bytes(b"old")
    assert cf.copyfile(str(target), b"new", 0o644, 0, 0) == -1
    assert target.read_bytes() == b"old"
    assert part_files(tmp_path) == []


def test_checksum_of_a_file_or_of_a_string(cf: Any, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"contents")
    assert cf.checksum(str(f)) == sha1(b"contents")
    assert cf.checksum("not a path") == sha1(b"not a path")


# --- getfile ---------------------------------------------------------------------------------


def test_getfile_chunks_and_sha1(gf: Any, tmp_path: Path) -> None:
    data = os.urandom(130_000)
    f = tmp_path / "src"
    f.write_bytes(data)
    assert gf.chunkslen(str(f)) == 3
    chunks = [gf.getchunk(n, str(f)) for n in range(3)]
    assert b"".join(c[1] for c in chunks) == data
    assert all(c[0] == sha1(c[1]) for c in chunks)
    assert [len(c[1]) for c in chunks] == [60000, 60000, 10000]
    assert gf.getchunk(3, str(f)) == [sha1(b""), b""]  # past the end: empty, as in func
    assert gf.chunkslen(str(f), 1 << 20) == 1
    assert gf.getchunk("0", str(f), 1 << 20)[1] == data
    assert gf.stat(str(f)) == {"size": len(data), "sha1": sha1(data), "mode": stat.S_IMODE(f.stat().st_mode)}


def test_getfile_empty_file_has_no_chunks(gf: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert gf.chunkslen(str(tmp_path / "empty")) == 0


@pytest.mark.parametrize("path", ["/no/such/file", "relative", "/tmp/../etc/hostname", ""])
def test_getfile_missing_or_bad_paths(gf: Any, path: str) -> None:
    assert gf.chunkslen(path) == -1
    assert gf.getchunk(0, path) == -1
    with pytest.raises(getfile_mod.TransferError):
        gf.stat(path)


def test_getfile_refuses_directories_bad_chunks_and_big_files(gf: Any, tmp_path: Path) -> None:
    assert gf.chunkslen(str(tmp_path)) == -1
    f = tmp_path / "f"
    f.write_bytes(b"0123456789")
    assert gf.getchunk(-1, str(f)) == -1
    assert gf.getchunk(0, str(f), 0) == -1
    assert gf.getchunk(0, str(f), getfile_mod.MAX_CHUNK_BYTES + 1) == -1
    gf.options.max_file_bytes = 9
    assert gf.chunkslen(str(f)) == -1
    assert gf.getchunk(0, str(f)) == -1
    with pytest.raises(getfile_mod.TransferError, match="max_file_bytes"):
        gf.stat(str(f))


# --- send and get against in-process minions ------------------------------------------------


class FakeOverlord:
    """Calls module methods in-process; each minion sees its own root as '/'.

    Exceptions become REMOTE_ERROR values, as across the wire.
    """

    PATH_ARG = {"getchunk": 1}

    def __init__(self, roots: dict[str, Path], noglobs: bool = False) -> None:
        self.roots = roots
        self.noglobs = noglobs
        self.server_spec = "*"
        self.config = SimpleNamespace(max_message_bytes=16 * 1024 * 1024)
        self.modules = {
            name: {"copyfile": copyfile_mod.CopyFile(), "getfile": getfile_mod.GetFile()} for name in roots
        }
        self.calls: list[tuple[str, str, str]] = []

    async def minions(self) -> list[str]:
        return sorted(self.roots)

    async def call_minion(
        self, minion: str, module: str, method: str, args: list[Any], timeout: float | None = None
    ) -> Any:
        self.calls.append((minion, module, method))
        args = list(args)
        index = self.PATH_ARG.get(method, 0)
        root = str(self.roots[minion])
        args[index] = root + args[index]
        try:
            answer = getattr(self.modules[minion][module], method)(*args)
        except Exception as exc:
            return utils.nice_exception(exc)
        if isinstance(answer, str) and answer.startswith(root + "/"):
            return answer[len(root) :]
        return answer


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    found = {}
    for name in ("m1", "m2"):
        root = tmp_path / name
        (root / "etc").mkdir(parents=True)
        found[name] = root
    return found


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "local.bin"
    path.write_bytes(os.urandom(250_000))
    path.chmod(0o640)
    return path


async def test_send_copies_to_every_minion_in_chunks(roots: dict[str, Path], source: Path) -> None:
    ol = FakeOverlord(roots)
    result = await local_copyfile.send(ol, str(source), "/etc/file.bin", bufsize=100_000)  # type: ignore[arg-type]
    assert result == {"m1": 1, "m2": 1}
    for root in roots.values():
        assert (root / "etc/file.bin").read_bytes() == source.read_bytes()
        assert stat.S_IMODE((root / "etc/file.bin").stat().st_mode) == 0o640
    appends = [c for c in ol.calls if c[2] == "append"]
    assert len(appends) == 2 * 3


async def test_send_skips_identical_files_unless_forced(roots: dict[str, Path], source: Path) -> None:
    (roots["m1"] / "etc/file.bin").write_bytes(source.read_bytes())
    ol = FakeOverlord(roots)
    assert await local_copyfile.send(ol, str(source), "/etc/file.bin") == {"m1": 0, "m2": 1}  # type: ignore[arg-type]
    assert not [c for c in ol.calls if c[0] == "m1" and c[2] == "open"]
    assert await local_copyfile.send(ol, str(source), "/etc/file.bin", force=True) == {"m1": 1, "m2": 1}  # type: ignore[arg-type]


async def test_one_failing_minion_does_not_stop_the_others(roots: dict[str, Path], source: Path) -> None:
    ol = FakeOverlord(roots)
    ol.modules["m2"]["copyfile"].options.max_file_bytes = 100_000
    (roots["m2"] / "etc/file.bin").write_bytes(b"old")
    result = await local_copyfile.send(ol, str(source), "/etc/file.bin", bufsize=60_000)  # type: ignore[arg-type]
    assert result["m1"] == 1
    assert utils.is_error(result["m2"]) and "max_file_bytes" in result["m2"][2]
    assert (roots["m2"] / "etc/file.bin").read_bytes() == b"old"
    assert part_files(roots["m2"] / "etc") == []  # aborted
    m2_appends = [c for c in ol.calls if c[0] == "m2" and c[2] == "append"]
    assert len(m2_appends) == 2  # dropped out at the chunk that went past the limit


async def test_an_overlord_failure_mid_transfer_drops_the_part_files(
    roots: dict[str, Path], source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ol = FakeOverlord(roots)
    real = ol.call_minion

    async def failing(minion: str, module: str, method: str, args: list[Any], timeout: float | None = None) -> Any:
        if method == "append" and len([c for c in ol.calls if c[2] == "append"]) >= 2:
            raise RuntimeError("connection lost")
        return await real(minion, module, method, args, timeout)

    monkeypatch.setattr(ol, "call_minion", failing)
    with pytest.raises(RuntimeError):
        await local_copyfile.send(ol, str(source), "/etc/file.bin", bufsize=60_000)  # type: ignore[arg-type]
    assert [c for c in ol.calls if c[2] == "abort"] and not any(part_files(r / "etc") for r in roots.values())
    assert not any((r / "etc/file.bin").exists() for r in roots.values())


async def test_send_reports_a_bad_remote_directory(roots: dict[str, Path], source: Path) -> None:
    result = await local_copyfile.send(FakeOverlord(roots), str(source), "/missing/dir/f")  # type: ignore[arg-type]
    assert all(utils.is_error(r) and "copyfile.open" in r[2] for r in result.values())


async def test_send_refuses_an_oversized_local_file_before_sending(roots: dict[str, Path], source: Path) -> None:
    ol = FakeOverlord(roots)
    with pytest.raises(TransferError, match="larger than the 1000-byte limit; nothing was sent"):
        await local_copyfile.send(ol, str(source), "/etc/f", max_bytes=1000)  # type: ignore[arg-type]
    with pytest.raises(TransferError, match="cannot read"):
        await local_copyfile.send(ol, str(source) + ".missing", "/etc/f")  # type: ignore[arg-type]
    assert ol.calls == []


def test_chunk_size_must_fit_in_a_message() -> None:
    assert check_chunk_size(1 << 20, 16 << 20) == 1 << 20
    for bad in (0, -1, 9 << 20):
        with pytest.raises(TransferError):
            check_chunk_size(bad, 16 << 20)
    with pytest.raises(TransferError):
        check_chunk_size(1 << 20, 1 << 20)  # base64 would not fit


async def test_get_saves_each_minions_copy_under_its_name(roots: dict[str, Path], tmp_path: Path) -> None:
    for name, root in roots.items():
        (root / "etc/data").write_bytes(name.encode() * 100_000)
    ol = FakeOverlord(roots)
    dest = tmp_path / "fetched"
    result = await local_getfile.get(ol, "/etc/data", str(dest), chunksize=70_000)  # type: ignore[arg-type]
    assert result == {name: [0, str(dest / name / "data")] for name in roots}
    for name in roots:
        assert (dest / name / "data").read_bytes() == name.encode() * 100_000
        assert part_files(dest / name) == []


async def test_get_reports_a_missing_file_per_minion(roots: dict[str, Path], tmp_path: Path) -> None:
    (roots["m1"] / "etc/data").write_bytes(b"here")
    result = await local_getfile.get(FakeOverlord(roots), "/etc/data", str(tmp_path / "out"))  # type: ignore[arg-type]
    assert result["m1"] == [0, str(tmp_path / "out" / "m1" / "data")]
    assert result["m2"][0] == 1 and "does not exist" in result["m2"][1]


async def test_get_drops_a_damaged_transfer(roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (roots["m1"] / "etc/data").write_bytes(b"a" * 1000)
    ol = FakeOverlord({"m1": roots["m1"]})
    real = ol.call_minion

    async def damaging(minion: str, module: str, method: str, args: list[Any], timeout: float | None = None) -> Any:
        answer = await real(minion, module, method, args)
        if method == "getchunk":
            answer[1] = b"b" + answer[1][1:]
        return answer

    monkeypatch.setattr(ol, "call_minion", damaging)
    result = await local_getfile.get(ol, "/etc/data", str(tmp_path / "out"), chunksize=400)  # type: ignore[arg-type]
    assert result["m1"][0] == 1 and "damaged" in result["m1"][1]
    assert list((tmp_path / "out" / "m1").iterdir()) == []


async def test_noglobs_gives_the_bare_result(roots: dict[str, Path], source: Path, tmp_path: Path) -> None:
    ol = FakeOverlord({"m1": roots["m1"]}, noglobs=True)
    assert await local_copyfile.send(ol, str(source), "/etc/f") == 1  # type: ignore[arg-type]
    assert await local_getfile.get(ol, "/etc/f", str(tmp_path / "o")) == [0, str(tmp_path / "o" / "m1" / "f")]  # type: ignore[arg-type]


def test_local_modules_run_through_the_given_runner(roots: dict[str, Path], source: Path, tmp_path: Path) -> None:
    import asyncio

    local = LocalModules(asyncio.run, FakeOverlord(roots))  # type: ignore[arg-type]
    assert local.copyfile.send(str(source), "/etc/f") == {"m1": 1, "m2": 1}
    fetched = local.getfile.get("/etc/f", str(tmp_path / "back"))
    assert (tmp_path / "back" / "m2" / "f").read_bytes() == source.read_bytes()
    assert fetched["m1"][0] == 0


def test_cli_options_match_funcs() -> None:
    parser = argparse.ArgumentParser()
    add_transfer_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["copyfile", "-f", "a", "--remotepath", "/b", "--force", "-v"])
    assert (args.file, args.remotepath, args.force, args.verbose) == ("a", "/b", True, True)
    args = parser.parse_args(["getfile", "-r", "/x", "-l", "d"])
    assert (args.remotesource, args.localdir, args.verbose) == ("/x", "d", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["copyfile", "-f", "a"])
