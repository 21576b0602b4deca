"""The minion service and the overlord core over the in-memory transport."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest

from func_amqp import utils
from func_amqp.config import OverlordConfig
from func_amqp.errors import Code
from func_amqp.minion import process, progress
from func_amqp.minion.loader import load_modules
from func_amqp.minion.modules.func_module import FuncModule
from func_amqp.minion.server import AmqpInterface
from func_amqp.minion.service import MinionService, ServiceSettings
from func_amqp.overlord.caller import AsyncOverlord, CallEvent
from func_amqp.protocol import codec, names
from func_amqp.protocol.envelope import Envelope
from func_amqp.protocol.messages import ExceptionResponse, MethodRequest, MethodResponse, Opcode, SubscribeRequest
from func_amqp.transport.base import Delivery
from func_amqp.transport.memory import MemoryTransport, hub

CONCURRENCY = 4
CALLED: list[str] = []
BARRIER = threading.Barrier(CONCURRENCY, timeout=10)


class Probe(FuncModule):
    """Methods whose effects the tests can observe."""

    def record(self, tag: str) -> str:
        CALLED.append(tag)
        return tag

    def meet(self) -> bool:
        """Returns only when CONCURRENCY calls are inside at once."""
        BARRIER.wait()
        return True

    def unserializable(self) -> object:
        return {1, 2}

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def quit(self) -> None:
        raise SystemExit(3)

    def not_json(self) -> float:
        return float("nan")

    def odd_progress(self) -> str:
        progress.report("odd", current=float("nan"), total=object())  # type: ignore[arg-type]
        time.sleep(0.3)  # long enough for the indication to be flushed
        return "fine"


class Chatty(FuncModule):
    """Reports progress and logs; waits to be cancelled."""

    def steps(self, n: int) -> str:
        for i in range(n):
            progress.report("step", i + 1, n, f"step {i + 1}")
            progress.log(f"line {i + 1}")
        return "done"

    def until_cancelled(self) -> str:
        progress.report("waiting")
        for _ in range(200):
            if progress.cancelled():
                return "noticed"
            time.sleep(0.02)
        return "never cancelled"

    def child(self) -> int:
        progress.report("running child")
        result = process.run(["sleep", "30"])
        return result.returncode

    def stubborn(self) -> str:
        time.sleep(1.5)
        return "too late"


class BrokenRegistration(FuncModule):
    def anything(self) -> int:
        return 1

    def register_method_args(self) -> dict:
        raise RuntimeError("registration blew up")


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
async def minion(url: str) -> AsyncIterator[MinionService]:
    CALLED.clear()
    BARRIER.reset()
    transport = MemoryTransport(url)
    await transport.connect()
    modules = dict(load_modules())
    modules["probe"] = Probe()
    modules["broken"] = BrokenRegistration()
    modules["chatty"] = Chatty()
    service = MinionService(
        transport,
        AmqpInterface(modules),
        ServiceSettings("m1", max_concurrent_calls=CONCURRENCY, heartbeat_interval=60, max_message_bytes=4096),
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop(grace=5)
        await transport.close()


@pytest.fixture
async def overlord(url: str, minion: MinionService, tmp_path) -> AsyncIterator[AsyncOverlord]:
    transport = MemoryTransport(url)
    await transport.connect()
    async with AsyncOverlord("m1", transport=transport, config=OverlordConfig(call_timeout=10), config_dir=tmp_path) as ol:
        yield ol
    await transport.close()


class RawClient:
    """Sends hand-made envelopes and collects what comes back."""

    def __init__(self, url: str) -> None:
        self.transport = MemoryTransport(url)
        self.replies: asyncio.Queue[Envelope] = asyncio.Queue()
        self.reply_to = ""

    async def start(self) -> "RawClient":
        await self.transport.connect()

        async def on_reply(delivery: Delivery) -> None:
            await self.replies.put(delivery.envelope)

        self.reply_to = await self.transport.open_reply_queue(on_reply)
        return self

    async def send(self, env: Envelope, target: str = "m1") -> None:
        await self.transport.send(target, env)

    async def reply(self, timeout: float = 5) -> Envelope:
        return await asyncio.wait_for(self.replies.get(), timeout)


@pytest.fixture
async def raw(url: str, minion: MinionService) -> AsyncIterator[RawClient]:
    client = await RawClient(url).start()
    yield client
    await client.transport.close()


def request_env(raw: RawClient, module: str, method: str, args: list, deadline: float | None = None, cid: str = "c1") -> Envelope:
    msg = MethodRequest(module, method, args, deadline or time.time() + 10, "m1")
    return codec.encode(msg, correlation_id=cid, reply_to=raw.reply_to)


def error_code(env: Envelope) -> int:
    reply = codec.decode(env, 1 << 20)
    assert isinstance(reply, ExceptionResponse), reply
    return reply.code


# --- calls ------------------------------------------------------------------------------


async def test_results_and_errors(overlord: AsyncOverlord) -> None:
    assert await overlord.test.ping() == {"m1": 1}
    assert await overlord.test.add(1, 2) == {"m1": 3}
    assert await overlord.test.bigint() == {"m1": 2**32}
    assert await overlord.test.echo([1, (2, 3), {"a": b"\x00"}]) == {"m1": [1, [2, 3], {"a": b"\x00"}]}
    err = (await overlord.test.explode())["m1"]
    assert utils.is_error(err)
    assert err[1] == "builtins.Exception" and err[2] == "khhhhhhaaaaaan!!!!!!"
    assert "modules/test.py" in err[3] and "service.py" not in err[3]


async def test_unknown_module_and_method(overlord: AsyncOverlord) -> None:
    err = (await overlord.call("nosuch", "ping"))["m1"]
    assert err[1] == "func_amqp.errors.ModuleNotFoundException"
    err = (await overlord.call("test", "nosuch"))["m1"]
    assert err[1] == "func_amqp.errors.InvalidMethodException"


async def test_bad_arguments_refused_before_running(overlord: AsyncOverlord) -> None:
    err = (await overlord.call("probe", "record"))["m1"]
    assert err[1] == "func_amqp.errors.ArgumentError"
    assert "record" in err[2]
    assert CALLED == []


async def test_calls_run_concurrently(overlord: AsyncOverlord) -> None:
    results = await asyncio.gather(*(overlord.probe.meet() for _ in range(CONCURRENCY)))
    assert results == [{"m1": True}] * CONCURRENCY


async def test_unserializable_result(overlord: AsyncOverlord) -> None:
    err = (await overlord.probe.unserializable())["m1"]
    assert utils.is_error(err)
    assert "RESULT_NOT_SERIALIZABLE" in err[1]


async def test_timeout_returns_on_time(overlord: AsyncOverlord) -> None:
    start = time.monotonic()
    err = await overlord.call("probe", "slow", 3, timeout=0.5)
    elapsed = time.monotonic() - start
    assert err["m1"][1] == "func_amqp.errors.MinionTimeout"
    assert elapsed < 2.5


async def test_unknown_minion_fails_fast(url: str, minion: MinionService, tmp_path) -> None:
    transport = MemoryTransport(url)
    await transport.connect()
    async with AsyncOverlord("m1;ghost", transport=transport, config=OverlordConfig(), config_dir=tmp_path) as ol:
        results = await ol.test.ping()
    await transport.close()
    assert results["m1"] == 1
    assert results["ghost"][1] == "func_amqp.errors.MinionUnreachable"


async def test_introspection(overlord: AsyncOverlord) -> None:
    assert "add" in (await overlord.method_args("test"))
    modules = await overlord.rpc.list_modules("m1", 5)
    assert {"test", "command", "probe"} <= set(modules)
    assert (await overlord.call("system", "list_modules"))["m1"] == modules


async def test_locate_and_directory(overlord: AsyncOverlord) -> None:
    found = await overlord.locate(0.5)
    assert set(found) == {"m1"}
    assert found["m1"].protocol == names.PROTOCOL_VERSION
    assert "m1" in await overlord.known_minions()


# --- untrusted input ----------------------------------------------------------------------


async def test_expired_request_is_not_started(raw: RawClient) -> None:
    await raw.send(request_env(raw, "probe", "record", ["late"], deadline=time.time() - 1))
    # the twin drops it like a TTL would; a deadline between queue and start is refused
    with pytest.raises(asyncio.TimeoutError):
        await raw.reply(timeout=0.3)
    assert CALLED == []


async def test_expired_header_is_answered(raw: RawClient, minion: MinionService) -> None:
    env = request_env(raw, "probe", "record", ["late"])
    env.headers[names.H_DEADLINE] = int((time.time() - 1) * 1000)
    env.deadline = None  # the queue does not drop it; the minion must
    await raw.send(env)
    assert error_code(await raw.reply()) == Code.EXPIRED
    assert CALLED == []


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda e: setattr(e, "body", b"\xff\xfe"), Code.BAD_REQUEST),
        (lambda e: setattr(e, "body", b"{not json"), Code.BAD_REQUEST),
        (lambda e: setattr(e, "body", b"[]"), Code.BAD_REQUEST),
        (lambda e: setattr(e, "body", b"x" * 5000), Code.MESSAGE_TOO_LARGE),
        (lambda e: e.headers.update({names.H_OPCODE: "_bogus"}), Code.UNKNOWN_OPCODE),
        (lambda e: e.headers.update({names.H_OPCODE: "_method_response"}), Code.UNKNOWN_OPCODE),
        (lambda e: e.headers.update({names.H_PROTOCOL: 99}), Code.UNSUPPORTED_VERSION),
        (lambda e: setattr(e, "content_type", "application/x-pickle"), Code.BAD_REQUEST),
    ],
)
async def test_malformed_with_reply_address_is_answered(raw: RawClient, mutate, code: Code) -> None:
    env = request_env(raw, "probe", "record", ["x"])
    mutate(env)
    await raw.send(env)
    assert error_code(await raw.reply()) == code
    assert CALLED == []


async def test_malformed_without_reply_address_is_dead_lettered(url: str, raw: RawClient) -> None:
    env = Envelope(body=b"garbage", headers={names.H_OPCODE: "_method_request"})
    await raw.send(env)
    for _ in range(50):
        if hub(url).dead_letters:
            break
        await asyncio.sleep(0.01)
    assert [d.body for d in hub(url).dead_letters] == [b"garbage"]


async def test_flood_of_garbage_then_still_serving(raw: RawClient, overlord: AsyncOverlord) -> None:
    for i in range(300):
        env = Envelope(body=bytes([i % 256]) * (i % 7), headers={names.H_OPCODE: ["_method_request", "x", ""][i % 3]})
        if i % 2:
            env.reply_to = raw.reply_to
        await raw.send(env)
    assert await overlord.test.ping() == {"m1": 1}


# --- shutdown ------------------------------------------------------------------------------


async def test_stop_lets_running_calls_finish(url: str, minion: MinionService, raw: RawClient) -> None:
    await raw.send(request_env(raw, "probe", "slow", [0.3]))
    await asyncio.sleep(0.1)
    await minion.stop(grace=5)
    reply = codec.decode(await raw.reply(), 1 << 20)
    assert isinstance(reply, MethodResponse) and reply.result == 0.3
    with pytest.raises(Exception, match="not connected"):
        await raw.send(request_env(raw, "test", "ping", []))


async def test_module_calling_sys_exit_does_not_stop_the_minion(overlord: AsyncOverlord) -> None:
    err = (await overlord.probe.quit())["m1"]
    assert err[1] == "builtins.SystemExit"
    assert await overlord.test.ping() == {"m1": 1}


async def test_non_finite_result_cannot_travel(overlord: AsyncOverlord) -> None:
    err = (await overlord.probe.not_json())["m1"]
    assert "RESULT_NOT_SERIALIZABLE" in err[1]


async def test_broken_registration_is_answered_not_timed_out(overlord: AsyncOverlord) -> None:
    start = time.monotonic()
    with pytest.raises(Exception, match="registration blew up"):
        await overlord.method_args("broken", timeout=5)
    assert time.monotonic() - start < 4


async def test_busy_minion_still_answers_discovery(overlord: AsyncOverlord) -> None:
    busy = [asyncio.ensure_future(overlord.call("probe", "slow", 1)) for _ in range(CONCURRENCY * 2)]
    await asyncio.sleep(0.1)
    assert set(await overlord.locate(0.5)) == {"m1"}
    await asyncio.gather(*busy)


# --- progress, logs, cancel, follow ------------------------------------------------------


async def test_progress_and_logs_reach_the_caller_in_order(overlord: AsyncOverlord) -> None:
    events: list[CallEvent] = []
    result = await overlord.call("chatty", "steps", 50, on_event=events.append)
    assert result == {"m1": "done"}
    lines = [line for e in events for line in e.lines]
    assert lines == [f"line {i}" for i in range(1, 51)]
    phases = [e.progress for e in events if e.progress]
    assert phases and phases[-1].current == 50 and phases[-1].total == 50  # latest wins
    assert all(e.minion == "m1" for e in events)


async def test_stream_yields_events_then_result(overlord: AsyncOverlord) -> None:
    seen = [event async for event in overlord.stream("chatty", "steps", 3)]
    assert seen[-1].done and seen[-1].result == "done"
    assert any(e.lines for e in seen[:-1])


async def test_cancel_a_cooperative_call(overlord: AsyncOverlord) -> None:
    task = asyncio.ensure_future(overlord.call("chatty", "until_cancelled", call_id="c1"))
    await asyncio.sleep(0.2)
    assert await overlord.cancel("c1") == {"m1": True}
    assert await task == {"m1": "noticed"}
    assert await overlord.cancel("c1") == {"m1": False}  # finished: nothing to cancel


async def test_cancel_ends_the_child_process_group(overlord: AsyncOverlord) -> None:
    task = asyncio.ensure_future(overlord.call("chatty", "child", call_id="c2"))
    await asyncio.sleep(0.5)
    start = time.monotonic()
    assert await overlord.cancel("c2") == {"m1": True}
    result = (await task)["m1"]
    assert time.monotonic() - start < 5
    assert result == -2  # SIGINT reached the child: its group was signalled


async def test_cancel_of_a_method_that_ignores_it_is_answered(overlord: AsyncOverlord, monkeypatch) -> None:
    from func_amqp.minion import service

    monkeypatch.setattr(service, "CANCEL_GRACE", 0.3)
    task = asyncio.ensure_future(overlord.call("chatty", "stubborn", call_id="c3"))
    await asyncio.sleep(0.2)
    await overlord.cancel("c3")
    err = (await task)["m1"]
    assert err[1].endswith("CANCELLED") and "did not stop" in err[2]


async def test_follow_a_running_call(overlord: AsyncOverlord) -> None:
    task = asyncio.ensure_future(overlord.call("chatty", "until_cancelled", call_id="c4"))
    await asyncio.sleep(0.2)
    followed: list[CallEvent] = []
    follower = asyncio.ensure_future(overlord.follow("c4", on_event=followed.append))
    await asyncio.sleep(0.2)
    await overlord.cancel("c4")
    assert await follower == {"m1": "noticed"} == await task
    assert followed and followed[0].progress and followed[0].progress.phase == "waiting"


async def test_follow_unknown_call_is_refused(overlord: AsyncOverlord) -> None:
    err = (await overlord.follow("nope"))["m1"]
    assert err[1].endswith("RemoteError.NO_SUCH_CALL") and "no call 'nope:m1' is running" in err[2]


async def test_follow_a_call_that_just_finished_gets_its_result(overlord: AsyncOverlord) -> None:
    """A caller whose reply was lost (its reply address away in a broker restart)
    follows the call again and gets the kept reply."""
    assert await overlord.call("test", "add", 2, 3, call_id="done1") == {"m1": 5}
    assert await overlord.follow("done1") == {"m1": 5}
    failed = (await overlord.call("test", "explode", call_id="done2"))["m1"]
    assert (await overlord.follow("done2"))["m1"][:3] == failed[:3]


async def test_a_follow_naming_another_request_finds_no_call(overlord: AsyncOverlord) -> None:
    """Call ids may be reused: a follow that names the request it means gets nothing
    from a call of that id that another request started."""
    assert await overlord.call("test", "add", 2, 3, call_id="reused") == {"m1": 5}
    follow = SubscribeRequest("reused:m1", time.time() + 5, "some-other-request")
    refused = await overlord.rpc.request("m1", follow, 5)
    assert isinstance(refused, ExceptionResponse) and refused.code == Code.NO_SUCH_CALL
    assert await overlord.follow("reused") == {"m1": 5}  # without a request id: the kept reply


async def test_a_reply_lost_while_the_reply_address_was_away_is_asked_for_again(
    minion: MinionService, overlord: AsyncOverlord, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over AMQP 1.0 a reply sent before the caller's reply link is back is lost; once
    it is back, the caller follows its pending calls and gets the kept reply."""
    lost: list[str | None] = []
    deliver = minion.transport.reply

    async def lossy(reply_to: str, env: Envelope) -> None:
        if not lost:  # the broker took it, and no queue was there to take it
            lost.append(env.correlation_id)
            return
        await deliver(reply_to, env)

    monkeypatch.setattr(minion.transport, "reply", lossy)
    call = asyncio.ensure_future(overlord.call("test", "add", 2, 3))
    while not lost:
        await asyncio.sleep(0.01)
    assert not call.done()
    transport = overlord.rpc.transport
    assert isinstance(transport, MemoryTransport)
    transport.reattach()
    assert await asyncio.wait_for(call, 5) == {"m1": 5}


async def test_a_follow_whose_final_reply_was_lost_asks_again(
    minion: MinionService, overlord: AsyncOverlord, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = asyncio.ensure_future(overlord.call("chatty", "until_cancelled", call_id="w1"))
    await asyncio.sleep(0.2)
    follower = asyncio.ensure_future(overlord.follow("w1"))
    await asyncio.sleep(0.2)
    lost: list[str | None] = []
    deliver = minion.transport.reply

    async def lossy(reply_to: str, env: Envelope) -> None:
        final = env.headers.get(names.H_OPCODE) == Opcode.METHOD_RESPONSE.value and b"noticed" in env.body
        if final and env.correlation_id != "w1:m1" and not lost:  # the follower's copy
            lost.append(env.correlation_id)
            return
        await deliver(reply_to, env)

    monkeypatch.setattr(minion.transport, "reply", lossy)
    assert await overlord.cancel("w1") == {"m1": True}
    assert await call == {"m1": "noticed"}
    assert lost and not follower.done()
    transport = overlord.rpc.transport
    assert isinstance(transport, MemoryTransport)
    transport.reattach()
    assert await asyncio.wait_for(follower, 5) == {"m1": "noticed"}


async def test_a_request_sent_to_a_reply_address_is_no_reply(url: str, minion: MinionService, overlord: AsyncOverlord) -> None:
    """Anyone on the broker may publish to a reply address: a request arriving there
    under a pending call's correlation id fails that call as malformed, it is no result."""
    call = asyncio.ensure_future(overlord.call("chatty", "until_cancelled", call_id="r1"))
    await asyncio.sleep(0.2)
    stranger = MemoryTransport(url)
    await stranger.connect()
    bogus = codec.encode(MethodRequest("test", "ping", [], time.time() + 5, "m1"), correlation_id="r1:m1")
    reply_to = overlord.rpc._reply_to
    assert reply_to is not None
    await stranger.reply(reply_to, bogus)
    err = (await asyncio.wait_for(call, 5))["m1"]
    assert err[1].endswith("RemoteError.UNKNOWN_OPCODE") and "is no reply" in err[2]
    assert await overlord.cancel("r1") == {"m1": True}
    assert await overlord.follow("r1") == {"m1": "noticed"}  # the call itself went on
    await stranger.close()


async def test_a_request_lost_before_the_minion_took_it_times_out_as_usual(
    minion: MinionService, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minion knows no such call: asking again changes nothing, the call times out."""
    transport = MemoryTransport(url)
    await transport.connect()
    send = transport.send
    lost: list[str | None] = []

    async def lossy(target: str, env: Envelope, *, control: bool = False) -> None:
        if not control and not lost:
            lost.append(env.correlation_id)
            return
        await send(target, env, control=control)

    monkeypatch.setattr(transport, "send", lossy)
    async with AsyncOverlord("m1", transport=transport, config=OverlordConfig(call_timeout=1), config_dir=tmp_path) as ol:
        call = asyncio.ensure_future(ol.call("test", "add", 2, 3))
        while not lost:
            await asyncio.sleep(0.01)
        transport.reattach()
        result = (await asyncio.wait_for(call, 5))["m1"]
    await transport.close()
    assert result[:2] == ["REMOTE_ERROR", "func_amqp.errors.MinionTimeout"]


async def test_an_agent_that_is_no_minion_stays_out_of_discovery(url: str, overlord: AsyncOverlord) -> None:
    """The certmaster serves requests by name, but '*' must not name it."""
    transport = MemoryTransport(url)
    await transport.connect()
    agent = MinionService(transport, AmqpInterface({}), ServiceSettings("certmaster", discoverable=False))
    await agent.start()
    try:
        assert set(await overlord.locate(0.3)) == {"m1"}
        assert (await overlord.rpc.list_modules("certmaster", 5)) == []  # still reachable by name
    finally:
        await agent.stop(grace=1)
        await transport.close()


async def test_cancel_reaches_a_minion_whose_slots_are_all_taken(overlord: AsyncOverlord) -> None:
    """Control requests take their own route: queued calls cannot hold them up."""
    running = [asyncio.ensure_future(overlord.call("chatty", "until_cancelled", call_id=f"full{i}")) for i in range(CONCURRENCY)]
    queued = asyncio.ensure_future(overlord.call("probe", "slow", 0.1))
    await asyncio.sleep(0.3)
    assert await overlord.cancel("full0", timeout=2) == {"m1": True}
    assert (await running[0]) == {"m1": "noticed"}
    for i in range(1, CONCURRENCY):
        await overlord.cancel(f"full{i}", timeout=2)
    await asyncio.gather(*running[1:], queued)


async def test_a_call_waiting_for_a_slot_at_shutdown_is_refused(url: str, minion: MinionService, raw: RawClient) -> None:
    for i in range(CONCURRENCY):
        await raw.send(request_env(raw, "probe", "slow", [0.5], cid=f"busy{i}"))
    waiting = request_env(raw, "probe", "record", ["late"], cid="waiting")
    await raw.send(waiting)
    await asyncio.sleep(0.1)
    await minion.stop(grace=5)
    replies = [codec.decode(await raw.reply(), 1 << 20) for _ in range(CONCURRENCY + 1)]
    assert any(isinstance(r, ExceptionResponse) and r.code == Code.SHUTTING_DOWN for r in replies), replies
    assert "late" not in CALLED


@pytest.mark.parametrize("running", [True, False], ids=["running", "just-finished"])
async def test_a_call_id_in_use_is_refused_and_runs_once(raw: RawClient, running: bool) -> None:
    """A second request under a call's id (a copy, or a caller's retry) never runs it again."""
    first = request_env(raw, "probe", "slow", [0.3] if running else [0], cid="dup")
    await raw.send(first)
    if not running:
        assert isinstance(codec.decode(await raw.reply(), 1 << 20), MethodResponse)
    await raw.send(request_env(raw, "probe", "record", ["again"], cid="dup"))
    refusal = await raw.reply()
    assert error_code(refusal) == Code.BAD_REQUEST
    assert ("running call" if running else "just finished") in codec.decode(refusal, 1 << 20).text
    assert "again" not in CALLED
    if running:
        assert isinstance(codec.decode(await raw.reply(), 1 << 20), MethodResponse)


async def test_progress_values_that_cannot_travel_do_not_fail_the_call(overlord: AsyncOverlord) -> None:
    assert await overlord.call("probe", "odd_progress") == {"m1": "fine"}
