"""Shared fixtures: a private RabbitMQ node for the session, minions per test.

Every process a fixture starts is stopped by that fixture, also when the test fails.
Tests isolate themselves on the shared node by giving their minions a unique prefix
and targeting ``<prefix>*``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from func_amqp.config import ENV_BROKER_URL, ENV_CONFIG_DIR, ENV_JOB_OWNER, ENV_STATE_DIR, Paths
from func_amqp.overlord.session import Session
from func_amqp.security.credentials import issue_locally
from func_amqp.security.keys import HostIdentity
from func_amqp.broker.node import amqp10_url
from tests.broker_support import node_state_dir, running_broker

MINION_READY_TIMEOUT = 30.0
MINION_STOP_TIMEOUT = 15.0


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No test reads or writes the machine's real config or state directories."""
    base = tmp_path_factory.mktemp("func-amqp-dirs")
    conf = base / "conf"
    state = base / "state"
    conf.mkdir()
    state.mkdir()
    # each test reads only its own jobs' events
    values = {ENV_CONFIG_DIR: str(conf), ENV_STATE_DIR: str(state), ENV_JOB_OWNER: "test-" + uuid.uuid4().hex[:12]}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(ENV_BROKER_URL, raising=False)
    return values


@pytest.fixture(scope="session")
def broker() -> Iterator[object]:
    """One private RabbitMQ node for the whole test session."""
    with node_state_dir() as state, running_broker(state) as node:
        try:
            yield node
        finally:
            Session.close_shared()  # before the node goes, or its clients retry noisily


TRANSPORTS_ATTRIBUTE = "TRANSPORTS"
"""A test module that sets ``TRANSPORTS = BOTH_TRANSPORTS`` runs each broker test over
each transport; others use AMQP 0-9-1 alone. ``@pytest.mark.transports(...)`` narrows
one test."""
AMQP091, AMQP10 = "amqp091", "amqp10"
BOTH_TRANSPORTS = (AMQP091, AMQP10)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "transport" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("transports")
        transports = marker.args if marker else getattr(metafunc.module, TRANSPORTS_ATTRIBUTE, (AMQP091,))
        metafunc.parametrize("transport", transports, indirect=True)


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """The transport a broker test runs over (AMQP 1.0 through the node's plugin)."""
    return str(request.param)


@pytest.fixture
def broker_url(broker: object, transport: str) -> str:
    url = broker.url  # type: ignore[attr-defined]
    assert url, "the session broker is not running"
    return amqp10_url(str(url)) if transport == AMQP10 else str(url)


@pytest.fixture
def func_env(isolated_dirs: dict[str, str], broker_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The per-test directories, pointed at the session broker."""
    monkeypatch.setenv(ENV_BROKER_URL, broker_url)
    return {**isolated_dirs, ENV_BROKER_URL: broker_url}


@pytest.fixture
def prefix() -> str:
    """A unique minion-name prefix for this test."""
    return "t" + uuid.uuid4().hex[:8]


class MinionProcess:
    """A funcd started as a real process."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path, audit: Path, confdir: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.audit = audit
        self.confdir = confdir

    def audit_lines(self) -> list[str]:
        return self.audit.read_text().splitlines() if self.audit.exists() else []

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(MINION_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(MINION_STOP_TIMEOUT)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def provision(name: str) -> None:
    """What an administrator does once per minion: a certificate from this test's CA.

    The CA lives in the test's state directory, so the test process, as its holder,
    signs its requests with the certmaster key, as func's overlord did.
    """
    paths = Paths.resolve()
    issue_locally(paths.ca_dir, HostIdentity(paths.pki_dir, name))


class MinionFactory:
    def __init__(self, env: dict[str, str], workdir: Path, before_start: Callable[[str], None] | None = None) -> None:
        """``before_start(name)`` runs before each funcd starts (a TLS broker's user grant)."""
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.started: list[MinionProcess] = []
        self.before_start = before_start

    def start(
        self,
        name: str,
        *,
        conf: str = "",
        modules: dict[str, str] | None = None,
        wait: bool = True,
        enrolled: bool = True,
    ) -> MinionProcess:
        """Start ``funcd --name NAME`` with a certificate; ``modules`` maps a module
        class name to the ``[main]`` lines of its options file."""
        if enrolled:
            provision(name)
        if self.before_start is not None:
            self.before_start(name)
        confdir = self.workdir / f"conf-{name}"
        confdir.mkdir(exist_ok=True)
        audit = self.workdir / f"{name}-audit.log"
        (confdir / "minion.conf").write_text(f"[main]\nheartbeat_interval = 5\naudit_log = {audit}\n" + conf)
        for class_name, lines in (modules or {}).items():
            (confdir / "modules").mkdir(exist_ok=True)
            (confdir / "modules" / f"{class_name}.conf").write_text("[main]\n" + lines)
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "func_amqp.cli.funcd", "--name", name, "-c", str(confdir), "--log-level", "DEBUG"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        minion = MinionProcess(name, proc, log, audit, confdir)
        self.started.append(minion)
        if wait:
            self.wait_ready(minion)
        return minion

    def wait_ready(self, minion: MinionProcess) -> None:
        deadline = time.time() + MINION_READY_TIMEOUT
        while time.time() < deadline:
            if minion.proc.poll() is not None:
                raise AssertionError(f"funcd {minion.name} exited {minion.proc.returncode}:\n{minion.output()}")
            if "serving" in minion.output():
                return
            time.sleep(0.1)
        raise AssertionError(f"funcd {minion.name} not ready in {MINION_READY_TIMEOUT}s:\n{minion.output()}")

    def stop_all(self) -> None:
        for minion in self.started:
            minion.stop()


@pytest.fixture
def minions(func_env: dict[str, str], tmp_path: Path) -> Iterator[MinionFactory]:
    """Start funcd processes; all are stopped at the end of the test."""
    factory = MinionFactory(func_env, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def run_cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a console script module as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
