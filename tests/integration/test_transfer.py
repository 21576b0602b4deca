"""File transfer end to end: real RabbitMQ node, real funcd processes.

The minions run on this machine, so every "remote" path is under tmp_path and all
minions write the same file; what is checked is what each one answers and that the
bytes that come back are the bytes sent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
from pathlib import Path
import pytest

from func_amqp import utils
from func_amqp.cli import func as func_cli
from func_amqp.cli.transfer import add_transfer_commands
from func_amqp.overlord.caller import AsyncOverlord
from func_amqp.overlord.client import Overlord
from func_amqp.overlord.local import MAX_FILE_BYTES, LocalModules, TransferError
from func_amqp.overlord.local import copyfile, getfile
from tests.conftest import BOTH_TRANSPORTS, MinionFactory, run_cli

pytestmark = pytest.mark.broker
TRANSPORTS = BOTH_TRANSPORTS

SIZE = 3 * 1024 * 1024 + 12345
"""Over three chunks, the last one partial."""


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    path = tmp_path / "remote"
    path.mkdir()
    return path


def two_minions(minions: MinionFactory, prefix: str) -> list[str]:
    names = [f"{prefix}-1", f"{prefix}-2"]
    for name in names:
        minions.start(name)
    return names


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if ".part" in p.name]


async def test_send_then_get_with_two_minions(
    minions: MinionFactory, prefix: str, payload: Path, remote_dir: Path, tmp_path: Path
) -> None:
    names = two_minions(minions, prefix)
    remote = remote_dir / "copy.bin"
    async with AsyncOverlord(f"{prefix}-*") as ol:
        assert await copyfile.send(ol, str(payload), str(remote)) == dict.fromkeys(names, 1)
        assert remote.read_bytes() == payload.read_bytes()
        assert await copyfile.send(ol, str(payload), str(remote)) == dict.fromkeys(names, 0)
        fetched = await getfile.get(ol, str(remote), str(tmp_path / "back"))
    assert fetched == {name: [0, str(tmp_path / "back" / name / "copy.bin")] for name in names}
    for name in names:
        assert (tmp_path / "back" / name / "copy.bin").read_bytes() == payload.read_bytes()
    assert leftovers(tmp_path) == []


def test_sync_local_modules_as_ansible_calls_them(
    minions: MinionFactory, prefix: str, payload: Path, remote_dir: Path, tmp_path: Path
) -> None:
    name = two_minions(minions, prefix)[0]
    client = Overlord(name)
    local = _local_of(client)
    remote = remote_dir / "ansible.bin"
    assert local.copyfile.send(str(payload), str(remote)) == {name: 1}
    local.getfile.get(str(remote), str(tmp_path / "fetch"))
    fetched = tmp_path / "fetch" / name / os.path.basename(remote)
    assert hashlib.sha1(fetched.read_bytes()).hexdigest() == hashlib.sha1(payload.read_bytes()).hexdigest()


def _local_of(client: Overlord) -> LocalModules:
    """``client.local`` once client.py provides it; until then the same object built here."""
    local = client.local
    if isinstance(local, LocalModules):
        return local
    return LocalModules(client._session.run, client._async)


async def test_a_minion_over_its_size_limit_fails_alone(
    minions: MinionFactory, prefix: str, tmp_path: Path, payload: Path, remote_dir: Path
) -> None:
    small = f"{prefix}-small"
    modules_conf = tmp_path / f"conf-{small}" / "modules"
    modules_conf.mkdir(parents=True)
    (modules_conf / "CopyFile.conf").write_text(f"[main]\nmax_file_bytes = {1024 * 1024}\n")
    minions.start(small)
    minions.start(f"{prefix}-big")
    async with AsyncOverlord(f"{prefix}-*") as ol:
        result = await copyfile.send(ol, str(payload), str(remote_dir / "f.bin"))
    assert result[f"{prefix}-big"] == 1
    assert utils.is_error(result[small]) and "max_file_bytes" in result[small][2]
    assert (remote_dir / "f.bin").read_bytes() == payload.read_bytes()
    assert leftovers(remote_dir) == []


async def test_oversized_upload_is_refused_before_sending(
    minions: MinionFactory, prefix: str, tmp_path: Path, remote_dir: Path
) -> None:
    minions.start(f"{prefix}-1")
    huge = tmp_path / "huge.img"
    with huge.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    async with AsyncOverlord(f"{prefix}-*") as ol:
        with pytest.raises(TransferError, match="larger than the 1073741824-byte limit; nothing was sent"):
            await copyfile.send(ol, str(huge), str(remote_dir / "huge.img"))
    assert list(remote_dir.iterdir()) == []


async def test_get_of_a_missing_file_reports_each_minion(
    minions: MinionFactory, prefix: str, tmp_path: Path
) -> None:
    names = two_minions(minions, prefix)
    async with AsyncOverlord(f"{prefix}-*") as ol:
        result = await getfile.get(ol, str(tmp_path / "nothing-here"), str(tmp_path / "out"))
    assert set(result) == set(names)
    assert all(status == 1 and "does not exist" in message for status, message in result.values())


# --- the command line ------------------------------------------------------------------------


def _func_cli_has_transfer_commands() -> bool:
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            func_cli.build_parser().parse_args(["x", "getfile", "-r", "/a", "-l", "b"])
    except SystemExit:
        return False
    return True


async def _run_handlers(argv: list[str]) -> int:
    """The transfer subcommands under a minimal ``func SPEC`` parser, in this process."""
    parser = argparse.ArgumentParser(prog="func")
    parser.add_argument("spec")
    add_transfer_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    async with AsyncOverlord(args.spec) as ol:
        return await args.handler(ol, args)


async def func_cmd(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``func ARGV``: the real command once it has the subcommands, else the handlers."""
    if _func_cli_has_transfer_commands():
        out = run_cli("func_amqp.cli.func", *argv, env=env)
        return out.returncode, out.stdout, out.stderr
    try:
        code = await _run_handlers(argv)
    except TransferError as exc:
        code = 1
        print(f"func: error: {exc}", file=sys.stderr)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_cli_copyfile_and_getfile(
    minions: MinionFactory,
    prefix: str,
    func_env: dict[str, str],
    payload: Path,
    remote_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = two_minions(minions, prefix)
    remote = str(remote_dir / "cli.bin")
    code, out, err = await func_cmd([f"{prefix}-*", "copyfile", "-f", str(payload), "--remotepath", remote], func_env, capsys)
    assert code == 0, err
    assert out.splitlines() == [f"[ ok ... ] {name}: copied" for name in names]
    code, out, err = await func_cmd([f"{prefix}-*", "copyfile", "-f", str(payload), "--remotepath", remote, "--force", "-v"], func_env, capsys)
    assert out.splitlines() == [f"[ ok ... ] {name}: copied to {remote}" for name in names]
    code, out, err = await func_cmd([f"{prefix}-*", "getfile", "-r", remote, "-l", str(tmp_path / "got"), "-v"], func_env, capsys)
    assert code == 0, err
    assert out.splitlines() == [f"[ ok ... ] {name}: {tmp_path / 'got' / name / 'cli.bin'}" for name in names]
    assert (tmp_path / "got" / names[1] / "cli.bin").read_bytes() == payload.read_bytes()
    code, out, err = await func_cmd([f"{prefix}-*", "getfile", "-r", "/no/such/file", "-l", str(tmp_path / "got")], func_env, capsys)
    assert code == 1
    assert all(line.startswith("[ FAILED ] ") and "does not exist" in line for line in out.splitlines())


async def test_cli_refuses_an_oversized_upload_in_one_line(
    minions: MinionFactory,
    prefix: str,
    func_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    minions.start(f"{prefix}-1")
    huge = tmp_path / "huge.img"
    with huge.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    code, out, err = await func_cmd([f"{prefix}-1", "copyfile", "-f", str(huge), "--remotepath", str(tmp_path / "x")], func_env, capsys)
    assert code == 1 and out == ""
    assert err.strip() == f"func: error: {huge} is {MAX_FILE_BYTES + 1} bytes, larger than the {MAX_FILE_BYTES}-byte limit; nothing was sent"

