"""Running a child process for a module: its own process group, streamed output,
timeouts and cancel ended the way Copr ends builds.

The child starts in a new session (so it leads its own process group). On timeout or
cancel the whole group gets SIGINT, then SIGTERM ``term_after`` seconds later, then
SIGKILL ``kill_after`` seconds after that: tools such as mock clean up on SIGINT. argv
is always a list; no shell is involved unless the caller puts one in argv.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from func_amqp.minion import progress

TERM_AFTER = 10.0
KILL_AFTER = 10.0
POLL_INTERVAL = 0.2
TAIL_LINES = 100
READER_JOIN_TIMEOUT = 5.0


@dataclass
class ProcessResult:
    """How a child process ended."""

    argv: list[str]
    returncode: int
    timed_out: bool = False
    cancelled: bool = False
    duration: float = 0.0
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.cancelled


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


class _Escalation:
    """SIGINT now, SIGTERM and SIGKILL later, to one process group; idempotent."""

    def __init__(self, pgid: int, term_after: float, kill_after: float) -> None:
        self.pgid = pgid
        self.term_after = term_after
        self.kill_after = kill_after
        self.started: float | None = None
        self._sent: set[int] = set()

    def begin(self) -> None:
        if self.started is None:
            self.started = time.monotonic()
            self._send(signal.SIGINT)

    def tick(self) -> None:
        if self.started is None:
            return
        elapsed = time.monotonic() - self.started
        if elapsed >= self.term_after:
            self._send(signal.SIGTERM)
        if elapsed >= self.term_after + self.kill_after:
            self._send(signal.SIGKILL)

    def _send(self, sig: int) -> None:
        if sig not in self._sent:
            self._sent.add(sig)
            signal_group(self.pgid, sig)


@contextlib.contextmanager
def ended_by_cancel(pid: int) -> Iterator[None]:
    """While inside, a cancel of the current call ends process group ``pid`` (SIGTERM),
    and a forced stop kills it: for modules that run a child their own way."""
    context = progress.current_call()
    with contextlib.ExitStack() as hooks:
        if context is not None:
            hooks.enter_context(context.on_cancel(lambda: signal_group(pid, signal.SIGTERM)))
            hooks.enter_context(context.on_kill(lambda: signal_group(pid, signal.SIGKILL)))
        yield


def run(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    on_poll: Callable[[], None] | None = None,
    log_file: str | Path | None = None,
    term_after: float = TERM_AFTER,
    kill_after: float = KILL_AFTER,
) -> ProcessResult:
    """Run ``argv`` to its end, streaming merged stdout/stderr lines to ``on_line``.

    ``on_poll`` is called every ``POLL_INTERVAL`` s while the child runs (to tail a log
    file, say). A cancel of the current call ends the process group like a timeout.
    """
    argv = [str(a) for a in argv]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    escalation = _Escalation(proc.pid, term_after, kill_after)
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
    reader.start()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    timed_out = False
    context = progress.current_call()
    log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
    try:
        with contextlib.ExitStack() as hooks:
            if context is not None:
                hooks.enter_context(context.on_cancel(escalation.begin))
                hooks.enter_context(context.on_kill(lambda: signal_group(proc.pid, signal.SIGKILL)))
            eof = False
            while not eof or proc.poll() is None:
                try:
                    line = lines.get(timeout=POLL_INTERVAL)
                except queue.Empty:
                    line = ""
                if line is None:
                    eof = True
                elif line:
                    tail.append(line)
                    if log is not None:
                        log.write(line + "\n")
                    if on_line is not None:
                        on_line(line)
                if timeout is not None and not timed_out and time.monotonic() - started > timeout:
                    timed_out = True
                    escalation.begin()
                escalation.tick()
                if on_poll is not None:
                    on_poll()
                if eof and proc.poll() is None:
                    time.sleep(POLL_INTERVAL)
    finally:
        if proc.poll() is None:  # the caller's thread is leaving: leave nothing behind
            signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        signal_group(proc.pid, signal.SIGKILL)  # orphans left in the group
        reader.join(READER_JOIN_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()
        if log is not None:
            log.close()
    return ProcessResult(
        argv=argv,
        returncode=proc.returncode,
        timed_out=timed_out,
        cancelled=progress.cancelled(),
        duration=time.monotonic() - started,
        tail=list(tail),
    )


def _read_lines(proc: subprocess.Popen[bytes], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put(raw.decode("utf-8", errors="replace").rstrip("\n"))
    lines.put(None)
