"""Builder-pool throughput: no-op jobs through a func-amqp pool, against Celery on the same broker.

What it measures: how fast ``--jobs`` no-op jobs (default 2,000) get through a pool of two
workers, submitted all at once and then waited for, and what each job costs in CPU. The
same run does it with func-amqp's builder pools and with Celery, on the same RabbitMQ
node, taking turns.

How. One run starts everything it measures and stops it again (also on failure, Ctrl-C,
SIGTERM and after ``--max-seconds``), with the pieces of ``bench/ping.py``: a private
RabbitMQ node (``PrivateBroker``) under a temporary directory, a CA in the benchmark's
state directory and a certificate for each minion (``provision``), and then

- func-amqp: two ``funcd`` processes (``bench-pool-1``, ``bench-pool-2``) whose
  ``minion.conf`` says ``pools = bench:S`` (``--slots``, default 4) and sends the audit
  log to a file in the run's temporary directory, everything else at its defaults:
  requests must be signed (the benchmark signs as the CA holder), ACLs checked, audit
  line per job. The client is ``AsyncOverlord`` + ``JobClient``: every job is
  ``submit_to_pool("bench", "test", "ping", [])`` (``test.ping`` returns 1 and does
  nothing), ``--batch`` submissions in flight at a time (``asyncio.gather``), then
  ``jobs.wait(job_id)`` for each job in the order submitted. A job counts when it ends
  FINISHED with ``{minion: 1}``. The job collector (which folds the minions' events into
  the job store) reads the owner's event queue for the whole timed part
  (``jobs.collector.reading()``), so events are read while jobs are still being
  submitted, and ``wait()`` does not start and stop consuming for every job.
- Celery: ``bench/celery_tasks.py``, a no-op task returning 1, on a queue of the run's
  own with ``task_acks_late = True``, ``worker_prefetch_multiplier = 1``, ``rpc://``
  results; two ``python -m celery -A celery_tasks worker --pool threads --concurrency S
  --without-heartbeat --without-gossip --without-mingle -Q <queue>`` processes (threads,
  like funcd's thread pool; at Celery's default log level, WARNING). The client calls
  ``noop.delay()`` N times, then ``.get()`` on each result in the order sent.

Each pass: ``--warmup`` untimed jobs, then N timed jobs from the first submission to the
last completion seen by the client. Reported per pass: time to submit all N (and the
submission rate), total time and throughput (N / total), and CPU per job of the client
process, each worker process and the broker's Erlang VM (from /proc, as ping.py reads
it), with the whole machine's busy time to show how much other work competed. Passes
run ``--rounds`` times in ABBA order (func-amqp, Celery, Celery, func-amqp, ...), so a
drift in machine load hits both alike; the headline is the ratio of func-amqp's to
Celery's throughput over all passes, with the ratio of each round beside it.

Checked, not assumed: func-amqp runs exactly N distinct jobs a pass, each once (the job
ids are distinct, every record has a single non-superseded minion entry, and the
minions' job ledgers have exactly one ``started`` line per job), and the table says
how many each minion ran and the most it ran at once (from the ledgers). For Celery, N
results equal to 1 and the workers' own task counters (``inspect().stats()``) add up to
exactly N.

What is fair and what is not. Same broker, same machine, same number of worker
processes and slots, both acknowledging a job only after it ran, at most one unacked
job per slot: Celery takes up to S tasks at once a worker (prefetch S), and a funcd
consumes its pool queue with prefetch S (its slots); the line "jobs running at once at
most" shows what each minion did. And the two do different amounts of work per job,
by design:

- func-amqp: every job is a persistent message published with publisher confirms to a
  durable *quorum* queue (``x-queue-type: quorum``, a delivery limit, dead-lettering to
  the owner), signed by the client and verified by the minion (certificate, signature,
  target, ACL; for jobs the job ledger stands in for the replay guard), written to the
  minion's audit log and job ledger, and recorded in a JSON file on the client; the minion
  signs and publishes its STARTED and SUCCEEDED events as persistent, confirmed
  messages to the owner's durable quorum event queue, and the client folds each into a
  JSON file per job (the job store), which outlives the client.
- Celery, as configured here and otherwise at its defaults: task messages are
  persistent (delivery mode 2) but go to a *classic* durable queue (Celery declares
  ``task_default_queue_type = classic`` unless told otherwise; the run asks the broker
  and prints the queue types it reports) without publisher confirms; nothing is
  signed; results travel over the ``rpc://`` backend as non-persistent messages to the
  client's own auto-delete reply queue and are kept only in the client's memory: a
  client that dies loses them, where func-amqp's job events wait in the broker and
  land in the job store.

So the ratio is what a user gets from each as deployed, not the cost of the same work.

    python bench/pool.py [--jobs 2000] [--slots 4] [--rounds 2] [--warmup 20]
                         [--batch 64] [--json FILE] [--max-seconds 1800]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

# ping.py puts the repository on sys.path before importing func_amqp
from ping import (  # noqa: E402
    BROKER_START_TIMEOUT,
    BROKER_STOP_TIMEOUT,
    READY_TIMEOUT,
    REPO,
    Abandoned,
    BenchError,
    Child,
    CpuMeter,
    abandon_run,
    broker_port,
    machine_info,
    provision,
    tree_revision,
    write_minion_conf,
)

from func_amqp.broker.node import CTL_PROGRAM, PrivateBroker  # noqa: E402
from func_amqp.config import ENV_BROKER_URL, ENV_CONFIG_DIR, ENV_STATE_DIR, Paths  # noqa: E402
from func_amqp.errors import FuncAmqpError  # noqa: E402
from func_amqp.overlord.caller import AsyncOverlord  # noqa: E402
from func_amqp.overlord.job_client import JobClient  # noqa: E402
from func_amqp.overlord.jobs import JOB_ID_FINISHED, JOB_ID_RUNNING, code_name  # noqa: E402
from func_amqp.protocol import names  # noqa: E402

celery_tasks: Any = None
"""bench/celery_tasks.py, imported by main() once the environment names the broker and queue."""

CELERY_BROKER_ENV = "BENCH_CELERY_BROKER_URL"
CELERY_QUEUE_ENV = "BENCH_CELERY_QUEUE"
"""How bench/celery_tasks.py learns the broker and the queue (its BROKER_ENV, QUEUE_ENV)."""
POOL = "bench"
MINIONS = ("bench-pool-1", "bench-pool-2")
CELERY_WORKERS = ("bench-celery-1", "bench-celery-2")
FUNC = "func-amqp"
CELERY = "Celery"
PASS_BASE_SECONDS = 60.0
PASS_SECONDS_PER_JOB = 0.1
"""A pass may take 60 s plus 100 ms a job (10 jobs/s) before the run is abandoned."""
OVERLORD_TIMEOUT = 30.0
CONTROL_TIMEOUT = 2.0
POLL_INTERVAL = 0.2


# --- figures --------------------------------------------------------------------------


@dataclass
class Pass:
    """One timed pass of one system: N jobs, wall times, CPU by process, who ran what."""

    system: str
    round: int
    jobs: int = 0
    submit_seconds: float = 0.0
    total_seconds: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    """CPU seconds: ``client``, ``broker``, ``machine``, and one entry per worker process."""
    ran: dict[str, int] = field(default_factory=dict)
    max_running: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.total_seconds if self.total_seconds else math.nan

    def workers_cpu(self) -> float | None:
        values = [v for k, v in self.cpu.items() if k not in ("client", "broker", "machine")]
        return None if not values or None in values else sum(v for v in values if v is not None)

    def ms_per_job(self, seconds: float | None) -> float | None:
        return None if seconds is None or not self.jobs else round(seconds / self.jobs * 1000.0, 3)

    def summary(self) -> dict[str, Any]:
        measured = [self.cpu.get("client"), self.workers_cpu(), self.cpu.get("broker")]
        known = [v for v in measured if v is not None]
        machine = self.cpu.get("machine")
        others = None
        if machine is not None and self.total_seconds:
            others = round(max(machine - sum(known), 0.0) / self.total_seconds, 2)
        return {
            "system": self.system,
            "round": self.round,
            "jobs": self.jobs,
            "submit_seconds": round(self.submit_seconds, 4),
            "submitted_per_second": round(self.jobs / self.submit_seconds, 1) if self.submit_seconds else None,
            "total_seconds": round(self.total_seconds, 4),
            "jobs_per_second": round(self.rate, 1),
            "cpu_seconds": {k: (None if v is None else round(v, 3)) for k, v in self.cpu.items()},
            "cpu_ms_per_job": {
                "client": self.ms_per_job(self.cpu.get("client")),
                "workers": self.ms_per_job(self.workers_cpu()),
                "broker": self.ms_per_job(self.cpu.get("broker")),
                "total": self.ms_per_job(sum(known)) if len(known) == len(measured) else None,
                "each_worker": {
                    k: self.ms_per_job(v) for k, v in self.cpu.items() if k not in ("client", "broker", "machine")
                },
            },
            "cores_busy": {
                "measured": round(sum(known) / self.total_seconds, 2) if self.total_seconds else None,
                "others": others,
            },
            "jobs_by_worker": dict(self.ran),
            "max_running_at_once_by_worker": dict(self.max_running) or None,
        }


def pass_budget(jobs: int) -> float:
    return PASS_BASE_SECONDS + jobs * PASS_SECONDS_PER_JOB


# --- func-amqp ------------------------------------------------------------------------


@dataclass
class Setup:
    url: str
    state_dir: Path
    broker: PrivateBroker
    broker_pid: int | None
    minions: list[Child]
    workers: list[Child]
    queue: str
    """Celery's queue in this run."""
    owner: str = ""
    """Whose event queue func-amqp's jobs report to (JobClient's default owner)."""


def ledger_entries(state_dir: Path, minion: str, job_ids: set[str]) -> list[dict[str, Any]]:
    """The minion's job-ledger lines about ``job_ids`` (func_amqp.minion.jobs.JobLedger)."""
    path = Paths(config_dir=state_dir, state_dir=state_dir).job_ledger(minion)
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("job") in job_ids:
            out.append(entry)
    return out


def most_at_once(entries: list[dict[str, Any]]) -> int:
    """The most jobs a minion had started and not yet finished at one moment."""
    marks = sorted(
        (float(e["at"]), -1 if "final" in e else 1) for e in entries if "final" in e or "started" in e
    )
    running = peak = 0
    for _, step in marks:
        running += step
        peak = max(peak, running)
    return peak


def check_ledgers(setup: Setup, job_ids: list[str]) -> dict[str, int]:
    """Every job started exactly once on exactly one minion; the most each ran at once."""
    wanted = set(job_ids)
    starts: dict[str, int] = {}
    peaks: dict[str, int] = {}
    for minion in MINIONS:
        entries = ledger_entries(setup.state_dir, minion, wanted)
        for entry in entries:
            if "started" in entry:
                starts[entry["job"]] = starts.get(entry["job"], 0) + 1
        peaks[minion] = most_at_once(entries)
    twice = sorted(j for j, n in starts.items() if n > 1)
    never = len(wanted) - len(starts)
    if twice or never:
        raise BenchError(
            f"func-amqp job ledgers: {len(twice)} jobs started more than once (e.g. {twice[:3]}), "
            f"{never} never started"
        )
    return peaks


async def func_submit(jobs: JobClient, count: int, batch: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        n = min(batch, count - len(ids))
        ids.extend(await asyncio.gather(*(jobs.submit_to_pool(POOL, "test", "ping", []) for _ in range(n))))
    return ids


async def func_wait(jobs: JobClient, ids: list[str], deadline: float) -> dict[str, int]:
    """Wait for each job in turn; how many each minion ran. Anything but ``{minion: 1}`` ends the run."""
    ran: dict[str, int] = {}
    for job_id in ids:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{FUNC}: gave up waiting for the jobs after the pass's budget")
        code, results = await jobs.wait(job_id, timeout=remaining)
        if code == JOB_ID_RUNNING:
            raise BenchError(f"{FUNC}: job {job_id} still running when the pass's budget ran out")
        if code != JOB_ID_FINISHED or not isinstance(results, dict) or len(results) != 1 or list(results.values()) != [1]:
            raise BenchError(f"{FUNC}: job {job_id} ended {code_name(code)} with {results!r}")
        (minion,) = results
        ran[minion] = ran.get(minion, 0) + 1
    return ran


def check_records(jobs: JobClient, ids: list[str]) -> None:
    """One minion entry per record, taken at the first delivery, never superseded."""
    for job_id in ids:
        record = jobs.store.get(job_id)
        entries = (record or {}).get("minions", {})
        if len(entries) != 1 or any(e.get("superseded") or e.get("attempt", 1) != 1 for e in entries.values()):
            raise BenchError(f"{FUNC}: job {job_id} was delivered more than once: {entries!r}")


async def func_pass(setup: Setup, args: argparse.Namespace, round_no: int) -> Pass:
    meter = CpuMeter({"broker": setup.broker_pid, **{m.name: m.pid for m in setup.minions}}, broker_port(setup.url))
    async with AsyncOverlord("*", timeout=OVERLORD_TIMEOUT) as ol:
        jobs = JobClient(ol)
        setup.owner = jobs.owner
        if args.warmup:
            deadline = time.monotonic() + pass_budget(args.warmup)
            await func_wait(jobs, await func_submit(jobs, args.warmup, args.batch), deadline)
        # read the owner's event queue for the whole pass, also while still submitting;
        # each wait() would otherwise start and stop consuming it
        async with jobs.collector.reading():
            deadline = time.monotonic() + pass_budget(args.jobs)
            before = meter.read()
            start = time.perf_counter()
            ids = await asyncio.wait_for(func_submit(jobs, args.jobs, args.batch), pass_budget(args.jobs))
            submitted = time.perf_counter()
            ran = await func_wait(jobs, ids, deadline)
            done = time.perf_counter()
            cpu = CpuMeter.delta(before, meter.read())
        if len(set(ids)) != len(ids):
            raise BenchError(f"{FUNC}: {len(ids) - len(set(ids))} job ids were given out twice")
        if sum(ran.values()) != args.jobs:
            raise BenchError(f"{FUNC}: {sum(ran.values())} jobs ran, not {args.jobs}")
        check_records(jobs, ids)
    peaks = check_ledgers(setup, ids)
    return Pass(FUNC, round_no, len(ids), submitted - start, done - start, cpu, ran, peaks)


# --- Celery ---------------------------------------------------------------------------


def celery_counts() -> dict[str, int]:
    """Tasks each worker has run since it started, by its own counter."""
    replies = celery_tasks.app.control.inspect(timeout=CONTROL_TIMEOUT).stats() or {}
    counts = {}
    for host, stats in replies.items():
        counts[host.partition("@")[0]] = int(stats.get("total", {}).get(celery_tasks.noop.name, 0))
    if sorted(counts) != sorted(CELERY_WORKERS):
        raise BenchError(f"{CELERY}: stats answered by {sorted(replies)}, expected {list(CELERY_WORKERS)}")
    return counts


def celery_run(count: int, deadline: float) -> tuple[float, float]:
    """Send ``count`` tasks, get every result; seconds to send and seconds in all."""
    start = time.perf_counter()
    results = [celery_tasks.noop.delay() for _ in range(count)]
    submitted = time.perf_counter()
    for result in results:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{CELERY}: gave up waiting for the results after the pass's budget")
        try:
            value = result.get(timeout=remaining)
        except Exception as exc:  # celery's TimeoutError and a task's own failure alike
            raise BenchError(f"{CELERY}: task {result.id} failed: {type(exc).__name__}: {exc}") from exc
        if value != 1:
            raise BenchError(f"{CELERY}: task {result.id} returned {value!r}")
    return submitted - start, time.perf_counter() - start


def celery_pass(setup: Setup, args: argparse.Namespace, round_no: int) -> Pass:
    meter = CpuMeter({"broker": setup.broker_pid, **{w.name: w.pid for w in setup.workers}}, broker_port(setup.url))
    if args.warmup:
        celery_run(args.warmup, time.monotonic() + pass_budget(args.warmup))
    counts_before = celery_counts()
    before = meter.read()
    submit_s, total_s = celery_run(args.jobs, time.monotonic() + pass_budget(args.jobs))
    cpu = CpuMeter.delta(before, meter.read())
    counts_after = celery_counts()
    ran = {w: counts_after[w] - counts_before[w] for w in CELERY_WORKERS}
    if sum(ran.values()) != args.jobs:
        raise BenchError(f"{CELERY}: the workers ran {sum(ran.values())} tasks, not {args.jobs}: {ran}")
    return Pass(CELERY, round_no, args.jobs, submit_s, total_s, cpu, ran)


def wait_celery_ready(workers: list[Child], timeout: float = READY_TIMEOUT) -> None:
    """Until every worker answers a ping (it is consuming); its exit is an error."""
    deadline = time.monotonic() + timeout
    want = {f"{w.name}@{w.name}" for w in workers}
    while time.monotonic() < deadline:
        for w in workers:
            assert w.proc is not None
            if w.proc.poll() is not None:
                raise BenchError(f"{w.name} exited with {w.proc.returncode}:\n{w.output()}")
        answered = set()
        for reply in celery_tasks.app.control.ping(destination=sorted(want), timeout=0.5) or []:
            answered.update(reply)
        if want <= answered:
            return
        time.sleep(POLL_INTERVAL)
    raise BenchError(f"Celery workers not ready within {timeout:g} s:\n" + "\n".join(w.output() for w in workers))


def queue_types(broker: PrivateBroker, queues: dict[str, str]) -> dict[str, str]:
    """``{label: "name: type, durable, arguments"}`` for ``{label: queue name}``, as the
    broker reports them (rabbitmqctl); empty when rabbitmqctl cannot be run."""
    ctl = shutil.which(CTL_PROGRAM, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]))
    if ctl is None:
        return {}
    try:
        out = subprocess.run(
            [ctl, "-n", broker.node, "-q", "list_queues", "name", "type", "durable", "arguments"],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    rows = {parts[0]: parts[1:] for parts in (line.split("\t") for line in out.splitlines()) if len(parts) >= 3}
    found = {}
    for label, name in queues.items():
        if name in rows:
            kind, durable, *arguments = rows[name]
            found[label] = f"{name}: {kind}, durable={durable}" + (f", {arguments[0]}" if arguments else "")
    return found


def rabbitmq_version() -> str:
    with celery_tasks.app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        version = conn.connection.server_properties.get("version", "")
    return version.decode() if isinstance(version, bytes) else str(version)


# --- output ---------------------------------------------------------------------------

COLUMNS = ("scenario", "jobs", "submit s", "submit/s", "total s", "jobs/s",
           "CPU ms/job client", "workers", "broker", "all")


def aggregate(passes: list[Pass], system: str) -> Pass:
    """Every pass of ``system`` pooled: jobs, seconds and CPU added up."""
    total = Pass(system, 0)
    for p in passes:
        if p.system != system:
            continue
        total.jobs += p.jobs
        total.submit_seconds += p.submit_seconds
        total.total_seconds += p.total_seconds
        for k, v in p.cpu.items():
            mine = total.cpu.get(k, 0.0)
            total.cpu[k] = None if v is None or mine is None else mine + v
        for k, v in p.ran.items():
            total.ran[k] = total.ran.get(k, 0) + v
        for k, v in p.max_running.items():
            total.max_running[k] = max(total.max_running.get(k, 0), v)
    return total


def row(label: str, fig: dict[str, Any]) -> list[str]:
    cpu = fig["cpu_ms_per_job"]
    return [
        label,
        str(fig["jobs"]),
        f"{fig['submit_seconds']:.2f}",
        "-" if fig["submitted_per_second"] is None else f"{fig['submitted_per_second']:,.0f}",
        f"{fig['total_seconds']:.2f}",
        f"{fig['jobs_per_second']:,.0f}",
        *("-" if cpu[k] is None else f"{cpu[k]:.2f}" for k in ("client", "workers", "broker", "total")),
    ]


def print_report(report: dict[str, Any]) -> None:
    rows = [row(f"{p['system']}, round {p['round']}", p) for p in report["passes"]]
    rows += [row(f"{name}, all passes", report["totals"][name]) for name in (FUNC, CELERY)]
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    s = report["settings"]
    print(f"builder pool: {s['jobs']:,} no-op jobs a pass over 2 workers with {s['slots']} slots each")
    print(fmt(COLUMNS))
    print(fmt(["-" * w for w in widths]))
    for r in rows:
        print(fmt(r))
    print()
    for line in report["lines"]:
        print(line)


def summary_lines(report: dict[str, Any]) -> list[str]:
    r, t, s, m = report["ratios"], report["totals"], report["settings"], report["machine"]
    f, c = t[FUNC], t[CELERY]

    def who(fig: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(fig["jobs_by_worker"].items()))

    def busy(fig: dict[str, Any]) -> str:
        b = fig["cores_busy"]
        return f"{b['measured']:.2f} (+{'?' if b['others'] is None else format(b['others'], '.2f')} other work)"

    peaks = f["max_running_at_once_by_worker"] or {}
    by_round = ", ".join(f"{x:.0%}" for x in r["throughput_func_vs_celery_by_round"])
    return [
        f"throughput func-amqp / Celery: {r['throughput_func_vs_celery']:.0%} "
        f"(by round: {by_round}); submission rate func-amqp / Celery: {r['submission_func_vs_celery']:.0%}",
        f"CPU per job, all measured processes: func-amqp {f['cpu_ms_per_job']['total']:.2f} ms, "
        f"Celery {c['cpu_ms_per_job']['total']:.2f} ms",
        f"jobs run by each worker, all passes: func-amqp {who(f)}; Celery {who(c)}",
        "func-amqp jobs running at once at most (job ledgers): "
        + ", ".join(f"{k} {v}" for k, v in sorted(peaks.items()))
        + f", of {s['slots']} slots each",
        f"cores busy, of {m['cpus']}: func-amqp {busy(f)}, Celery {busy(c)}",
        "every pass checked: N distinct jobs, each run once (func-amqp: job records and minion "
        "ledgers; Celery: results and the workers' task counters)",
        "func-amqp: signed requests and events, persistent confirmed publishes to durable quorum "
        "queues, audit log and job ledger on the minions, one job-store file per job on the client; "
        "funcd runs jobs in its thread pool",
        "Celery: task_acks_late, worker_prefetch_multiplier 1, --pool threads, persistent task "
        "messages without publisher confirms, rpc:// results (non-persistent messages, kept in the "
        "client's memory only, unlike func-amqp's durable job events)",
        "queues as the broker reports them (rabbitmqctl list_queues name type durable arguments):"
        + "".join(f"\n  {k}: {v}" for k, v in report["queues"].items()) if report["queues"] else
        "queues: not read (no rabbitmqctl)",
        f"{m['cpus']} CPUs, {m['os']}, Python {m['python']}, Celery {m['celery']} (kombu {m['kombu']}), "
        f"RabbitMQ {report['rabbitmq'] or '?'} ({s['broker']}); warm-up {s['warmup']} jobs a pass, "
        f"{s['rounds']} rounds in ABBA order",
        f"load average before {report['load']['before']}, after {report['load']['after']}; "
        f"tree {report['tree'] or '?'}",
    ]


# --- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="timed no-op jobs a pass (default: %(default)s)")
    parser.add_argument("--slots", type=int, default=4, help="pool slots (Celery: threads) a worker (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one func-amqp and one Celery pass, ABBA order (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed jobs before each pass (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="func-amqp submissions in flight at once (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="abandon the whole run after this long (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("jobs", "slots", "rounds", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def build_report(args: argparse.Namespace, argv: Sequence[str] | None, passes: list[Pass], extra: dict[str, Any]) -> dict[str, Any]:
    import celery
    import kombu

    totals = {name: aggregate(passes, name) for name in (FUNC, CELERY)}
    by_round = []
    for n in range(1, args.rounds + 1):
        f = next(p for p in passes if p.system == FUNC and p.round == n)
        c = next(p for p in passes if p.system == CELERY and p.round == n)
        by_round.append(round(f.rate / c.rate, 3))
    f, c = totals[FUNC], totals[CELERY]
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/pool.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**machine_info(), "celery": celery.__version__, "kombu": kombu.__version__},
        "tree": tree_revision(),
        "rabbitmq": extra["rabbitmq"],
        "queues": extra["queues"],
        "settings": {
            "jobs": args.jobs,
            "slots": args.slots,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "func_submit_batch": args.batch,
            "broker": "private node started by the benchmark",
            "func_minions": list(MINIONS),
            "celery_workers": list(CELERY_WORKERS),
            "celery": "task_acks_late=True, worker_prefetch_multiplier=1, --pool threads, rpc:// result backend",
            "order": [f"{p.system} {p.round}" for p in passes],
        },
        "load": extra["load"],
        "passes": [p.summary() for p in passes],
        "totals": {name: p.summary() for name, p in totals.items()},
        "ratios": {
            "throughput_func_vs_celery": round(f.rate / c.rate, 3),
            "throughput_func_vs_celery_by_round": by_round,
            "submission_func_vs_celery": round(c.submit_seconds / f.submit_seconds, 3) if f.submit_seconds else None,
        },
    }
    report["lines"] = summary_lines(report)
    return report


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[Setup]:
    """The broker, the two funcd minions and the two Celery workers, ready; always
    stopped again, and the run's temporary directory removed, however the block ends."""
    global celery_tasks
    base = Path(tempfile.mkdtemp(prefix="func-amqp-bench-pool-"))
    base.chmod(0o755)  # the node runs as the rabbitmq user when started by root
    broker: PrivateBroker | None = None
    children: list[Child] = []
    try:
        conf_dir, state_dir = base / "conf", base / "state"
        conf_dir.mkdir()
        state_dir.mkdir()
        minion_confs = []
        for name in MINIONS:
            conf = base / f"conf-{name}"
            write_minion_conf(conf, base / f"audit-{name}.log", signed=True)
            with (conf / "minion.conf").open("a", encoding="utf-8") as fh:
                fh.write(f"pools = {POOL}:{args.slots}\n")  # still [main]: the file has no other section
            minion_confs.append(conf)
        queue = f"bench.celery.{uuid.uuid4().hex[:8]}"
        # This process must not read or write the machine's own func-amqp settings.
        os.environ[ENV_CONFIG_DIR] = str(conf_dir)
        os.environ[ENV_STATE_DIR] = str(state_dir)
        os.environ.pop(ENV_BROKER_URL, None)

        broker = PrivateBroker(Paths(config_dir=conf_dir, state_dir=base / "broker-state"))
        url = broker.start(timeout=BROKER_START_TIMEOUT)
        os.environ[ENV_BROKER_URL] = url  # AsyncOverlord finds the broker, and the CA in ENV_STATE_DIR
        os.environ[CELERY_BROKER_ENV], os.environ[CELERY_QUEUE_ENV] = url, queue
        celery_tasks = importlib.import_module("celery_tasks")  # the workers import it with the same environment
        for name in MINIONS:  # both share this process's state directory: certificates and the CA
            provision(Paths(config_dir=conf_dir, state_dir=state_dir), name)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(BENCH), os.environ.get("PYTHONPATH")])),
        }
        minions = [
            Child(name, [sys.executable, "-m", "func_amqp.cli.funcd", "--name", name, "-c", str(conf)],
                  {**env, ENV_CONFIG_DIR: str(conf)}, base / f"{name}.log", "serving")
            for name, conf in zip(MINIONS, minion_confs)
        ]
        workers = [
            Child(name, [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "--pool", "threads",
                         "--concurrency", str(args.slots), "--without-heartbeat", "--without-gossip",
                         "--without-mingle", "-Q", queue, "-n", f"{name}@{name}"],
                  env, base / f"{name}.log", "")  # ready: when it answers a ping
            for name in CELERY_WORKERS
        ]
        for child in (*minions, *workers):
            children.append(child)
            child.start()
        for child in minions:
            child.wait_ready()
        wait_celery_ready(workers)
        yield Setup(url, state_dir, broker, broker.status().pid, minions, workers, queue)
    finally:
        with signals_ignored():
            if celery_tasks is not None:
                celery_tasks.app.close()
            for child in children:
                child.stop()
            if broker is not None:
                broker.stop(timeout=BROKER_STOP_TIMEOUT)
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """No Ctrl-C, SIGTERM or ``--max-seconds`` alarm while everything is being stopped:
    a second Ctrl-C must not leave a broker behind. Every step of the stop is bounded
    (Child.stop, PrivateBroker.stop), so nothing can hang here for long."""
    signal.alarm(0)
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGALRM, abandon_run)
    signal.signal(signal.SIGTERM, abandon_run)
    signal.alarm(max(1, int(args.max_seconds)))
    load_before = os.getloadavg()
    try:
        with running(args) as setup:
            extra: dict[str, Any] = {"rabbitmq": rabbitmq_version()}
            passes: list[Pass] = []
            for n in range(1, args.rounds + 1):
                for system in (FUNC, CELERY) if n % 2 else (CELERY, FUNC):
                    if system == FUNC:
                        p = asyncio.run(func_pass(setup, args, n))
                    else:
                        p = celery_pass(setup, args, n)
                    passes.append(p)
                    print(f"  {system} round {n}: {p.jobs} jobs in {p.total_seconds:.2f} s, {p.rate:,.0f} jobs/s",
                          file=sys.stderr, flush=True)
            extra["queues"] = queue_types(setup.broker, {
                "func-amqp jobs": names.pool_queue(names.pool_key(POOL)),
                "func-amqp job events": names.job_events_queue(setup.owner),
                "Celery tasks": setup.queue,
                "Celery results": celery_tasks.app.backend.oid,  # rpc://: this thread's reply queue
            })
        extra["load"] = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
        report = build_report(args, argv, passes, extra)
        print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        return 0
    except (BenchError, FuncAmqpError, Abandoned) as exc:
        print(f"pool benchmark: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pool benchmark: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
