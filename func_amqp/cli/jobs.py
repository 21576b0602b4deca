"""Durable jobs at the command line: ``func ... call --async`` and ``func-amqp jobs``.

    func "<spec>" call -a MODULE METHOD [ARGS]      send a job, show it to its end
    func "<spec>" call -n MODULE METHOD [ARGS]      send a job, print its id
    func "<spec>" call -s JOB_ID                     func's (code, results)
    func-amqp jobs submit [--pool NAME [--tag K=V]... | --spec SPEC] MODULE METHOD [ARGS]
    func-amqp jobs list | show JOB_ID | attach JOB_ID | cancel JOB_ID | forget JOB_ID

Progress goes to stderr (as for interactive calls); each minion's result is printed on
stdout as it arrives, func's ``(minion, result)`` pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from func_amqp import utils
from func_amqp.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CommandGroup, positive_seconds
from func_amqp.cli.display import MODES, CallDisplay, make_display
from func_amqp.config import Paths
from func_amqp.errors import ArgumentError
from func_amqp.overlord.caller import AsyncOverlord, CallEvent
from func_amqp.overlord.job_client import JobClient
from func_amqp.overlord.jobs import (
    JOB_ID_FINISHED,
    JOB_ID_LOST_IN_SPACE,
    JobStore,
    code_name,
    deciding_entries,
    entry_value,
    job_status,
)
from func_amqp.protocol.messages import JobState, ProgressIndication

if TYPE_CHECKING:
    from func_amqp.cli.common import Subcommands

Printer = Callable[[Any], str]


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """``func ... call``'s options for func's async mode."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-a", "--async", dest="job_mode", action="store_const", const="async", help="send the call as a durable job and show it until it ends")
    mode.add_argument("-n", "--nopoll", dest="job_mode", action="store_const", const="nopoll", help="send the call as a durable job, print its id and stop")
    mode.add_argument("-s", "--jobstatus", dest="job_mode", action="store_const", const="jobstatus", help="print func's (code, results) for the job id given in place of MODULE")
    parser.add_argument("--ttl", type=positive_seconds, help="with -a/-n: seconds the job may wait for a minion that is down (default: job_ttl in overlord.conf)")


async def run_job_call(ol: AsyncOverlord, args: argparse.Namespace, call_args: list[Any], show: Printer) -> int:
    """``func ... call`` with -a, -n or -s."""
    jobs = JobClient(ol)
    if args.job_mode == "jobstatus":
        code, results = await jobs.status(args.module)
        print(show((code, results)))
        return EXIT_OK if code == JOB_ID_FINISHED and not _failed(results) else EXIT_FAILED
    job_id = await jobs.submit(args.module, args.method, call_args, ttl=args.ttl)
    if args.job_mode == "nopoll":
        print(f"JOB_ID: {job_id!r}")
        return EXIT_OK
    print(f"JOB_ID: {job_id!r}", file=sys.stderr)
    return await watch(jobs, job_id, args, show)


async def watch(jobs: JobClient, job_id: str, args: argparse.Namespace, show: Printer) -> int:
    """Show a job's states and live progress; print each result as it arrives."""
    record = jobs.store.get(job_id)
    names = sorted(record["minions"]) if record else []
    printed: set[str] = set()
    try:
        with make_display(args.progress, names, args.logs) as display:

            def on_change(record: dict[str, Any]) -> None:
                for minion, entry in sorted(deciding_entries(record).items()):
                    state = JobState(entry["state"])
                    if state.final and minion not in printed:
                        printed.add(minion)
                        result = entry_value(entry)
                        display.finished(minion, state is JobState.SUCCEEDED)
                        print(show((minion, result)), flush=True)
                    elif not state.final:
                        _show_state(display, minion, entry)

            code, results = await jobs.attach(job_id, display.event, on_change=on_change)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\nstopped watching; the job goes on. See it again with: func-amqp jobs attach '{job_id}'", file=sys.stderr)
        return EXIT_INTERRUPTED
    if code == JOB_ID_LOST_IN_SPACE:
        raise ArgumentError(f"no job {job_id!r} is recorded here")
    return EXIT_FAILED if _failed(results) else EXIT_OK


def _failed(results: Any) -> bool:
    return not isinstance(results, dict) or any(utils.is_error(r) for r in results.values())


def _show_state(display: CallDisplay, minion: str, entry: dict[str, Any]) -> None:
    progress = entry.get("progress")
    if entry["state"] == JobState.PROGRESS.value and isinstance(progress, dict):
        indication = ProgressIndication(str(progress.get("phase", "")), progress.get("current"), progress.get("total"), str(progress.get("message", "")))
    else:
        indication = ProgressIndication(entry["state"], message=entry.get("detail", ""))
    display.event(CallEvent(minion, "", progress=indication))


# --- func-amqp jobs ------------------------------------------------------------------------


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _parse_tags(items: Sequence[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ArgumentError(f"--tag wants NAME=VALUE, got {item!r}")
        tags[key] = value
    return tags


class JobsCommands(CommandGroup):
    """Durable jobs this host and user sent: submit, list, show, attach, cancel."""

    name = "jobs"
    help = "durable jobs and builder pools: submit, list, show, attach, cancel"

    def add_actions(self, actions: Subcommands) -> None:
        submit = actions.add_parser("submit", help="send a job to a builder pool or to minions")
        target = submit.add_mutually_exclusive_group(required=True)
        target.add_argument("--pool", help="the pool one free member of which runs the job")
        target.add_argument("--spec", help="the minions each of which runs the job (func's spec syntax)")
        submit.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE", help="with --pool: a tag the member must have (repeatable)")
        submit.add_argument("--ttl", type=positive_seconds, help="seconds the job may wait (default: job_ttl in overlord.conf)")
        submit.add_argument("-w", "--wait", action="store_true", help="show the job until it ends, as 'attach' does")
        self._add_watch_options(submit)
        submit.add_argument("module")
        submit.add_argument("method")
        submit.add_argument("arguments", nargs=argparse.REMAINDER, help="method arguments, passed as strings")
        submit.set_defaults(handler=self.submit)

        actions.add_parser("list", help="every job recorded here, newest last").set_defaults(handler=self.list)
        for name, help_text, handler in (
            ("show", "each minion's state in a job, with results", self.show),
            ("attach", "follow a job's progress and logs until it ends", self.attach),
            ("cancel", "stop a job wherever it has not ended", self.cancel),
            ("forget", "drop a job's record from this host", self.forget),
        ):
            action = actions.add_parser(name, help=help_text)
            if name == "attach":
                self._add_watch_options(action)
            action.add_argument("job_id", metavar="JOB_ID")
            action.set_defaults(handler=handler)

    @staticmethod
    def _add_watch_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--progress", choices=MODES, default="auto", help="how to show progress (default: auto)")
        parser.add_argument("-L", "--logs", action="store_true", help="print the minions' log lines as they come")

    @staticmethod
    def _with_jobs(paths: Paths, work: Callable[[JobClient], Any], spec: str = "*") -> Any:
        async def run() -> Any:
            async with AsyncOverlord(spec, config_dir=paths.config_dir) as ol:
                return await work(JobClient(ol))

        return asyncio.run(run())

    def submit(self, args: argparse.Namespace, paths: Paths) -> int:
        async def go(jobs: JobClient) -> int:
            if args.pool:
                job_id = await jobs.submit_to_pool(args.pool, args.module, args.method, args.arguments, tags=_parse_tags(args.tag), ttl=args.ttl)
            else:
                if args.tag:
                    raise ArgumentError("--tag goes with --pool")
                job_id = await jobs.submit(args.module, args.method, args.arguments, ttl=args.ttl)
            print(f"JOB_ID: {job_id!r}")
            return await watch(jobs, job_id, args, repr) if args.wait else EXIT_OK

        return int(self._with_jobs(paths, go, args.spec or "*"))

    def list(self, args: argparse.Namespace, paths: Paths) -> int:
        for record in self._with_jobs(paths, lambda jobs: jobs.records()):
            code, _ = job_status(record)
            states = sorted({entry["state"] for entry in deciding_entries(record).values()})
            print(f"{_when(record.get('created'))}  {code_name(code):<12} {','.join(states):<24} {record['id']}")
        return EXIT_OK

    def show(self, args: argparse.Namespace, paths: Paths) -> int:
        record = self._with_jobs(paths, lambda jobs: jobs.record(args.job_id))
        if record is None:
            raise ArgumentError(f"no job {args.job_id!r} is recorded here; 'func-amqp jobs list' shows the jobs there are")
        code, _ = job_status(record)
        target = f"pool {record['pool']}" + (f" with {record['tags']}" if record.get("tags") else "") if record.get("pool") else record["spec"]
        print(f"job:      {record['id']}")
        print(f"call:     {record['module']}.{record['method']}{tuple(record['args'])!r}")
        print(f"target:   {target}")
        print(f"sent:     {_when(record.get('created'))}, waits until {_when(record.get('expires'))}")
        print(f"status:   {code_name(code)} ({code})")
        if record.get("cancel_requested"):
            print(f"cancel:   requested {_when(record['cancel_requested'])}")
        for minion, entry in sorted(record["minions"].items()):
            extra = f", delivery {entry['attempt']}" if entry.get("attempt", 1) > 1 else ""
            print(f"  {minion}: {entry['state']} at {_when(entry.get('at'))}{extra}" + (f" ({entry['detail']})" if entry.get("detail") else ""))
            if JobState(entry["state"]).final:
                print(f"    result: {entry_value(entry)!r}")
        return EXIT_OK

    def attach(self, args: argparse.Namespace, paths: Paths) -> int:
        async def go(jobs: JobClient) -> int:
            if await jobs.record(args.job_id) is None:
                raise ArgumentError(f"no job {args.job_id!r} is recorded here; 'func-amqp jobs list' shows the jobs there are")
            return await watch(jobs, args.job_id, args, repr)

        return int(self._with_jobs(paths, go))

    def cancel(self, args: argparse.Namespace, paths: Paths) -> int:
        answers = self._with_jobs(paths, lambda jobs: jobs.cancel(args.job_id))
        for minion, answer in sorted(answers.items()):
            if isinstance(answer, bool):
                text = "cancelled" if answer else "not running there (it may have just ended)"
            elif utils.is_error(answer):
                text = str(answer[2])
            else:
                text = str(answer)
            print(f"{minion}: {text}")
        return EXIT_OK

    def forget(self, args: argparse.Namespace, paths: Paths) -> int:
        if not JobStore(paths.job_store_dir).forget(args.job_id):
            raise ArgumentError(f"no job {args.job_id!r} is recorded here")
        print(f"forgot {args.job_id}")
        return EXIT_OK
