"""Showing running calls: a live per-minion table on a terminal, plain lines elsewhere.

Both write to stderr, so stdout keeps only the results (pipes and scripts stay clean).
Nothing is shown for calls that report no progress, so ``func "*" ping`` looks as it did.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from func_amqp.overlord.caller import CallEvent
from func_amqp.protocol.messages import ProgressIndication

REFRESH_PER_SECOND = 8
MODES = ("auto", "live", "plain", "none")


@dataclass
class _Row:
    progress: ProgressIndication | None = None
    state: str = "running"


def _describe(progress: ProgressIndication) -> str:
    count = f" [{progress.current}/{progress.total}]" if progress.current is not None and progress.total else ""
    message = f" {progress.message}" if progress.message else ""
    return f"{progress.phase}{count}{message}"


class CallDisplay:
    """Base: collects events per minion; subclasses decide how to show them."""

    def __init__(self, minions: list[str], show_logs: bool, stream: TextIO) -> None:
        self.rows = {m: _Row() for m in minions}
        self.show_logs = show_logs
        self.stream = stream

    def __enter__(self) -> "CallDisplay":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, event: CallEvent) -> None:
        row = self.rows.setdefault(event.minion, _Row())
        if event.progress is not None:
            row.progress = event.progress
            self.on_progress(event.minion, event.progress)
        if event.lines and self.show_logs:
            self.on_lines(event.minion, event.lines)

    def finished(self, minion: str, ok: bool) -> None:
        self.rows.setdefault(minion, _Row()).state = "ok" if ok else "FAILED"

    def on_progress(self, minion: str, progress: ProgressIndication) -> None:
        return None

    def on_lines(self, minion: str, lines: tuple[str, ...]) -> None:
        for line in lines:
            print(f"{minion}| {line}", file=self.stream)


class PlainDisplay(CallDisplay):
    """One line per phase change: fit for logs and CI."""

    def on_progress(self, minion: str, progress: ProgressIndication) -> None:
        print(f"{minion}: {_describe(progress)}", file=self.stream, flush=True)


class LiveDisplay(CallDisplay):
    """A table redrawn in place: minion, phase, bar, message."""

    def __init__(self, minions: list[str], show_logs: bool, stream: TextIO) -> None:
        super().__init__(minions, show_logs, stream)
        self.console = Console(file=stream)
        self.live = Live(self._table(), console=self.console, refresh_per_second=REFRESH_PER_SECOND, transient=True)

    def __enter__(self) -> "LiveDisplay":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def _table(self) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        for minion, row in sorted(self.rows.items()):
            progress = row.progress
            bar: ProgressBar | Text = Text("")
            if progress is not None and progress.total:
                bar = ProgressBar(total=progress.total, completed=progress.current or 0, width=20)
            phase = progress.phase if progress else ""
            note = progress.message if progress else ""
            state = Text(row.state, style={"ok": "green", "FAILED": "red"}.get(row.state, "yellow"))
            table.add_row(Text(minion, style="bold"), state, phase, bar, Text(note, overflow="ellipsis"))
        return table

    def event(self, event: CallEvent) -> None:
        super().event(event)
        self.live.update(self._table())

    def finished(self, minion: str, ok: bool) -> None:
        super().finished(minion, ok)
        self.live.update(self._table())

    def on_lines(self, minion: str, lines: tuple[str, ...]) -> None:
        for line in lines:
            self.console.print(Text(f"{minion}| ", style="dim") + Text(line), highlight=False)


def make_display(mode: str, minions: list[str], show_logs: bool, stream: TextIO = sys.stderr) -> CallDisplay:
    """``auto``: live on a terminal, plain lines otherwise; ``none``: logs only if asked."""
    if mode == "auto":
        mode = "live" if stream.isatty() else "plain"
    if mode == "live":
        return LiveDisplay(minions, show_logs, stream)
    if mode == "plain":
        return PlainDisplay(minions, show_logs, stream)
    return CallDisplay(minions, show_logs, stream)
