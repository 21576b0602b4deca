"""``func``: the overlord's command line, in func's syntax.

    func [-t TIMEOUT] [-e EXCLUDE] [-c DIR] "<spec>" call [-j|--raw|-b] MODULE METHOD [ARGS...]
    func "<spec>" ping
    func "<spec>" list_minions
    func "<spec>" follow CALL_ID        re-attach to a running call
    func "<spec>" cancel CALL_ID        cancel it
    func "<spec>" copyfile -f FILE --remotepath PATH
    func "<spec>" getfile -r PATH -l DIR

Exit status: 0 when every targeted minion succeeded, 1 when any failed or did not
answer (or nothing matched), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pprint
import sys
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import func_amqp
from func_amqp import utils
from func_amqp.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, positive_seconds, print_outcomes, run_main, setup_logging
from func_amqp.cli.display import MODES, make_display
from func_amqp.cli.jobs import add_job_options, run_job_call
from func_amqp.cli.transfer import add_transfer_commands
from func_amqp.errors import ArgumentError, RemoteCallError
from func_amqp.minion.recent import KEEP_SECONDS
from func_amqp.overlord.arguments import convert_cli_args
from func_amqp.overlord.caller import AsyncOverlord, CallEvent, EventCallback, new_call_id

PROG = "func"
LOG_LEVEL = "WARNING"

OUTPUT_FORMATS = ("pprint", "json", "raw", "basic")


def _format(results: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2, sort_keys=True, default=_json_default)
    if fmt == "raw":
        return repr(results)
    if fmt == "basic":
        return str(results)
    return pprint.pformat(results)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _status(results: dict[str, Any]) -> int:
    return EXIT_FAILED if any(utils.is_error(r) for r in results.values()) else EXIT_OK


# --- subcommands ----------------------------------------------------------------------


@dataclass
class RunningCall:
    """What Ctrl-C needs to tell the user how to find the call again."""

    spec: str = ""
    call_id: str = ""


RUNNING = RunningCall()


async def _watched(ol: AsyncOverlord, args: argparse.Namespace, call: Callable[[EventCallback], Awaitable[Any]]) -> int:
    """Run ``call`` with the progress display, then print the results."""
    minions = await ol.minions()
    with make_display(args.progress, minions, args.logs) as display:

        def on_event(event: CallEvent) -> None:
            display.event(event)

        results = await call(on_event)
        for minion, result in results.items():
            display.finished(minion, not utils.is_error(result))
    print(_format(results, args.output))
    if any(utils.is_error(r) and r[1].endswith("MinionTimeout") for r in results.values()):
        _hint(f"some minions did not answer in time; their call {RUNNING.call_id} may still run.")
    return _status(results)


def _hint(first_line: str) -> None:
    print(
        f"{PROG}: {first_line}\n"
        f"  follow it:  {PROG} '{RUNNING.spec}' follow {RUNNING.call_id}\n"
        f"  cancel it:  {PROG} '{RUNNING.spec}' cancel {RUNNING.call_id}",
        file=sys.stderr,
    )


async def cmd_call(ol: AsyncOverlord, args: argparse.Namespace) -> int:
    call_args: list[Any] = list(args.arguments)
    if args.job_mode == "jobstatus":
        return await run_job_call(ol, args, [], lambda value: _format(value, args.output))
    if call_args:
        call_args = await _converted(ol, args.module, args.method, call_args)
    if args.job_mode:
        return await run_job_call(ol, args, call_args, lambda value: _format(value, args.output))
    RUNNING.spec, RUNNING.call_id = args.spec, new_call_id()
    return await _watched(
        ol, args, lambda on_event: ol.call(args.module, args.method, *call_args, call_id=RUNNING.call_id, on_event=on_event)
    )


async def cmd_follow(ol: AsyncOverlord, args: argparse.Namespace) -> int:
    RUNNING.spec, RUNNING.call_id = args.spec, args.call_id
    return await _watched(ol, args, lambda on_event: ol.follow(args.call_id, on_event=on_event))


async def cmd_cancel(ol: AsyncOverlord, args: argparse.Namespace) -> int:
    results = await ol.cancel(args.call_id)
    return print_outcomes(
        {
            m: (False, r[2]) if utils.is_error(r) else (True, "cancelled" if r else "not running")
            for m, r in results.items()
        }
    )


def _interrupted() -> int:
    if RUNNING.call_id:
        print(file=sys.stderr)
        _hint(f"stopped waiting; the call {RUNNING.call_id} goes on.")
    return EXIT_INTERRUPTED


async def _converted(ol: AsyncOverlord, module: str, method: str, raw: list[str]) -> list[Any]:
    """Convert CLI strings with the method's registered types, when it has them."""
    try:
        registered = await ol.method_args(module)
    except RemoteCallError:
        return raw  # the call itself will report what is wrong, per minion
    entry = registered.get(method) if isinstance(registered, dict) else None
    spec = entry.get("args") if isinstance(entry, dict) else None
    try:
        return convert_cli_args(spec, raw, f"{module}.{method}")
    except ArgumentError as exc:
        raise ArgumentError(f"{exc} (see: func '{ol.server_spec}' call {module} get_method_args)") from None


async def cmd_ping(ol: AsyncOverlord, args: argparse.Namespace) -> int:
    results = await ol.call("test", "ping")
    return print_outcomes(
        {m: (not utils.is_error(r), r[2] if utils.is_error(r) and args.verbose else "") for m, r in results.items()}
    )


async def cmd_list_minions(ol: AsyncOverlord, args: argparse.Namespace) -> int:
    for minion in await ol.minions():
        print(minion)
    return EXIT_OK


Command = Callable[[AsyncOverlord, argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Call func modules on the minions a target spec names.",
        epilog="Spec: ';'-separated globs (case-insensitive), @group or @group:glob. "
        'Example: func "web*;@db" call service restart httpd',
    )
    parser.add_argument("-t", "--timeout", type=positive_seconds, help="seconds to wait for each minion (default: call_timeout in overlord.conf)")
    parser.add_argument("-e", "--exclude", metavar="SPEC", help="minions to leave out, same syntax as the spec")
    parser.add_argument("-c", "--conf", metavar="DIR", help="configuration directory")
    parser.add_argument("--version", action="version", version=f"%(prog)s {func_amqp.__version__}")
    parser.add_argument("spec", help="which minions: globs, @group, ';'-separated")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    call = sub.add_parser("call", help="call MODULE METHOD [ARGS...] on every targeted minion")
    out = call.add_mutually_exclusive_group()
    out.add_argument("-j", "--json", dest="output", action="store_const", const="json", help="print results as JSON")
    out.add_argument("--raw", dest="output", action="store_const", const="raw", help="print Python's repr of the results")
    out.add_argument("-b", "--basic", dest="output", action="store_const", const="basic", help="print str() of the results")
    _add_watch_options(call)
    add_job_options(call)
    call.add_argument("module", help="the module (with -s: the job id)")
    call.add_argument("method", nargs="?")
    call.add_argument("arguments", nargs=argparse.REMAINDER, help="method arguments; converted with the method's registered types")
    call.set_defaults(handler=cmd_call, output="pprint")

    ping = sub.add_parser("ping", help="check which targeted minions answer")
    ping.add_argument("-v", "--verbose", action="store_true", help="say why a minion failed")
    ping.set_defaults(handler=cmd_ping)

    lm = sub.add_parser("list_minions", help="print the minions the spec names")
    lm.set_defaults(handler=cmd_list_minions)

    follow = sub.add_parser(
        "follow",
        help=f"re-attach to a running call: its progress, then its results (at once for a call that ended in the last {KEEP_SECONDS:g} s)",
    )
    _add_watch_options(follow)
    follow.add_argument("-j", "--json", dest="output", action="store_const", const="json", default="pprint")
    follow.add_argument("call_id", metavar="CALL_ID")
    follow.set_defaults(handler=cmd_follow)

    cancel = sub.add_parser("cancel", help="cancel a running call (its child processes are ended)")
    cancel.add_argument("call_id", metavar="CALL_ID")
    cancel.set_defaults(handler=cmd_cancel)
    add_transfer_commands(sub)
    return parser


def _add_watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=MODES,
        default="auto",
        help="how to show progress: live table on a terminal, plain lines otherwise (default: auto)",
    )
    parser.add_argument("-L", "--logs", action="store_true", help="print the minions' log lines as they come")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "call":
        if args.job_mode == "jobstatus" and (args.method or args.arguments):
            parser.error("--jobstatus takes one job id, in place of MODULE: func '<spec>' call -s JOB_ID")
        if args.job_mode != "jobstatus" and args.method is None:
            parser.error("call needs MODULE and METHOD, e.g. func '*' call test ping")
        if args.ttl is not None and args.job_mode not in ("async", "nopoll"):
            parser.error("--ttl goes with -a/--async or -n/--nopoll")
    setup_logging(LOG_LEVEL, quiet_client_library=True, prog=PROG)

    async def run() -> int:
        async with AsyncOverlord(args.spec, exclude_spec=args.exclude, timeout=args.timeout, config_dir=args.conf) as ol:
            handler: Command = args.handler
            return await handler(ol, args)

    def body() -> int:
        try:
            return asyncio.run(run())
        except KeyboardInterrupt:
            return _interrupted()

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
