"""Remote calls end to end: real RabbitMQ node, real funcd processes, func's APIs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from func_amqp import utils
from func_amqp.overlord.caller import CallEvent
from func_amqp.overlord.client import Client, Overlord
from tests.conftest import BOTH_TRANSPORTS, MinionFactory, run_cli

pytestmark = pytest.mark.broker
TRANSPORTS = BOTH_TRANSPORTS

FAST_FAILURE = 5.0
"""Generous bound for 'fails within a few seconds', against hangs, not a benchmark."""


def test_overlord_api(minions: MinionFactory, prefix: str) -> None:
    for i in (1, 2):
        minions.start(f"{prefix}-{i}")
    names = [f"{prefix}-1", f"{prefix}-2"]
    ol = Overlord(f"{prefix}-*")
    assert ol.list_minions() == names
    assert ol.test.ping() == dict.fromkeys(names, 1)
    assert ol.test.add(1, 2) == dict.fromkeys(names, 3)
    assert ol.test.echo({"k": [1, 2.5, None, True]}) == dict.fromkeys(names, {"k": [1, 2.5, None, True]})
    rc, out, err = Overlord(names[0], noglobs=True).command.run("echo hi; echo oops >&2; exit 3")
    assert (rc, out, err) == (3, "hi\n", "oops\n")
    result = Client(names[1], noglobs=True).test.explode()
    assert utils.is_error(result) and result[2] == "khhhhhhaaaaaan!!!!!!"
    inventory = Overlord(names[0], noglobs=True).system.inventory()
    assert "ping" in inventory["test"] and "run" in inventory["command"]


def test_func_shim_runs_unchanged_scripts(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    minions.start(f"{prefix}-1")
    script = (
        "import func.overlord.client as fc\n"
        "from func.utils import is_error\n"
        "from func.minion.modules import func_module\n"
        f"r = fc.Client('{prefix}-*').test.ping()\n"
        "assert not any(is_error(v) for v in r.values()), r\n"
        "print(sorted(r.items()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"[('{prefix}-1', 1)]"


def test_ping_with_one_of_three_stopped(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    started = [minions.start(f"{prefix}-{i}") for i in (1, 2, 3)]
    first = run_cli("func_amqp.cli.func", f"{prefix}-*", "ping", env=func_env)
    assert first.returncode == 0, first.stderr
    started[1].stop()
    t0 = time.monotonic()
    second = run_cli("func_amqp.cli.func", f"{prefix}-*", "ping", env=func_env)
    elapsed = time.monotonic() - t0
    assert second.returncode == 1
    assert second.stdout.splitlines() == [
        f"[ ok ... ] {prefix}-1",
        f"[ FAILED ] {prefix}-2",
        f"[ ok ... ] {prefix}-3",
    ]
    assert elapsed < FAST_FAILURE + 3  # process start included


def test_killed_minion_fails_fast_through_the_api(minions: MinionFactory, prefix: str) -> None:
    a = minions.start(f"{prefix}-a")
    minions.start(f"{prefix}-b")
    assert Overlord(f"{prefix}-*").test.ping() == {f"{prefix}-a": 1, f"{prefix}-b": 1}
    a.stop(signal.SIGKILL)
    t0 = time.monotonic()
    results = Overlord(f"{prefix}-*", timeout=30).test.ping()
    assert time.monotonic() - t0 < FAST_FAILURE
    assert results[f"{prefix}-b"] == 1
    assert results[f"{prefix}-a"][1] == "func_amqp.errors.MinionUnreachable"


def test_cli_call_converts_registered_argument_types(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    minions.start(f"{prefix}-1")
    out = run_cli("func_amqp.cli.func", f"{prefix}-1", "call", "test", "add", "1", "2", env=func_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{{'{prefix}-1': 3}}"
    out = run_cli("func_amqp.cli.func", f"{prefix}-1", "call", "--json", "test", "echo", "1", env=func_env)
    assert json.loads(out.stdout) == {f"{prefix}-1": "1"}  # unregistered types stay strings
    out = run_cli("func_amqp.cli.func", f"{prefix}-1", "call", "test", "add", "1", "x", env=func_env)
    assert out.returncode == 1
    assert "numb2" in out.stderr and "int" in out.stderr and len(out.stderr.splitlines()) == 1


def test_cli_failures_and_exit_codes(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    minions.start(f"{prefix}-1")
    out = run_cli("func_amqp.cli.func", f"{prefix}-1", "call", "test", "explode", env=func_env)
    assert out.returncode == 1 and "REMOTE_ERROR" in out.stdout
    out = run_cli("func_amqp.cli.func", "nomatch-*", "ping", env=func_env)
    assert out.returncode == 1
    assert out.stderr.strip() == 'func: error: Can\'t find any minions matching "nomatch-*".'
    out = run_cli("func_amqp.cli.func", f"{prefix}-1", "call", "test", env=func_env)
    assert out.returncode == 2
    out = run_cli("func_amqp.cli.func", "-t", "-1", f"{prefix}-1", "ping", env=func_env)
    assert out.returncode == 2
    out = run_cli("func_amqp.cli.func", "--version", env=func_env)
    assert out.returncode == 0 and out.stdout.startswith("func ")


def test_call_timeout_is_reported_on_time(minions: MinionFactory, prefix: str) -> None:
    minions.start(f"{prefix}-1")
    t0 = time.monotonic()
    result = Overlord(f"{prefix}-1", timeout=1, noglobs=True).test.sleep(5)
    assert time.monotonic() - t0 < 3
    assert result[1] == "func_amqp.errors.MinionTimeout"


def test_unreachable_broker_is_one_clear_line(func_env: dict[str, str]) -> None:
    env = {**func_env, "FUNC_AMQP_URL": "amqp://guest:secret@127.0.0.1:1/"}
    for argv in (("func_amqp.cli.func", "*", "ping"), ("func_amqp.cli.funcd", "--name", "x")):
        t0 = time.monotonic()
        out = run_cli(*argv, env=env)
        assert time.monotonic() - t0 < 15
        assert out.returncode == 1
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert "cannot reach the AMQP broker at amqp://guest:***@127.0.0.1:1/" in lines[0]
        assert "secret" not in out.stderr and "func-amqp broker start" in lines[0]


def test_duplicate_minion_name_is_refused(minions: MinionFactory, prefix: str) -> None:
    minions.start(f"{prefix}-1")
    dup = minions.start(f"{prefix}-1", wait=False)
    assert dup.proc.wait(30) == 1
    assert "already connected" in dup.output()


def test_funcd_list_modules_and_info(func_env: dict[str, str], tmp_path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.py").write_text(
        "from func_amqp.minion.modules.func_module import FuncModule\n"
        "class Hello(FuncModule):\n"
        "    def greet(self, who):\n"
        "        return 'hello ' + who\n"
    )
    conf = Path(func_env["FUNC_AMQP_CONFIG_DIR"])
    (conf / "minion.conf").write_text(f"[main]\nmodule_dirs = {site}\nmodule_list = test, hello\n")
    out = run_cli("func_amqp.cli.funcd", "--list-modules", env=func_env)
    assert out.stdout.split() == ["hello", "test"], out.stderr
    out = run_cli("func_amqp.cli.funcd", "--info", "--name", "Box1", env=func_env)
    assert "minion name:      box1" in out.stdout and "hello: " in out.stdout
    out = run_cli("func_amqp.cli.funcd", "--name", "bad name!", env=func_env)
    assert out.returncode == 1 and "invalid minion name" in out.stderr
    (conf / "minion.conf").write_text("[main]\nmax_concurrent_calls = lots\n")
    out = run_cli("func_amqp.cli.funcd", "--list-modules", env=func_env)
    assert out.returncode == 1 and "max_concurrent_calls" in out.stderr


def test_groups_and_exclusion_from_the_command_line(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    for i in (1, 2, 3):
        minions.start(f"{prefix}-{i}")
    conf = Path(func_env["FUNC_AMQP_CONFIG_DIR"])
    (conf / "groups").write_text(f"[pair]\nhost = {prefix}-1; {prefix}-2\n\n[globbed]\nhost = {prefix}-*\n")
    out = run_cli("func_amqp.cli.func", "@pair", "list_minions", env=func_env)
    assert out.stdout.split() == [f"{prefix}-1", f"{prefix}-2"], out.stderr
    out = run_cli("func_amqp.cli.func", f"@globbed:{prefix}-[23]", "list_minions", env=func_env)
    assert out.stdout.split() == [f"{prefix}-2", f"{prefix}-3"], out.stderr
    out = run_cli("func_amqp.cli.func", "-e", "@pair", f"{prefix}-*", "ping", env=func_env)
    assert out.stdout.splitlines() == [f"[ ok ... ] {prefix}-3"], out.stderr
    out = run_cli("func_amqp.cli.func", "@nosuch", "ping", env=func_env)
    assert out.returncode == 1 and "nosuch" in out.stderr and len(out.stderr.splitlines()) == 1


def test_graceful_stop_finishes_running_calls_and_refuses_new_ones(minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minion = minions.start(name)
    outcome: dict[str, object] = {}

    def long_call() -> None:
        outcome["result"] = Overlord(name, timeout=30, noglobs=True).test.sleep(2)

    caller = threading.Thread(target=long_call)
    caller.start()
    time.sleep(0.5)
    minion.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    t0 = time.monotonic()
    refused = Overlord(name, timeout=30, noglobs=True).test.ping()
    assert time.monotonic() - t0 < FAST_FAILURE
    assert refused[1] in ("func_amqp.errors.MinionUnreachable", "func_amqp.errors.RemoteError.SHUTTING_DOWN")
    caller.join(30)
    assert isinstance(outcome["result"], float)
    assert minion.proc.wait(30) == 0


def test_minion_directory_commands(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    a = minions.start(f"{prefix}-a")
    minions.start(f"{prefix}-b")
    out = run_cli("func_amqp.cli.admin", "minions", "list", env=func_env)
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in out.stdout.splitlines()}
    assert rows[f"{prefix}-a"] == rows[f"{prefix}-b"] == "up", out.stderr
    a.stop()
    out = run_cli("func_amqp.cli.admin", "minions", "list", env=func_env)
    assert f"{prefix}-a\tdown" in out.stdout
    out = run_cli("func_amqp.cli.admin", "minions", "forget", f"{prefix}-a", env=func_env)
    assert out.returncode == 0 and out.stdout.strip() == f"forgot {prefix}-a"
    out = run_cli("func_amqp.cli.func", f"{prefix}-*", "list_minions", env=func_env)
    assert out.stdout.split() == [f"{prefix}-b"]
    out = run_cli("func_amqp.cli.admin", "minions", "forget", "nobody", env=func_env)
    assert out.returncode == 1 and "nobody" in out.stderr


PROGRESS_MODULE = """
import time
from func_amqp.minion.modules.func_module import FuncModule
from func_amqp.minion import progress, process

class Steps(FuncModule):
    def count(self, n):
        n = int(n)  # from the command line it arrives as a string, as in func
        for i in range(n):
            progress.report("counting", i + 1, n)
            progress.log(f"at {i + 1}")
        return n

    def child(self):
        progress.report("child")
        return process.run(["sleep", "60"]).returncode
"""


def test_progress_cancel_and_follow_over_the_broker(minions: MinionFactory, prefix: str, tmp_path: Path, func_env: dict[str, str]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "steps.py").write_text(PROGRESS_MODULE)
    name = f"{prefix}-1"
    minions.start(name, conf=f"module_dirs = {site}\n")
    events: list[CallEvent] = []
    ol = Overlord(name, noglobs=True)
    assert ol.run("steps", "count", [20], on_event=events.append) == 20
    assert [line for e in events for line in e.lines] == [f"at {i}" for i in range(1, 21)]
    assert events[-1].progress is not None or any(e.progress for e in events)

    outcome: dict[str, object] = {}
    caller = threading.Thread(target=lambda: outcome.update(r=ol.run("steps", "child", [], call_id="cc1")))
    caller.start()
    time.sleep(1.0)
    followed = run_cli("func_amqp.cli.func", name, "follow", "--progress", "plain", "does-not-exist", env=func_env)
    assert followed.returncode == 1 and "RemoteError.NO_SUCH_CALL" in followed.stdout
    out = run_cli("func_amqp.cli.func", name, "cancel", "cc1", env=func_env)
    assert out.stdout.strip() == f"[ ok ... ] {name}: cancelled", out.stderr
    caller.join(30)
    assert outcome["r"] == -2  # the child's process group got SIGINT


def test_cli_shows_progress_lines_when_not_a_terminal(minions: MinionFactory, prefix: str, tmp_path: Path, func_env: dict[str, str]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "steps.py").write_text(PROGRESS_MODULE)
    name = f"{prefix}-1"
    minions.start(name, conf=f"module_dirs = {site}\n")
    out = run_cli("func_amqp.cli.func", name, "call", "--logs", "steps", "count", "3", env=func_env)
    assert out.returncode == 0
    assert out.stdout.strip() == f"{{'{name}': 3}}"  # results alone on stdout
    assert f"{name}| at 3" in out.stderr and f"{name}: counting [3/3]" in out.stderr


def test_stop_does_not_wait_forever_for_a_method_that_ignores_cancel(minions: MinionFactory, prefix: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "stubborn.py").write_text(
        "import time\n"
        "from func_amqp.minion.modules.func_module import FuncModule\n"
        "class Stubborn(FuncModule):\n"
        "    def wait(self):\n"
        "        time.sleep(120)\n"
    )
    name = f"{prefix}-1"
    minion = minions.start(name, conf=f"module_dirs = {site}\n")
    caller = threading.Thread(target=lambda: Overlord(name, timeout=5, noglobs=True).stubborn.wait(), daemon=True)
    caller.start()
    time.sleep(1)
    t0 = time.monotonic()
    minion.proc.send_signal(signal.SIGTERM)
    assert minion.proc.wait(60) == 0
    assert time.monotonic() - t0 < 30  # grace 10 s + cancel wait 5 s, not the method's 120 s
