"""The private RabbitMQ node and ``func-amqp broker``, against real nodes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

import func_amqp
from func_amqp.broker import node
from func_amqp.broker.node import PrivateBroker
from func_amqp.cli.admin import main
from func_amqp.config import ENV_STATE_DIR, Paths
from func_amqp.errors import BrokerError
from tests.broker_support import node_state_dir, running_broker

REPO_ROOT = Path(func_amqp.__file__).resolve().parent.parent
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), *node.EXTRA_PROGRAM_DIRS])

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(
        shutil.which(node.SERVER_PROGRAM, path=SBIN_PATH) is None,
        reason="rabbitmq-server is not installed",
    ),
]


@pytest.fixture
def node_dir() -> Iterator[Path]:
    with node_state_dir() as state:
        yield state


@pytest.fixture
def paths(node_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    state = node_dir / "state"
    monkeypatch.setenv(ENV_STATE_DIR, str(state))
    return Paths(config_dir=tmp_path / "config", state_dir=state)


@pytest.fixture
def broker(paths: Paths) -> Iterator[PrivateBroker]:
    """A node the test may start; stopped afterwards whatever the test did."""
    managed = PrivateBroker(paths)
    try:
        yield managed
    finally:
        managed.stop()
        assert _node_processes(managed.node) == []


def _node_processes(node_name: str) -> list[str]:
    """Live processes started for ``node_name`` (the shared epmd aside)."""
    marker = f"RABBITMQ_NODENAME={node_name}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if comm != "epmd" and state not in ("Z", "X") and marker in environ:
            found.append(f"{entry.name} {comm}")
    return found


async def _assert_amqp_works(url: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"ping"), routing_key=queue.name
        )
        message = await queue.get(timeout=5)
        assert message is not None
        await message.ack()
        assert message.body == b"ping"
    finally:
        await connection.close()


def _port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


# --- PrivateBroker ---------------------------------------------------------------------


async def test_start_status_url_stop(broker: PrivateBroker, paths: Paths) -> None:
    url = broker.start()

    assert url.startswith("amqp://guest:guest@127.0.0.1:")
    assert paths.private_broker_url_file.read_text().strip() == url
    status = broker.status()
    assert status.running
    assert status.url == url == broker.url
    assert status.pid is not None
    assert status.directory == paths.private_broker_dir
    assert status.node.startswith(node.NODE_NAME_PREFIX)
    await _assert_amqp_works(url)

    assert broker.stop() is True
    status = broker.status()
    assert not status.running
    assert status.url is None and status.pid is None and broker.url is None
    assert not paths.private_broker_url_file.exists()
    assert _node_processes(broker.node) == []


def test_start_is_idempotent(broker: PrivateBroker, paths: Paths) -> None:
    url = broker.start()
    pid = broker.status().pid

    assert broker.start() == url
    assert PrivateBroker(paths).start() == url
    assert broker.status().pid == pid


async def test_restart_keeps_url(broker: PrivateBroker) -> None:
    url = broker.start()
    broker.stop()

    assert broker.start() == url
    await _assert_amqp_works(url)


def test_restart_moves_off_a_port_taken_meanwhile(broker: PrivateBroker) -> None:
    url = broker.start()
    broker.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", _port_of(url)))
        squatter.listen()

        new_url = broker.start()

    assert new_url != url
    assert broker.status().url == new_url


def test_stop_when_not_running(broker: PrivateBroker, paths: Paths) -> None:
    paths.private_broker_dir.mkdir(parents=True)
    paths.private_broker_url_file.write_text("amqp://guest:guest@127.0.0.1:1/\n")

    assert broker.stop() is False
    assert not paths.private_broker_url_file.exists()
    status = broker.status()
    assert (status.running, status.url, status.pid) == (False, None, None)


def test_node_name_is_unique_per_state_dir(tmp_path: Path) -> None:
    one = PrivateBroker(Paths(tmp_path / "c", tmp_path / "a"))
    two = PrivateBroker(Paths(tmp_path / "c", tmp_path / "b"))

    assert one.node != two.node
    assert one.node == PrivateBroker(Paths(tmp_path / "c", tmp_path / "a")).node


def test_failed_boot_leaves_nothing_behind(broker: PrivateBroker, paths: Paths) -> None:
    with pytest.raises(BrokerError, match="did not start within") as failure:
        broker.start(timeout=0.5)

    assert str(broker.log_file) in str(failure.value)
    assert _node_processes(broker.node) == []
    assert not broker.status().running
    assert not paths.private_broker_url_file.exists()


def test_crash_during_boot_reports_the_log(broker: PrivateBroker, paths: Paths) -> None:
    paths.private_broker_dir.mkdir(parents=True)
    (paths.private_broker_dir / node.ENABLED_PLUGINS_FILE).write_text("not erlang\n")

    with pytest.raises(BrokerError, match="exited during boot") as failure:
        broker.start()

    assert str(broker.log_file) in str(failure.value)
    assert "cannot_read_enabled_plugins_file" in str(failure.value)
    assert _node_processes(broker.node) == []


def test_missing_rabbitmq_server_is_a_clear_error(
    broker: PrivateBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(node, "EXTRA_PROGRAM_DIRS", ())
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(BrokerError, match="apt-get install rabbitmq-server"):
        broker.start()


def test_running_broker_helper_always_stops(node_dir: Path) -> None:
    with pytest.raises(RuntimeError), running_broker(node_dir / "state") as started:
        assert started.status().running
        raise RuntimeError("test body failed")

    assert not started.status().running
    assert _node_processes(started.node) == []


# --- func-amqp broker ------------------------------------------------------------------


def test_cli_lifecycle(
    broker: PrivateBroker, paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["broker", "status"]) == 3
    assert capsys.readouterr().out.startswith("stopped\n")
    assert main(["broker", "url"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("func-amqp: error: ") and "func-amqp broker start" in err

    assert main(["broker", "start"]) == 0
    url = capsys.readouterr().out.strip()
    assert url == broker.url
    assert main(["broker", "url"]) == 0
    assert capsys.readouterr().out.strip() == url
    assert main(["-c", str(paths.config_dir), "broker", "status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("running\n")
    assert url in out and broker.node in out and str(paths.private_broker_dir) in out

    assert main(["broker", "stop"]) == 0
    assert capsys.readouterr().out.strip() == "stopped"
    assert main(["broker", "stop"]) == 0
    assert capsys.readouterr().out.strip() == "not running"
    assert main(["broker", "status"]) == 3


def test_cli_as_a_program(broker: PrivateBroker, paths: Paths) -> None:
    env = {
        **os.environ,
        ENV_STATE_DIR: str(paths.state_dir),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        ),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "func_amqp.cli.admin", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    started = run("broker", "start")
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip()
    assert broker.url == url, "the node must outlive the command that started it"
    assert run("broker", "status").returncode == 0
    stopped = run("broker", "stop")
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "stopped")
    assert broker.url is None
    version = run("--version")
    expected = (0, f"func-amqp {func_amqp.__version__}")
    assert (version.returncode, version.stdout.strip()) == expected


def test_cli_missing_rabbitmq_server(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)

    assert main(["broker", "start"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("func-amqp: error: ") and "apt-get install rabbitmq-server" in err


USAGE_ERRORS = [
    ["nonsense"],
    ["broker"],
    ["broker", "restart"],
    ["broker", "start", "--timeout", "x"],
    ["broker", "stop", "--timeout", "0"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_cli_usage_errors_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "usage: func-amqp" in capsys.readouterr().err
