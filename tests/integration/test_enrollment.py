"""A new minion gets its certificate over the bus, as certmaster's minions did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from func_amqp.config import Paths
from func_amqp.overlord.client import Overlord
from func_amqp.security.ca import CertificateAuthority
from tests.conftest import MinionFactory

pytestmark = pytest.mark.broker

WAIT = 30.0


@pytest.fixture
def certmaster(func_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``func-amqp certmaster`` as a real process; it creates the CA on first start."""
    log = tmp_path / "certmaster.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "func_amqp.cli.admin", "certmaster"],
            env={**os.environ, **func_env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: "serving certificate requests" in log.read_text(), f"certmaster did not start:\n{log.read_text()}")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(condition: object, message: str) -> None:
    deadline = time.time() + WAIT
    while time.time() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(message)


def test_minion_asks_waits_and_serves_once_signed(certmaster: object, minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-new"
    authority = CertificateAuthority(Paths.resolve().ca_dir)
    minion = minions.start(name, enrolled=False, wait=False, conf="certmaster_poll_interval = 0.5\n")
    _wait_for(lambda: name in authority.list_pending(), f"no request from {name}:\n{minion.output()}")
    assert "waiting for the certificate" in minion.output() and "func-amqp ca --sign" in minion.output()
    time.sleep(1.5)  # it keeps asking, and keeps waiting, while nobody signs
    assert "serving" not in minion.output()
    assert authority.sign([name]) == [name]
    minions.wait_ready(minion)
    assert Overlord(name, noglobs=True).test.ping() == 1
    pki = Paths.resolve().pki_dir
    assert (pki / f"{name}.pem").stat().st_mode & 0o777 == 0o600
    assert (pki / f"{name}.cert").exists() and (pki / "ca.cert").exists()


def test_autosign(request: pytest.FixtureRequest, minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    """With autosign on (certmaster.conf), nobody signs: the minion just starts serving."""
    Path(func_env["FUNC_AMQP_CONFIG_DIR"], "certmaster.conf").write_text("[main]\nautosign = yes\n")
    request.getfixturevalue("certmaster")  # started after the setting is in place
    name = f"{prefix}-auto"
    minion = minions.start(name, enrolled=False, wait=False, conf="certmaster_poll_interval = 0.5\n")
    minions.wait_ready(minion)
    assert name in CertificateAuthority(Paths.resolve().ca_dir).list_signed()
    assert Overlord(name, noglobs=True).test.ping() == 1
