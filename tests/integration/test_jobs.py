"""Durable jobs and builder pools on a real broker: minions stopped, killed, restarted."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from func_amqp.broker.node import CONSUMER_TIMEOUT_MS
from func_amqp.overlord.caller import AsyncOverlord
from func_amqp.overlord.job_client import JobClient
from func_amqp.overlord.jobs import JOB_ID_FINISHED, JOB_ID_LOST_IN_SPACE, JOB_ID_PARTIAL, JOB_ID_RUNNING, new_job_id, new_record
from func_amqp.errors import Code
from func_amqp.protocol import codec, names
from func_amqp.protocol.messages import JobTicket, MethodRequest
from tests.conftest import MinionFactory, run_cli

pytestmark = pytest.mark.broker

WAIT = 60.0


async def _submit(spec: str, module: str, method: str, *args: Any, **kw: Any) -> str:
    async with AsyncOverlord(spec, timeout=10) as ol:
        return await JobClient(ol).submit(module, method, list(args), **kw)


async def _wait(job_id: str, timeout: float = WAIT) -> tuple[int, Any]:
    async with AsyncOverlord("*", timeout=10) as ol:
        return await JobClient(ol).wait(job_id, timeout)


async def _record(job_id: str) -> dict[str, Any] | None:
    async with AsyncOverlord("*", timeout=10) as ol:
        return await JobClient(ol).record(job_id)


def test_a_job_is_collected_by_another_process(minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minions.start(name)
    job_id = asyncio.run(_submit(name, "test", "add", 1, 2))
    assert asyncio.run(_wait(job_id)) == (JOB_ID_FINISHED, {name: 3})
    record = asyncio.run(_record(job_id))
    assert record is not None and record["minions"][name]["state"] == "succeeded"


async def _pool_submit(pool: str, module: str, method: str, *args: Any, tags: dict[str, str] | None = None, ttl: float | None = None) -> str:
    async with AsyncOverlord("*", timeout=10) as ol:
        return await JobClient(ol).submit_to_pool(pool, module, method, list(args), tags=tags, ttl=ttl)


async def _cancel(job_id: str) -> dict[str, Any]:
    async with AsyncOverlord("*", timeout=10) as ol:
        return await JobClient(ol).cancel(job_id)


def _wait_for_state(job_id: str, minion: str, states: set[str], timeout: float = WAIT) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        record = asyncio.run(_record(job_id))
        assert record is not None
        entry = record["minions"].get(minion)
        if entry is not None and entry["state"] in states:
            return record
        if time.time() > deadline:
            raise AssertionError(f"{minion} never reached {states}: {record}")
        time.sleep(0.3)


def _runs(minion: Any, method: str) -> int:
    """How many times the minion's audit log says ``method`` ran to an end (not refused)."""
    return sum(
        1 for line in minion.audit_lines()
        if f"method={method} " in line and "outcome=refused:" not in line and "outcome=denied:" not in line
    )


def test_a_job_waits_for_a_stopped_minion(minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minion = minions.start(name)
    minion.stop()
    job_id = asyncio.run(_submit(name, "test", "echo", "hello"))
    code, results = asyncio.run(_wait(job_id, timeout=2))
    assert (code, results) == (JOB_ID_RUNNING, {})
    assert asyncio.run(_record(job_id))["minions"][name]["state"] == "sent"  # type: ignore[index]
    minions.start(name, enrolled=False)
    assert asyncio.run(_wait(job_id)) == (JOB_ID_FINISHED, {name: "hello"})


def test_a_job_that_outlives_its_time_to_live_is_reported_expired(minions: MinionFactory, prefix: str) -> None:
    up, down = f"{prefix}-up", f"{prefix}-down"
    minions.start(up)
    minions.start(down).stop()
    job_id = asyncio.run(_submit(f"{up};{down}", "test", "ping", ttl=2))
    code, results = asyncio.run(_wait(job_id, timeout=30))
    assert code == JOB_ID_FINISHED, results
    assert results[up] == 1
    assert results[down][0] == "REMOTE_ERROR" and "expired" in results[down][1]
    assert asyncio.run(_record(job_id))["minions"][down]["state"] == "expired"  # type: ignore[index]


def test_a_job_for_a_minion_that_never_ran_is_never_reached(isolated_dirs: dict[str, str], func_env: dict[str, str], prefix: str) -> None:
    code, results = asyncio.run(_wait(asyncio.run(_submit(f"{prefix}-nobody", "test", "ping")), timeout=5))
    assert code == 4  # func's JOB_ID_REMOTE_ERROR: nothing could be sent anywhere
    assert "never run with jobs" in results[f"{prefix}-nobody"][2]


def test_a_job_interrupted_by_a_crash_is_not_run_again_on_that_minion(minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minion = minions.start(name)
    job_id = asyncio.run(_submit(name, "test", "sleep", 5))
    _wait_for_state(job_id, name, {"started"})
    minion.stop(signal.SIGKILL)
    restarted = minions.start(name, enrolled=False)
    code, results = asyncio.run(_wait(job_id))
    assert code == JOB_ID_FINISHED
    assert results[name][0] == "REMOTE_ERROR" and "not run twice" in results[name][2]
    assert _runs(restarted, "test.sleep") == 0  # the redelivery did not run it


def test_an_unknown_job_is_lost_in_space(func_env: dict[str, str]) -> None:
    async def status() -> tuple[int, Any]:
        async with AsyncOverlord("*", timeout=10) as ol:
            return await JobClient(ol).status("nothing-test-ping-1.0")

    assert asyncio.run(status()) == (JOB_ID_LOST_IN_SPACE, 0)


# --- pools -----------------------------------------------------------------------------


def test_each_pool_job_runs_on_exactly_one_member_with_the_tags(minions: MinionFactory, prefix: str) -> None:
    pool = f"{prefix}-pool"
    x86 = minions.start(f"{prefix}-x86", conf=f"pools = {pool}:1\ntags = arch=x86_64\n")
    arm = minions.start(f"{prefix}-arm", conf=f"pools = {pool}:2\ntags = arch=aarch64\n")
    any_jobs = [asyncio.run(_pool_submit(pool, "test", "add", i, 1)) for i in range(6)]
    arm_job = asyncio.run(_pool_submit(pool, "test", "add", 100, 1, tags={"arch": "aarch64"}))
    nowhere = asyncio.run(_pool_submit(pool, "test", "ping", tags={"arch": "s390x"}))
    for i, job_id in enumerate(any_jobs):
        code, results = asyncio.run(_wait(job_id))
        assert code == JOB_ID_FINISHED and list(results.values()) == [i + 1], results
        assert set(results) <= {x86.name, arm.name}
    assert asyncio.run(_wait(arm_job)) == (JOB_ID_FINISHED, {arm.name: 101})
    code, results = asyncio.run(_wait(nowhere))
    assert "no member of pool" in results[f"@{pool}"][2]
    assert _runs(x86, "test.add") + _runs(arm, "test.add") == 7


def test_a_pool_member_killed_mid_job_hands_it_to_another(minions: MinionFactory, prefix: str) -> None:
    pool = f"{prefix}-pool"
    members = {m.name: m for m in (minions.start(f"{prefix}-{i}", conf=f"pools = {pool}:1\n") for i in (1, 2))}
    job_id = asyncio.run(_pool_submit(pool, "test", "sleep", 3))
    deadline = time.time() + WAIT
    while True:
        record = asyncio.run(_record(job_id))
        started = [n for n, e in record["minions"].items() if e["state"] == "started"]  # type: ignore[index]
        if started or time.time() > deadline:
            break
        time.sleep(0.2)
    assert len(started) == 1, record
    victim = started[0]
    members[victim].stop(signal.SIGKILL)
    code, results = asyncio.run(_wait(job_id))
    survivor = next(n for n in members if n != victim)
    assert code == JOB_ID_FINISHED and list(results) == [survivor], results
    record = asyncio.run(_record(job_id))
    assert record["minions"][survivor]["attempt"] == 2  # type: ignore[index]
    assert "redelivered" in record["minions"][survivor]["detail"] or record["minions"][survivor]["state"] == "succeeded"  # type: ignore[index]
    assert record["minions"][victim].get("superseded")  # type: ignore[index]


def test_a_job_that_kills_every_builder_is_dead_lettered(minions: MinionFactory, prefix: str) -> None:
    pool = f"{prefix}-pool"
    conf = f"pools = {pool}:1\n"
    names_ = [f"{prefix}-{i}" for i in (1, 2)]
    running = {n: minions.start(n, conf=conf) for n in names_}
    job_id = asyncio.run(_pool_submit(pool, "command", "run", "kill -9 $PPID"))
    deadline = time.time() + 120
    while True:
        record = asyncio.run(_record(job_id))
        states = {n: e["state"] for n, e in record["minions"].items()}  # type: ignore[index]
        if "dead_lettered" in states.values() or time.time() > deadline:
            break
        for name, minion in running.items():  # an operator (or systemd) restarts what died
            if minion.proc.poll() is not None:
                running[name] = minions.start(name, conf=conf, enrolled=False)
        time.sleep(0.5)
    assert "dead_lettered" in states.values(), record
    code, results = asyncio.run(_wait(job_id, timeout=5))
    assert code == JOB_ID_FINISHED
    assert all(v[0] == "REMOTE_ERROR" for v in results.values())


def test_queued_pool_jobs_survive_a_broker_restart(broker: Any, minions: MinionFactory, prefix: str) -> None:
    pool = f"{prefix}-pool"
    conf = f"pools = {pool}:1\n"
    minions.start(f"{prefix}-1", conf=conf).stop()  # the pool's queue exists; nobody serves it
    job_id = asyncio.run(_pool_submit(pool, "test", "echo", "still here"))
    broker.stop()
    broker.start()
    member = minions.start(f"{prefix}-1", conf=conf, enrolled=False)
    assert asyncio.run(_wait(job_id)) == (JOB_ID_FINISHED, {member.name: "still here"})


def test_cancel_a_queued_and_a_running_pool_job(minions: MinionFactory, prefix: str) -> None:
    pool = f"{prefix}-pool"
    member = minions.start(f"{prefix}-1", conf=f"pools = {pool}:1\n")
    running = asyncio.run(_pool_submit(pool, "command", "run", "sleep 30"))
    _wait_for_state(running, member.name, {"started"})
    queued = asyncio.run(_pool_submit(pool, "test", "echo", "never"))
    time.sleep(0.5)
    assert asyncio.run(_cancel(queued))
    answers = asyncio.run(_cancel(running))
    assert answers == {member.name: True}
    code, results = asyncio.run(_wait(running))
    assert code == JOB_ID_FINISHED and results[member.name][0] == "REMOTE_ERROR"
    assert asyncio.run(_record(running))["minions"][member.name]["state"] == "cancelled"  # type: ignore[index]
    code, results = asyncio.run(_wait(queued))
    assert code == JOB_ID_FINISHED
    entry = asyncio.run(_record(queued))["minions"][member.name]  # type: ignore[index]
    assert entry["state"] == "cancelled", entry
    assert _runs(member, "test.echo") == 0


def test_a_job_partly_done_is_partial(minions: MinionFactory, prefix: str) -> None:
    fast, slow = f"{prefix}-fast", f"{prefix}-slow"
    minions.start(fast)
    minions.start(slow).stop()
    job_id = asyncio.run(_submit(f"{fast};{slow}", "test", "ping"))
    deadline = time.time() + WAIT
    while True:
        code, results = asyncio.run(_wait(job_id, timeout=1))
        if code == JOB_ID_PARTIAL or time.time() > deadline:
            break
    assert (code, results) == (JOB_ID_PARTIAL, {fast: 1})


# --- func's synchronous API and the backend's -----------------------------------------


def test_func_async_mode_returns_a_job_id_and_job_status_collects_it(minions: MinionFactory, prefix: str) -> None:
    from func_amqp.overlord.client import Overlord

    name = f"{prefix}-1"
    minions.start(name)
    for kwargs in ({"async_": True}, {"async": True}):
        job_id = Overlord(name, **kwargs).test.add(1, 2)
        assert isinstance(job_id, str) and job_id.startswith(f"{prefix}_1-test-add-")
        overlord = Overlord(name)
        assert overlord.wait_job(job_id, timeout=WAIT) == (JOB_ID_FINISHED, {name: 3})
        assert overlord.job_status(job_id) == (JOB_ID_FINISHED, {name: 3})
        assert overlord.open_job_ids()[job_id] == JOB_ID_FINISHED


def test_the_backend_api_submits_to_a_pool_and_waits(minions: MinionFactory, prefix: str) -> None:
    from func_amqp.overlord.client import Jobs, Overlord

    pool = f"{prefix}-pool"
    member = minions.start(f"{prefix}-1", conf=f"pools = {pool}:1\ntags = arch=x86_64\n")
    jobs = Jobs()
    job_id = jobs.submit_to_pool(pool, "test", "echo", ["built"], tags={"arch": "x86_64"})
    assert jobs.wait(job_id, timeout=WAIT) == (JOB_ID_FINISHED, {member.name: "built"})
    record = jobs.record(job_id)
    assert record is not None and record["minions"][member.name]["state"] == "succeeded"
    via_overlord = Overlord(member.name).pool(pool, arch="x86_64").test.add(2, 2)
    assert jobs.wait(via_overlord, timeout=WAIT) == (JOB_ID_FINISHED, {member.name: 4})
    direct = jobs.submit(member.name, "test", "ping")
    assert jobs.wait(direct, timeout=WAIT) == (JOB_ID_FINISHED, {member.name: 1})


# --- the command line --------------------------------------------------------------------


def test_func_call_async_nopoll_and_jobstatus(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    name = f"{prefix}-1"
    minions.start(name)
    shown = run_cli("func_amqp.cli.func", name, "call", "-a", "--progress", "none", "test", "add", "1", "2", env=func_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"('{name}', 3)"
    assert "JOB_ID:" in shown.stderr
    sent = run_cli("func_amqp.cli.func", name, "call", "-n", "test", "add", "2", "2", env=func_env)
    assert sent.returncode == 0, sent.stderr
    job_id = sent.stdout.strip().removeprefix("JOB_ID: ").strip("'")
    deadline = time.time() + WAIT
    while True:
        status = run_cli("func_amqp.cli.func", name, "call", "-s", job_id, env=func_env)
        if status.stdout.strip() == f"(1, {{'{name}': 4}})" or time.time() > deadline:
            break
        time.sleep(0.5)
    assert status.stdout.strip() == f"(1, {{'{name}': 4}})", status
    assert status.returncode == 0
    unknown = run_cli("func_amqp.cli.func", name, "call", "-s", "no-such-job", env=func_env)
    assert unknown.stdout.strip() == "(2, 0)" and unknown.returncode == 1


def test_func_amqp_jobs_commands(minions: MinionFactory, prefix: str, func_env: dict[str, str]) -> None:
    pool = f"{prefix}-pool"
    member = minions.start(f"{prefix}-1", conf=f"pools = {pool}:1\ntags = arch=x86_64\n")
    admin = "func_amqp.cli.admin"
    done = run_cli(admin, "jobs", "submit", "--pool", pool, "--tag", "arch=x86_64", "--wait", "--progress", "none", "test", "echo", "hi", env=func_env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0].removeprefix("JOB_ID: ").strip("'")
    assert done.stdout.splitlines()[1] == f"('{member.name}', 'hi')"
    listed = run_cli(admin, "jobs", "list", env=func_env)
    assert job_id in listed.stdout and "finished" in listed.stdout
    shown = run_cli(admin, "jobs", "show", job_id, env=func_env)
    assert f"{member.name}: succeeded" in shown.stdout and "result: 'hi'" in shown.stdout
    again = run_cli(admin, "jobs", "cancel", job_id, env=func_env)
    assert f"{member.name}: already succeeded" in again.stdout
    attached = run_cli(admin, "jobs", "attach", "--progress", "none", job_id, env=func_env)
    assert attached.returncode == 0 and f"('{member.name}', 'hi')" in attached.stdout
    assert run_cli(admin, "jobs", "forget", job_id, env=func_env).returncode == 0
    gone = run_cli(admin, "jobs", "show", job_id, env=func_env)
    assert gone.returncode == 1 and "no job" in gone.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pool", "Bad Pool", "test", "ping"], "invalid pool or tag"),
        (["--pool", "p", "--tag", "arch", "test", "ping"], "NAME=VALUE"),
        (["--pool", "p", "--tag", "a=b", "--tag", "c=d", "--tag", "e=f", "--tag", "g=h", "--tag", "i=j", "test", "ping"], "at most 4 tags"),
        (["--spec", "x", "--tag", "a=b", "test", "ping"], "--tag goes with --pool"),
        (["--pool", "p", "--ttl", "0", "test", "ping"], "greater than 0"),
    ],
)
def test_jobs_submit_refuses_bad_values(argv: list[str], message: str, func_env: dict[str, str]) -> None:
    result = run_cli("func_amqp.cli.admin", "jobs", "submit", *argv, env=func_env)
    assert result.returncode in (1, 2)
    assert message in result.stderr, result.stderr


def test_cancel_a_job_queued_for_a_stopped_minion(minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minions.start(name).stop()
    job_id = asyncio.run(_submit(name, "test", "echo", "never"))
    answers = asyncio.run(_cancel(job_id))
    assert answers == {name: "a cancel waits for it in its queue"}
    restarted = minions.start(name, enrolled=False)
    code, results = asyncio.run(_wait(job_id))
    assert code == JOB_ID_FINISHED and "cancelled" in results[name][2], results
    assert asyncio.run(_record(job_id))["minions"][name]["state"] == "cancelled"  # type: ignore[index]
    assert _runs(restarted, "test.echo") == 0


SLOW_STEPS = """
import time
from func_amqp.minion.modules.func_module import FuncModule
from func_amqp.minion import progress

class Slow(FuncModule):
    def steps(self, n):
        for i in range(int(n)):
            progress.report("stepping", i + 1, int(n))
            progress.log(f"step {i + 1}")
            time.sleep(1)
        return int(n)
"""


def test_attach_shows_a_running_jobs_progress_and_logs(minions: MinionFactory, prefix: str, tmp_path: Path, func_env: dict[str, str]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "slow.py").write_text(SLOW_STEPS)
    name = f"{prefix}-1"
    minions.start(name, conf=f"module_dirs = {site}\n")
    job_id = asyncio.run(_submit(name, "slow", "steps", 6))
    _wait_for_state(job_id, name, {"started", "progress"})
    attached = run_cli("func_amqp.cli.admin", "jobs", "attach", "--progress", "plain", "--logs", job_id, env=func_env)
    assert attached.returncode == 0, attached.stderr
    assert attached.stdout.strip() == f"('{name}', 6)"
    assert f"{name}| step 6" in attached.stderr
    assert f"{name}: stepping [6/6]" in attached.stderr
    record = asyncio.run(_record(job_id))
    assert record is not None and record["minions"][name]["progress"]["phase"] == "stepping"


def test_the_private_broker_lets_a_job_hold_its_delivery_for_a_week(broker: Any) -> None:
    """An hour-long build acknowledged at its end must not trip the consumer timeout."""
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None
    status, output = broker._ctl_run(ctl, ["eval", "application:get_env(rabbit, consumer_timeout)."], 30)
    assert status == 0 and output == f"{{ok,{CONSUMER_TIMEOUT_MS}}}", output
    assert CONSUMER_TIMEOUT_MS >= 7 * 24 * 3600 * 1000


def _signed_job(ol: AsyncOverlord, jobs: JobClient, name: str, *, sign: bool = True, argument: str = "x") -> tuple[str, Any]:
    """A ``test.echo`` job for ``name``, recorded in the store but not sent: tests send
    it their own way (twice, unsigned, to the wrong queue)."""
    job_id = new_job_id(name, "test", "echo")
    record = new_record(job_id, jobs.owner, name, "test", "echo", [argument], 60.0, None, None, [name])
    jobs.store.put(record)
    request = MethodRequest("test", "echo", [argument], record["expires"], name, JobTicket(job_id, jobs.owner))
    if sign:
        return job_id, ol.rpc.signed(request, f"{job_id}:{name}", name)
    return job_id, codec.encode(request, correlation_id=f"{job_id}:{name}", target=name)


def test_a_job_delivered_twice_runs_once(minions: MinionFactory, prefix: str) -> None:
    """The broker delivers at least once: a second copy is answered from the ledger."""
    name = f"{prefix}-1"
    minion = minions.start(name)

    async def submit_twice() -> str:
        async with AsyncOverlord(name, timeout=10) as ol:
            jobs = JobClient(ol)
            await ol.rpc.transport.open_job_events(jobs.owner, None)
            job_id, env = _signed_job(ol, jobs, name, argument="once")
            for _ in range(2):
                await ol.rpc.transport.submit_job((names.JOBS_EXCHANGE, name), env)
            return job_id

    job_id = asyncio.run(submit_twice())
    assert asyncio.run(_wait(job_id)) == (JOB_ID_FINISHED, {name: "once"})
    deadline = time.time() + 10
    while len([line for line in minion.audit_lines() if "method=test.echo " in line]) < 1 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the second copy has been handled by now
    assert _runs(minion, "test.echo") == 1


def test_an_unsigned_job_is_refused_without_a_word_about_the_job(minions: MinionFactory, prefix: str) -> None:
    """Anyone on the broker can name a job id: a minion reports only on jobs it can
    prove came from their owner, so a forgery cannot mark someone's job failed."""
    name = f"{prefix}-1"
    minion = minions.start(name)

    async def forge() -> str:
        async with AsyncOverlord(name, timeout=10) as ol:
            jobs = JobClient(ol)
            await ol.rpc.transport.open_job_events(jobs.owner, None)
            job_id, env = _signed_job(ol, jobs, name, sign=False)
            await ol.rpc.transport.submit_job((names.JOBS_EXCHANGE, name), env)
            return job_id

    job_id = asyncio.run(forge())
    deadline = time.time() + 10
    while "refused a job message (UNSIGNED)" not in minion.output() and time.time() < deadline:
        time.sleep(0.2)
    assert "refused a job message (UNSIGNED)" in minion.output()
    assert asyncio.run(_wait(job_id, timeout=2)) == (JOB_ID_RUNNING, {})
    assert _runs(minion, "test.echo") == 0


def test_a_job_replayed_as_an_interactive_call_is_refused(minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minion = minions.start(name)

    async def replay() -> Any:
        async with AsyncOverlord(name, timeout=10) as ol:
            jobs = JobClient(ol)
            _, env = _signed_job(ol, jobs, name)
            request = codec.decode(env, 1 << 20)
            return await ol.rpc.request(name, request, 10)

    reply = asyncio.run(replay())
    assert reply.code == Code.BAD_REQUEST and "job queue" in reply.text
    assert _runs(minion, "test.echo") == 0


def test_a_job_running_through_a_broker_restart_ends_once(broker: Any, minions: MinionFactory, prefix: str) -> None:
    name = f"{prefix}-1"
    minion = minions.start(name)
    job_id = asyncio.run(_submit(name, "test", "sleep", 4))
    _wait_for_state(job_id, name, {"started"})
    broker.stop()
    broker.start()
    code, results = asyncio.run(_wait(job_id, timeout=90))
    assert code == JOB_ID_FINISHED and isinstance(results[name], float), results
    time.sleep(2.0)  # the redelivered copy, if any, has been handled by now
    assert _runs(minion, "test.sleep") == 1
    assert asyncio.run(_wait(asyncio.run(_submit(name, "test", "ping")))) == (JOB_ID_FINISHED, {name: 1})


def test_a_member_runs_as_many_pool_jobs_at_once_as_it_has_slots(minions: MinionFactory, prefix: str) -> None:
    pool = f"{prefix}-pool"
    member = minions.start(f"{prefix}-1", conf=f"pools = {pool}:3\n")
    job_ids = [asyncio.run(_pool_submit(pool, "test", "sleep", 2)) for _ in range(3)]
    for job_id in job_ids:
        code, _ = asyncio.run(_wait(job_id))
        assert code == JOB_ID_FINISHED
    records = [asyncio.run(_record(j)) for j in job_ids]
    finished = [r["minions"][member.name]["at"] for r in records]  # type: ignore[index]
    # sleeps of 2 s that overlap all end within about 2 s of each other
    assert max(finished) - min(finished) < 1.5, finished


def test_a_pool_job_cancelled_while_every_member_was_down_never_starts(minions: MinionFactory, prefix: str) -> None:
    pool = f"{prefix}-pool"
    conf = f"pools = {pool}:1\n"
    minions.start(f"{prefix}-1", conf=conf).stop()  # the pool's queues exist; nobody serves them
    job_id = asyncio.run(_pool_submit(pool, "test", "echo", "never"))
    answers = asyncio.run(_cancel(job_id))
    assert answers == {f"@{pool}": "every member of the pool will refuse to start it"}
    member = minions.start(f"{prefix}-1", conf=conf, enrolled=False)
    code, results = asyncio.run(_wait(job_id))
    assert code == JOB_ID_FINISHED and "cancelled" in results[member.name][2], results
    assert _runs(member, "test.echo") == 0
