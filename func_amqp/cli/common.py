"""What every func-amqp command shares: error reporting, exit codes, logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Callable, Mapping

from func_amqp.config import Paths
from func_amqp.errors import FuncAmqpError, FuncException

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

USER_ERRORS: tuple[type[BaseException], ...] = (FuncAmqpError, FuncException)
"""Failures reported as one line; anything else is a bug and keeps its traceback."""

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

CLIENT_LIBRARY_LOGGERS = ("aio_pika", "aiormq")
"""Their reconnect chatter belongs in a daemon's log, not on an interactive terminal."""


OK_MARK = "[ ok ... ]"
FAILED_MARK = "[ FAILED ]"
"""func's per-minion marks, as its ping and copyfile printed them."""


def print_outcomes(outcomes: Mapping[str, tuple[bool, str]]) -> int:
    """One line per minion, sorted: ``[ ok ... ] name: detail``; EXIT_FAILED if any failed."""
    for minion in sorted(outcomes):
        ok, detail = outcomes[minion]
        suffix = f": {detail}" if detail else ""
        print(f"{OK_MARK if ok else FAILED_MARK} {minion}{suffix}")
    return EXIT_OK if all(ok for ok, _ in outcomes.values()) else EXIT_FAILED


def positive_seconds(text: str) -> float:
    """argparse type for durations."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def report(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body, turning user-facing errors into one line and exit 1."""
    try:
        return body()
    except USER_ERRORS as exc:
        report(prog, str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def setup_logging(level: str, *, quiet_client_library: bool = False, prog: str | None = None) -> None:
    """Daemons log with times and sources; a command (``prog``) says ``prog: message``."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    fmt = f"{prog}: %(levelname)s: %(message)s" if prog else LOG_FORMAT
    logging.basicConfig(level=numeric, format=fmt, stream=sys.stderr)
    if quiet_client_library:
        for name in CLIENT_LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)


# --- func-amqp's command groups ------------------------------------------------------

Handler = Callable[[argparse.Namespace, Paths], int]
if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


class CommandGroup:
    """One ``func-amqp NAME ...`` group of subcommands."""

    name: str = ""
    help: str = ""

    def add_to(self, commands: Subcommands) -> None:
        parser = commands.add_parser(self.name, help=self.help, description=self.help)
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        self.add_actions(actions)

    def add_actions(self, actions: Subcommands) -> None:
        raise NotImplementedError
