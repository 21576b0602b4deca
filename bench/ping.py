"""``test.ping`` round trips through func-amqp, against bare aio-pika on the same broker.

One run starts everything it measures and stops it again: a private RabbitMQ node
(unless ``--url`` names a broker), one ``funcd`` process serving ``bench-minion`` with
a certificate from a CA the benchmark creates (message security as in any real
deployment: the first request signed, the rest and the replies MAC'd with the pair key
the two certificates agree, docs/protocol.md §13), a second ``funcd`` serving ``bench-open`` with
``require_signatures = false`` (the RPC core without message security), and two plain
aio-pika servers in their own processes (``bench/bare_server.py``), one whose replies
use publisher confirms (aio-pika's default channel) and one without. Both minions
write their audit log to a file in the run's temporary directory, so signatures are
the only difference between them. Then:

- func-amqp: the synchronous ``Overlord(..., noglobs=True).test.ping()`` one call at a
  time, the asyncio ``AsyncOverlord`` one call at a time, and ``AsyncOverlord`` with
  ``--window`` calls in flight;
- func-amqp unsigned: an ``AsyncOverlord`` with no signer and no trust store calling
  ``bench-open``, one call at a time and with ``--window`` calls in flight: requests
  go unsigned and replies are not verified;
- bare aio-pika: a client with its own exclusive reply queue, correlation ids and one
  future per call, one call at a time and with ``--window`` calls in flight.

Every scenario starts with warm-up calls that are not counted. The timed calls are then
made in ``--slices`` slices, the scenarios taking turns slice by slice (in reverse order
every other slice), so a burst of unrelated load on the machine hits all of them alike
instead of spoiling one. Reported: calls/s over the timed calls, latency percentiles of
each call, the spread of the headline ratio across slices, the CPU time each process
spent per call (client, server, and the broker when this run started it), how many cores
other work kept busy meanwhile, and the bytes the client put on the wire per call.

    python bench/ping.py [--calls 2000] [--concurrent-calls 5000] [--window 64]
                         [--url amqp://...] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import urllib.parse
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aio_pika  # noqa: E402
from aio_pika.abc import AbstractIncomingMessage  # noqa: E402

from func_amqp.broker.node import PrivateBroker  # noqa: E402
from func_amqp.config import (  # noqa: E402
    ENV_BROKER_URL,
    ENV_CONFIG_DIR,
    ENV_STATE_DIR,
    MinionConfig,
    OverlordConfig,
    Paths,
)
from func_amqp.errors import FuncAmqpError  # noqa: E402
from func_amqp.overlord.caller import AsyncOverlord  # noqa: E402
from func_amqp.overlord.client import Overlord  # noqa: E402
from func_amqp.overlord.rpc import RpcClient  # noqa: E402
from func_amqp.overlord.session import Session  # noqa: E402
from func_amqp.protocol import codec  # noqa: E402
from func_amqp.protocol.messages import MethodRequest, MethodResponse  # noqa: E402
from func_amqp.broker.node import amqp10_url  # noqa: E402
from func_amqp.transport import transport_for_url  # noqa: E402

MINION_NAME = "bench-minion"
OPEN_MINION_NAME = "bench-open"
"""The minion with ``require_signatures = false``: the RPC core without message security."""
A10_MINION_NAME = "bench-amqp10"
"""The signed minion on the AMQP 1.0 transport (the node's AMQP 1.0 plugin)."""
BARE_SERVER = REPO / "bench" / "bare_server.py"
AIM = 0.70
"""func-amqp concurrent throughput as a share of bare aio-pika's: the project's aim, set
for the RPC core before messages were signed."""

BROKER_START_TIMEOUT = 120.0
BROKER_STOP_TIMEOUT = 60.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CALL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
PHASE_BASE_SECONDS = 30.0
PHASE_SECONDS_PER_CALL = 0.05
"""A slice may take 30 s plus 50 ms a call (20 calls/s) before the run is abandoned."""
POLL_INTERVAL = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark cannot go on: a process failed, a call failed, a bound was hit."""


# --- processes ------------------------------------------------------------------------


def process_cpu(pid: int | None) -> float | None:
    """User plus system CPU seconds of ``pid`` (all threads), from /proc."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float | None:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


PROCESSES = ("client", "server", "broker")
"""The processes whose CPU time a call is charged: the other reading is the whole machine."""

_SS_SENT = re.compile(r"\bbytes_sent:(\d+)")
_SS_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


def socket_bytes(pid: int, port: int) -> tuple[int, int] | None:
    """Bytes ``pid`` has sent to and received from ``port`` on its open TCP connections.

    Read with ``ss`` (iproute2): exact bytes on the wire, AMQP framing, confirms and
    signatures included, without touching the code under test. None without ``ss``.
    """
    try:
        out = subprocess.run(
            ["ss", "-tinpH", "state", "established", "dport", "=", f":{port}"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    sent = received = 0
    found = mine = False
    for line in out.splitlines():
        if not line[:1].isspace():
            mine = f"pid={pid}," in line
            found = found or mine
        elif mine:
            if m := _SS_SENT.search(line):
                sent += int(m.group(1))
            if m := _SS_RECEIVED.search(line):
                received += int(m.group(1))
    return (sent, received) if found else None


class Child:
    """A server process the benchmark starts, waits for, and always stops."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, ready: str) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the process says ``ready`` in its output; its exit or silence is an error."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            if self.ready in self.output():
                return
            time.sleep(POLL_INTERVAL)
        raise BenchError(f"{self.name} not ready within {timeout:g} s:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


# --- figures --------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Sample:
    """The timed part of one scenario: per-call latencies, wall time, CPU per process."""

    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)
    wire: tuple[int, int] | None = (0, 0)
    slices: list[float] = field(default_factory=list)

    def add(self, other: "Sample") -> None:
        """Pool another slice of the same scenario into this one."""
        self.calls += other.calls
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)
        for key, value in other.cpu.items():
            mine = self.cpu.get(key, 0.0)
            self.cpu[key] = None if value is None or mine is None else mine + value
        if self.wire is None or other.wire is None:
            self.wire = None
        else:
            self.wire = (self.wire[0] + other.wire[0], self.wire[1] + other.wire[1])
        self.slices.append(other.rate)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else math.nan

    def cores_busy(self) -> dict[str, float | None]:
        """Cores kept busy on average: by the measured processes, and by everything else
        on the machine (other work competing with the benchmark)."""
        if not self.seconds:
            return {"measured": None, "others": None}
        measured = [self.cpu.get(k) for k in PROCESSES]
        ours = sum(v for v in measured if v is not None) / self.seconds
        machine = self.cpu.get("machine")
        others = None if machine is None else max(machine / self.seconds - ours, 0.0)
        return {"measured": round(ours, 2), "others": None if others is None else round(others, 2)}

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        ms = 1000.0
        return {
            "calls": self.calls,
            "seconds": round(self.seconds, 4),
            "calls_per_second": round(self.rate, 1),
            "latency_ms": {
                "p50": round(percentile(lat, 50) * ms, 3),
                "p95": round(percentile(lat, 95) * ms, 3),
                "p99": round(percentile(lat, 99) * ms, 3),
                "mean": round(sum(lat) / len(lat) * ms, 3) if lat else math.nan,
                "max": round(lat[-1] * ms, 3) if lat else math.nan,
            },
            "cpu_us_per_call": {
                key: (round(value / self.calls * 1e6, 1) if value is not None and self.calls else None)
                for key, value in self.cpu.items()
                if key in PROCESSES
            },
            "cores_busy": self.cores_busy(),
            "client_wire_bytes_per_call": (
                {"sent": round(self.wire[0] / self.calls), "received": round(self.wire[1] / self.calls)}
                if self.wire is not None and self.calls else None
            ),
            "calls_per_second_by_slice": [round(r, 1) for r in self.slices],
        }


class CpuMeter:
    """CPU seconds of this process and of the servers, and this process's bytes to the
    broker, read before and after a slice."""

    def __init__(self, pids: dict[str, int | None], broker_port: int) -> None:
        self.pids = pids
        self.broker_port = broker_port

    def wire(self) -> tuple[int, int] | None:
        return socket_bytes(os.getpid(), self.broker_port)

    def read(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {"client": time.process_time()}
        for key, pid in self.pids.items():
            values[key] = process_cpu(pid)
        values["machine"] = machine_busy()
        return values

    @staticmethod
    def delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key, start in before.items():
            end = after.get(key)
            out[key] = None if start is None or end is None else end - start
        return out


def phase_budget(calls: int) -> float:
    return PHASE_BASE_SECONDS + calls * PHASE_SECONDS_PER_CALL


def expect_one(result: Any, what: str) -> None:
    """``test.ping`` answers 1; anything else (a REMOTE_ERROR, a timeout) ends the run."""
    if result != 1:
        raise BenchError(f"{what}: test.ping answered {result!r}")


SyncCall = Callable[[], Any]
AsyncCall = Callable[[], Awaitable[Any]]


def blocking_calls(call: SyncCall, count: int, what: str, give_up: threading.Event) -> list[float]:
    """One blocking call at a time, each timed; runs in a worker thread."""
    latencies: list[float] = []
    for _ in range(count):
        if give_up.is_set():
            break
        t0 = time.perf_counter()
        result = call()
        latencies.append(time.perf_counter() - t0)
        expect_one(result, what)
    return latencies


async def awaited_calls(call: AsyncCall, count: int, what: str) -> list[float]:
    """One awaited call at a time, each timed."""
    latencies: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        result = await call()
        latencies.append(time.perf_counter() - t0)
        expect_one(result, what)
    return latencies


async def windowed_calls(call: AsyncCall, count: int, window: int, what: str) -> list[float]:
    """``window`` calls in flight at all times (a sliding window, not batches), each timed."""
    latencies: list[float] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            result = await call()
            latencies.append(time.perf_counter() - t0)
            expect_one(result, what)

    await asyncio.gather(*(worker() for _ in range(min(window, count))))
    return latencies


@dataclass
class Scenario:
    """One way of calling ``test.ping``, measured slice by slice into ``sample``."""

    name: str
    call: Callable[[], Any]
    meter: CpuMeter
    window: int = 1
    blocking: bool = False
    sample: Sample = field(default_factory=Sample)

    async def run(self, count: int) -> Sample:
        """``count`` calls, bounded in time; wall time, latencies and CPU of the slice."""
        wire_before = self.meter.wire()
        before = self.meter.read()
        start = time.perf_counter()
        give_up = threading.Event()
        if self.blocking:
            calls = asyncio.to_thread(blocking_calls, self.call, count, self.name, give_up)
        elif self.window > 1:
            calls = windowed_calls(self.call, count, self.window, self.name)
        else:
            calls = awaited_calls(self.call, count, self.name)
        try:
            latencies = await asyncio.wait_for(calls, phase_budget(count))
        except asyncio.TimeoutError:
            give_up.set()
            raise BenchError(f"{self.name}: gave up after {phase_budget(count):g} s") from None
        except BaseException:
            # abandoned (signal, Ctrl-C): a blocking worker thread cannot be cancelled,
            # and asyncio.run would wait for it to finish its whole slice before the
            # servers are stopped
            give_up.set()
            raise
        seconds = time.perf_counter() - start
        cpu = CpuMeter.delta(before, self.meter.read())
        wire_after = self.meter.wire()
        wire = None
        if wire_before is not None and wire_after is not None:
            wire = (wire_after[0] - wire_before[0], wire_after[1] - wire_before[1])
        return Sample(len(latencies), seconds, latencies, cpu, wire)


def slice_sizes(total: int, slices: int) -> list[int]:
    """``total`` split into ``slices`` near-equal parts (none empty)."""
    slices = min(slices, total)
    return [total // slices + (1 if i < total % slices else 0) for i in range(slices)]


# --- the bare aio-pika client ----------------------------------------------------------


def bare_request_body() -> bytes:
    return json.dumps({"module": "test", "method": "ping", "args": []}).encode()


class BareClient:
    """Hand-written aio-pika RPC: exclusive reply queue, correlation ids, one future a call."""

    def __init__(self, url: str, queue: str, confirms: bool) -> None:
        self.url = url
        self.queue = queue
        self.confirms = confirms
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._reply_to = ""

    async def __aenter__(self) -> "BareClient":
        self._connection = await aio_pika.connect(self.url, timeout=CONNECT_TIMEOUT)
        self._channel = await self._connection.channel(publisher_confirms=self.confirms)
        reply_queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await reply_queue.consume(self._on_reply, no_ack=True)
        self._reply_to = reply_queue.name
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def server_version(self) -> str:
        """The broker's product version, from the connection handshake."""
        assert self._connection is not None
        underlay = getattr(self._connection.transport, "connection", None)
        props = getattr(underlay, "server_properties", None) or {}
        version = props.get("version", "")
        return version.decode() if isinstance(version, bytes) else str(version)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(json.loads(message.body))

    async def ping(self) -> Any:
        assert self._channel is not None
        cid = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[cid] = future
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    body=bare_request_body(),
                    content_type="application/json",
                    correlation_id=cid,
                    reply_to=self._reply_to,
                ),
                routing_key=self.queue,
            )
            reply = await asyncio.wait_for(future, CALL_TIMEOUT)
        finally:
            self._pending.pop(cid, None)
        return reply.get("result") if isinstance(reply, dict) else reply


# --- the run --------------------------------------------------------------------------

SYNC_SEQ = "func-amqp Overlord (sync), sequential"
ASYNC_SEQ = "func-amqp AsyncOverlord, sequential"
ASYNC_CONC = "func-amqp AsyncOverlord, concurrent"
OPEN_SEQ = "func-amqp unsigned AsyncOverlord, sequential"
OPEN_CONC = "func-amqp unsigned AsyncOverlord, concurrent"
BARE_SEQ = "bare aio-pika, sequential"
BARE_CONC = "bare aio-pika, concurrent"
PLAIN_SEQ = "bare aio-pika without confirms, sequential"
PLAIN_CONC = "bare aio-pika without confirms, concurrent"
A10_SEQ = "func-amqp AsyncOverlord over AMQP 1.0, sequential"
A10_CONC = "func-amqp AsyncOverlord over AMQP 1.0, concurrent"
SCENARIOS = (
    SYNC_SEQ, ASYNC_SEQ, ASYNC_CONC, OPEN_SEQ, OPEN_CONC, BARE_SEQ, BARE_CONC, PLAIN_SEQ, PLAIN_CONC,
    A10_SEQ, A10_CONC,
)


@dataclass
class Setup:
    url: str
    broker_port: int
    conf_dir: Path
    minion: Child
    open_minion: Child
    a10_minion: Child
    bare: Child
    plain: Child
    broker_pid: int | None


def message_sizes(reply_to: str) -> dict[str, int]:
    """Body sizes of one ping request and reply, func-amqp and bare, in bytes."""
    cid = uuid.uuid4().hex
    request = codec.encode(
        MethodRequest("test", "ping", [], time.time() + CALL_TIMEOUT, MINION_NAME),
        correlation_id=cid,
        reply_to=reply_to,
    )
    reply = codec.encode(MethodResponse(1), correlation_id=cid, agent=MINION_NAME)
    return {
        "func_request_body": len(request.body),
        "func_reply_body": len(reply.body),
        "bare_request_body": len(bare_request_body()),
        "bare_reply_body": len(json.dumps({"result": 1}).encode()),
    }


def broker_port(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    return parts.port or (5671 if parts.scheme == "amqps" else 5672)


def provision(paths: Paths, name: str) -> bool:
    """Give the minion a certificate from a CA kept in ``paths``, as an administrator would.

    The benchmark process then holds the CA's key and signs its requests with it, as
    func's overlord did with the certmaster key. A tree without a certificate authority
    needs none of this: False.
    """
    try:
        from func_amqp.security.credentials import issue_locally
        from func_amqp.security.keys import HostIdentity
    except ImportError:
        return False
    issue_locally(paths.ca_dir, HostIdentity(paths.pki_dir, name))
    return True


def write_minion_conf(conf_dir: Path, audit_log: Path, *, signed: bool) -> None:
    """A minion.conf with the defaults but for the audit log's place and, for the
    unsigned minion, ``require_signatures``.

    The audit log stays on in both (as in production) but goes to the run's temporary
    directory: the default under root is a system path the benchmark must not touch.
    """
    lines = ["[main]", f"audit_log = {audit_log}"]
    if not signed:
        lines.append("require_signatures = false")
    conf_dir.mkdir()
    (conf_dir / "minion.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")


@asynccontextmanager
async def unsigned_overlord(url: str, conf_dir: Path) -> AsyncIterator[AsyncOverlord]:
    """An ``AsyncOverlord`` for the unsigned minion whose client has no signer and no
    trust store: requests go out unsigned and replies are not verified.

    Built on its own transport, connected once, so that it shares nothing with the
    signed overlord; otherwise it is the same client on the same kind of connection.
    """
    transport = transport_for_url(url)
    await transport.connect()
    try:
        rpc = RpcClient(transport, OverlordConfig().max_message_bytes)
        await rpc.start()  # AsyncOverlord.connect() leaves a given client as it is
        yield AsyncOverlord(OPEN_MINION_NAME, noglobs=True, timeout=CALL_TIMEOUT, config_dir=conf_dir, rpc=rpc)
    finally:
        await transport.close()


def server_pids(setup: Setup, server: Child) -> dict[str, int | None]:
    return {"server": server.pid, "broker": setup.broker_pid}


async def measure_all(setup: Setup, args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Sample]:
    """Warm every scenario up, then time them slice by slice, taking turns."""
    minion_meter = CpuMeter(server_pids(setup, setup.minion), setup.broker_port)
    open_meter = CpuMeter(server_pids(setup, setup.open_minion), setup.broker_port)
    bare_meter = CpuMeter(server_pids(setup, setup.bare), setup.broker_port)
    plain_meter = CpuMeter(server_pids(setup, setup.plain), setup.broker_port)
    a10_meter = CpuMeter(server_pids(setup, setup.a10_minion), setup.broker_port)
    overlord = await asyncio.to_thread(
        Overlord, MINION_NAME, noglobs=True, timeout=CALL_TIMEOUT, url=setup.url, config_dir=setup.conf_dir
    )
    async with (
        AsyncOverlord(
            MINION_NAME, noglobs=True, timeout=CALL_TIMEOUT, url=setup.url, config_dir=setup.conf_dir
        ) as aol,
        unsigned_overlord(setup.url, setup.conf_dir) as open_aol,
        AsyncOverlord(
            A10_MINION_NAME, noglobs=True, timeout=CALL_TIMEOUT, url=amqp10_url(setup.url), config_dir=setup.conf_dir
        ) as a10_aol,
        BareClient(setup.url, setup.bare.ready.split()[-1], confirms=True) as bare,
        BareClient(setup.url, setup.plain.ready.split()[-1], confirms=False) as plain,
    ):
        info["rabbitmq"] = bare.server_version
        w = args.window
        sequential = [
            Scenario(SYNC_SEQ, overlord.test.ping, minion_meter, blocking=True),
            Scenario(ASYNC_SEQ, aol.test.ping, minion_meter),
            Scenario(OPEN_SEQ, open_aol.test.ping, open_meter),
            Scenario(BARE_SEQ, bare.ping, bare_meter),
            Scenario(PLAIN_SEQ, plain.ping, plain_meter),
            Scenario(A10_SEQ, a10_aol.test.ping, a10_meter),
        ]
        concurrent = [
            Scenario(ASYNC_CONC, aol.test.ping, minion_meter, window=w),
            Scenario(OPEN_CONC, open_aol.test.ping, open_meter, window=w),
            Scenario(BARE_CONC, bare.ping, bare_meter, window=w),
            Scenario(PLAIN_CONC, plain.ping, plain_meter, window=w),
            Scenario(A10_CONC, a10_aol.test.ping, a10_meter, window=w),
        ]
        for scenario in sequential + concurrent:
            if args.warmup:
                await scenario.run(args.warmup)
        for group, total in ((sequential, args.calls), (concurrent, args.concurrent_calls)):
            for i, count in enumerate(slice_sizes(total, args.slices)):
                for scenario in group if i % 2 == 0 else reversed(group):
                    scenario.sample.add(await scenario.run(count))
        macs_to = getattr(aol.rpc, "macs_to", None)  # trees before pair MACs lack it
        info["pair_macs"] = bool(macs_to and macs_to(MINION_NAME))
    return {s.name: s.sample for s in sequential + concurrent}


def cpu_per_call(sample: Sample) -> float:
    """CPU microseconds a call cost all measured processes together (client, server, broker).

    On a machine whose cores the benchmark saturates, throughput follows this figure,
    and unlike wall time it barely moves when something else runs at the same time.
    """
    known = [v for k, v in sample.cpu.items() if k in PROCESSES and v is not None]
    return sum(known) / sample.calls * 1e6 if sample.calls else math.nan


def signing_cpu(signed: Sample, unsigned: Sample) -> dict[str, float | None]:
    """CPU microseconds a call costs more signed than unsigned, per process and in all.

    The two minions differ only in ``require_signatures``, and the two overlords only in
    having a signer and a trust store, so this is what message security costs a call.
    """
    out: dict[str, float | None] = {}
    for key in PROCESSES:
        a, b = signed.cpu.get(key), unsigned.cpu.get(key)
        if a is None or b is None or not signed.calls or not unsigned.calls:
            out[key] = None
        else:
            out[key] = round(a / signed.calls * 1e6 - b / unsigned.calls * 1e6, 1)
    out["total"] = round(cpu_per_call(signed) - cpu_per_call(unsigned), 1)
    return out


def ratios(results: dict[str, Sample]) -> dict[str, Any]:
    """Throughput and CPU ratios: signed func-amqp (what users run) and unsigned (the RPC
    core the 70% aim was set for), each against bare aio-pika, and signed against unsigned."""

    def share(a: str, b: str) -> float:
        return round(results[a].rate / results[b].rate, 3)

    def by_slice(a: str, b: str) -> list[float]:
        return [round(x / y, 3) for x, y in zip(results[a].slices, results[b].slices)]

    def cpu_share(a: float, b: float) -> float:
        return round(a / b, 3) if b else math.nan

    func_cpu, bare_cpu = cpu_per_call(results[ASYNC_CONC]), cpu_per_call(results[BARE_CONC])
    open_cpu = cpu_per_call(results[OPEN_CONC])
    return {
        "cpu_us_per_call_func_concurrent": round(func_cpu, 1),
        "cpu_us_per_call_func_unsigned_concurrent": round(open_cpu, 1),
        "cpu_us_per_call_bare_concurrent": round(bare_cpu, 1),
        "bare_cpu_vs_func_cpu_concurrent": cpu_share(bare_cpu, func_cpu),
        "bare_cpu_vs_func_unsigned_cpu_concurrent": cpu_share(bare_cpu, open_cpu),
        "func_concurrent_vs_bare_concurrent": share(ASYNC_CONC, BARE_CONC),
        "func_concurrent_vs_bare_concurrent_by_slice": by_slice(ASYNC_CONC, BARE_CONC),
        "func_unsigned_concurrent_vs_bare_concurrent": share(OPEN_CONC, BARE_CONC),
        "func_unsigned_concurrent_vs_bare_concurrent_by_slice": by_slice(OPEN_CONC, BARE_CONC),
        "func_concurrent_vs_func_unsigned_concurrent": share(ASYNC_CONC, OPEN_CONC),
        "func_concurrent_vs_func_unsigned_concurrent_by_slice": by_slice(ASYNC_CONC, OPEN_CONC),
        "signing_cpu_us_per_call_concurrent": signing_cpu(results[ASYNC_CONC], results[OPEN_CONC]),
        "signing_cpu_us_per_call_sequential": signing_cpu(results[ASYNC_SEQ], results[OPEN_SEQ]),
        "func_concurrent_vs_bare_without_confirms_concurrent": share(ASYNC_CONC, PLAIN_CONC),
        "func_unsigned_concurrent_vs_bare_without_confirms_concurrent": share(OPEN_CONC, PLAIN_CONC),
        "func_async_sequential_vs_bare_sequential": share(ASYNC_SEQ, BARE_SEQ),
        "func_unsigned_async_sequential_vs_bare_sequential": share(OPEN_SEQ, BARE_SEQ),
        "func_sync_sequential_vs_bare_sequential": share(SYNC_SEQ, BARE_SEQ),
        "func_amqp10_concurrent_vs_func_concurrent": share(A10_CONC, ASYNC_CONC),
        "func_amqp10_concurrent_vs_func_concurrent_by_slice": by_slice(A10_CONC, ASYNC_CONC),
        "func_amqp10_sequential_vs_func_sequential": share(A10_SEQ, ASYNC_SEQ),
        "cpu_us_per_call_func_amqp10_concurrent": round(cpu_per_call(results[A10_CONC]), 1),
    }


def tree_revision() -> str:
    """The measured tree: commit, and whether it had uncommitted changes."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_info() -> dict[str, Any]:
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.partition("=")[2].strip('"')
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aio_pika": aio_pika.__version__,
    }


# --- output ---------------------------------------------------------------------------

COLUMNS = ("scenario", "calls", "in flight", "calls/s", "p50 ms", "p95 ms", "p99 ms",
           "CPU us/call client", "server", "broker")


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, fig in report["results"].items():
        cpu = fig["cpu_us_per_call"]
        rows.append([
            name,
            str(fig["calls"]),
            str(fig["in_flight"]),
            f"{fig['calls_per_second']:,.0f}",
            f"{fig['latency_ms']['p50']:.2f}",
            f"{fig['latency_ms']['p95']:.2f}",
            f"{fig['latency_ms']['p99']:.2f}",
            *("-" if cpu.get(k) is None else f"{cpu[k]:,.0f}" for k in ("client", "server", "broker")),
        ])
    return rows


def cores_line(report: dict[str, Any]) -> str:
    """How busy the machine was in the concurrent scenarios, by us and by anything else."""
    parts = []
    for name, label in ((ASYNC_CONC, "func-amqp"), (OPEN_CONC, "func-amqp unsigned"), (BARE_CONC, "bare")):
        busy = report["results"][name]["cores_busy"]
        others = "?" if busy["others"] is None else f"{busy['others']:.2f}"
        parts.append(f"{label} {busy['measured']:.2f} (+{others} other work)")
    return f"cores busy during the concurrent calls, of {report['machine']['cpus']}: " + ", ".join(parts)


def _security_label(settings: dict[str, Any]) -> str:
    """How the signed scenarios' requests travelled (docs/protocol.md §13)."""
    if not settings["signed_requests"]:
        return "unsigned"
    if settings.get("pair_macs"):
        return "signed, then MAC'd with the pair key the minion's first reply agreed; replies MAC'd"
    return "signed, replies signed"


def wire_line(report: dict[str, Any]) -> str:
    """Bytes the client sent and received per call, sequential scenarios (no batching)."""
    parts = []
    for name, label in ((ASYNC_SEQ, "func-amqp"), (OPEN_SEQ, "func-amqp unsigned"), (BARE_SEQ, "bare")):
        wire = report["results"][name]["client_wire_bytes_per_call"]
        if wire is None:
            return "bytes on the wire: not measured (needs ss)"
        parts.append(f"{label} {wire['sent']:,} / {wire['received']:,}")
    return "client bytes on the wire per sequential call, sent / received: " + ", ".join(parts)


def against_aim(label: str, ratio: float, spread: Sequence[float]) -> str:
    """One concurrent throughput ratio against bare aio-pika, and whether it meets the aim."""
    spread = spread or [ratio]
    verdict = "meets" if ratio >= AIM else "misses"
    return (
        f"{label} concurrent / bare aio-pika concurrent: {ratio:.0%} ({verdict} the {AIM:.0%} aim; "
        f"by slice {min(spread):.0%} to {max(spread):.0%})"
    )


def signing_line(report: dict[str, Any]) -> str:
    """What signing costs a concurrent call: throughput and CPU, signed against unsigned."""
    r = report["ratios"]
    cost = r["signing_cpu_us_per_call_concurrent"]
    each = ", ".join(
        f"{key} {'?' if cost[key] is None else format(cost[key], '+,.0f')}" for key in PROCESSES
    )
    return (
        f"signing, concurrent: signed / unsigned throughput {r['func_concurrent_vs_func_unsigned_concurrent']:.0%}; "
        f"{cost['total']:+,.0f} us CPU a call ({each})"
    )


def summary_lines(report: dict[str, Any]) -> list[str]:
    r = report["ratios"]
    m, s = report["machine"], report["settings"]
    sizes = report["message_sizes"]
    return [
        against_aim("func-amqp (signed)", r["func_concurrent_vs_bare_concurrent"],
                    r["func_concurrent_vs_bare_concurrent_by_slice"]),
        against_aim("func-amqp unsigned (RPC core)", r["func_unsigned_concurrent_vs_bare_concurrent"],
                    r["func_unsigned_concurrent_vs_bare_concurrent_by_slice"]),
        f"CPU per concurrent call, all processes: func-amqp {r['cpu_us_per_call_func_concurrent']:,.0f} us, "
        f"unsigned {r['cpu_us_per_call_func_unsigned_concurrent']:,.0f} us, "
        f"bare {r['cpu_us_per_call_bare_concurrent']:,.0f} us (bare / func-amqp: "
        f"{r['bare_cpu_vs_func_cpu_concurrent']:.0%}, bare / unsigned: "
        f"{r['bare_cpu_vs_func_unsigned_cpu_concurrent']:.0%})",
        signing_line(report),
        f"AMQP 1.0 against AMQP 0-9-1, both signed: concurrent {r['func_amqp10_concurrent_vs_func_concurrent']:.0%} "
        f"of the calls/s, sequential {r['func_amqp10_sequential_vs_func_sequential']:.0%}; CPU per concurrent call "
        f"{r['cpu_us_per_call_func_amqp10_concurrent']:,.0f} us against {r['cpu_us_per_call_func_concurrent']:,.0f}",
        cores_line(report),
        f"concurrent, against bare aio-pika without confirms: func-amqp "
        f"{r['func_concurrent_vs_bare_without_confirms_concurrent']:.0%}, unsigned "
        f"{r['func_unsigned_concurrent_vs_bare_without_confirms_concurrent']:.0%}",
        f"sequential, AsyncOverlord / bare: {r['func_async_sequential_vs_bare_sequential']:.0%}; "
        f"unsigned AsyncOverlord / bare: {r['func_unsigned_async_sequential_vs_bare_sequential']:.0%}; "
        f"sync Overlord / bare: {r['func_sync_sequential_vs_bare_sequential']:.0%}",
        wire_line(report),
        f"JSON bodies: request func-amqp {sizes['func_request_body']} bytes, bare {sizes['bare_request_body']}; "
        f"reply {sizes['func_reply_body']} / {sizes['bare_reply_body']}; "
        f"func-amqp requests {_security_label(s)} "
        f"(in the unsigned scenarios: unsigned); audit log on in both minions",
        f"{m['cpus']} CPUs, {m['os']}, Python {m['python']}, aio-pika {m['aio_pika']}, "
        f"RabbitMQ {report.get('rabbitmq', '?')} ({s['broker']}); warm-up {s['warmup']} calls a scenario, "
        f"timed calls in {s['slices']} interleaved slices",
        f"load average before {report['load']['before']}, after {report['load']['after']}; "
        f"tree {report['tree'] or '?'}",
    ]


def print_report(report: dict[str, Any]) -> None:
    rows = table_rows(report)
    lines = summary_lines(report)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="test.ping round trips")
        for i, col in enumerate(COLUMNS):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console = Console()
        console.print(table)
        for line in lines:
            console.print(line, highlight=False)
        return
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(fmt(COLUMNS))
    print(fmt(["-" * w for w in widths]))
    for row in rows:
        print(fmt(row))
    print()
    for line in lines:
        print(line)


# --- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed sequential calls a scenario (default: %(default)s)")
    parser.add_argument("--concurrent-calls", type=int, default=5000, help="timed concurrent calls a scenario (default: %(default)s)")
    parser.add_argument("--window", type=int, default=64, help="calls in flight in the concurrent scenarios (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls before each scenario (default: %(default)s)")
    parser.add_argument("--slices", type=int, default=5, help="timed calls are made in this many slices, scenarios taking turns (default: %(default)s)")
    parser.add_argument("--url", help="use this broker instead of starting a private RabbitMQ node")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="abandon the whole run after this long (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("calls", "concurrent_calls", "window", "slices"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


class Abandoned(BaseException):
    """Raised from a signal handler so every ``finally`` still runs."""


def abandon_run(signum: int, _frame: object) -> None:
    raise Abandoned(f"stopped by signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="func-amqp-bench-"))
    base.chmod(0o755)  # the node runs as the rabbitmq user when started by root
    conf_dir, state_dir, open_state_dir = base / "conf", base / "state", base / "open-state"
    minion_conf, open_conf = base / "minion-conf", base / "open-conf"
    for d in (conf_dir, state_dir, open_state_dir):
        d.mkdir()
    write_minion_conf(minion_conf, base / f"audit-{MINION_NAME}.log", signed=True)
    write_minion_conf(open_conf, base / f"audit-{OPEN_MINION_NAME}.log", signed=False)
    # This process must not read or write the machine's own func-amqp settings.
    os.environ[ENV_CONFIG_DIR] = str(conf_dir)
    os.environ[ENV_STATE_DIR] = str(state_dir)
    os.environ.pop(ENV_BROKER_URL, None)

    signal.signal(signal.SIGALRM, abandon_run)
    signal.signal(signal.SIGTERM, abandon_run)
    signal.alarm(max(1, int(args.max_seconds)))
    broker: PrivateBroker | None = None
    children: list[Child] = []
    load_before = os.getloadavg()
    try:
        broker_pid: int | None = None
        if args.url:
            url = args.url
            broker_label = "given by --url"
        else:
            broker = PrivateBroker(Paths(config_dir=conf_dir, state_dir=base / "broker-state"))
            url = broker.start(timeout=BROKER_START_TIMEOUT)
            broker_pid = broker.status().pid
            broker_label = "private node started by the benchmark"
        # The minion shares this process's state directory: its certificate and the CA.
        signed = provision(Paths(config_dir=conf_dir, state_dir=state_dir), MINION_NAME)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            ENV_BROKER_URL: url,
            ENV_CONFIG_DIR: str(minion_conf),
            ENV_STATE_DIR: str(state_dir),
        }
        prefetch = MinionConfig().max_concurrent_calls
        suffix = uuid.uuid4().hex[:8]
        minion = Child(
            "funcd",
            [sys.executable, "-m", "func_amqp.cli.funcd", "--name", MINION_NAME, "-c", str(minion_conf)],
            env, base / "funcd.log", "serving",
        )
        # Its own configuration and state: no certificate, nothing shared with the other.
        open_minion = Child(
            "funcd (unsigned)",
            [sys.executable, "-m", "func_amqp.cli.funcd", "--name", OPEN_MINION_NAME, "-c", str(open_conf)],
            {**env, ENV_CONFIG_DIR: str(open_conf), ENV_STATE_DIR: str(open_state_dir)},
            base / "funcd-open.log", "serving",
        )
        # The same signed minion set-up on the AMQP 1.0 transport, through the node's plugin.
        a10_conf = base / "a10-conf"
        write_minion_conf(a10_conf, base / f"audit-{A10_MINION_NAME}.log", signed=True)
        provision(Paths(config_dir=conf_dir, state_dir=state_dir), A10_MINION_NAME)
        a10_minion = Child(
            "funcd (AMQP 1.0)",
            [sys.executable, "-m", "func_amqp.cli.funcd", "--name", A10_MINION_NAME, "-c", str(a10_conf)],
            {**env, ENV_BROKER_URL: amqp10_url(url), ENV_CONFIG_DIR: str(a10_conf)},
            base / "funcd-amqp10.log", "serving",
        )
        servers = [
            Child(
                f"bare server ({label})",
                [sys.executable, str(BARE_SERVER), "--url", url, "--queue", queue, "--prefetch", str(prefetch), *extra],
                env, base / f"{queue}.log", f"serving {queue}",
            )
            for label, queue, extra in (
                ("confirms", f"bench.bare.{suffix}", []),
                ("no confirms", f"bench.plain.{suffix}", ["--no-confirms"]),
            )
        ]
        for child in (minion, open_minion, a10_minion, *servers):
            children.append(child)
            child.start()
        for child in children:
            child.wait_ready()
        setup = Setup(url, broker_port(url), conf_dir, minion, open_minion, a10_minion, servers[0], servers[1], broker_pid)

        info: dict[str, Any] = {}
        results = asyncio.run(measure_all(setup, args, info))
        load_after = os.getloadavg()

        report: dict[str, Any] = {
            "command": " ".join(["python", "bench/ping.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_info(),
            "tree": tree_revision(),
            "rabbitmq": info.get("rabbitmq", ""),
            "settings": {
                "calls": args.calls,
                "concurrent_calls": args.concurrent_calls,
                "window": args.window,
                "warmup": args.warmup,
                "slices": args.slices,
                "prefetch": prefetch,
                "broker": broker_label,
                "signed_requests": signed,
                "pair_macs": info.get("pair_macs", False),
                "minions": {"signed": MINION_NAME, "unsigned": OPEN_MINION_NAME},
                "audit_log": "on in both minions, a file in the run's temporary directory",
            },
            "message_sizes": message_sizes("func.reply." + uuid.uuid4().hex),
            "codec_request_headers": sorted(codec.encode(MethodRequest("test", "ping", [], time.time() + 1, MINION_NAME)).headers),
            "load": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
            "results": {},
            "ratios": ratios(results),
        }
        for name in SCENARIOS:
            sample = results[name]
            in_flight = args.window if name.endswith("concurrent") else 1
            report["results"][name] = {"in_flight": in_flight, **sample.summary()}
        print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return 0
    except (BenchError, FuncAmqpError, Abandoned) as exc:
        print(f"ping benchmark: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        Session.close_shared()  # before the broker goes, or its client retries noisily
        for child in children:
            child.stop()
        if broker is not None:
            broker.stop(timeout=BROKER_STOP_TIMEOUT)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
