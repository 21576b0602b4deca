"""The progress API for module methods: report phases, stream log lines, notice cancel.

A module method runs in a worker thread; the minion binds a :class:`CallContext` to that
thread for the duration of the call. These functions talk to it, and do nothing outside
a call (so modules stay testable as plain Python)::

    from func_amqp.minion import progress

    def build(self, srpm):
        progress.report("download", message=srpm)
        progress.log("fetching", srpm)
        progress.check_cancelled()      # raises CallCancelled once the caller cancelled

Reports travel to the caller as ``_data_indication`` messages tied to the request.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from func_amqp.errors import CallCancelled

__all__ = ["CallCancelled", "CallContext", "Progress", "cancelled", "check_cancelled", "log", "report"]


@dataclass(frozen=True)
class Progress:
    """Where a call stands: a phase name, optionally ``current`` of ``total``."""

    phase: str
    current: int | None = None
    total: int | None = None
    message: str = ""


@dataclass
class CallContext:
    """One running call, as its module code sees it; thread-safe."""

    call_id: str
    on_progress: Callable[[Progress], None] = lambda p: None
    on_log: Callable[[list[str]], None] = lambda lines: None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    _cancel_hooks: list[Callable[[], None]] = field(default_factory=list)
    _kill_hooks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """Mark cancelled and run the hooks (e.g. signal child process groups)."""
        with self._lock:
            self.cancel_event.set()
            hooks = list(self._cancel_hooks)
        for hook in hooks:
            hook()

    def kill(self) -> None:
        """Last resort before the minion exits: SIGKILL what the call started."""
        with self._lock:
            hooks = list(self._kill_hooks)
        for hook in hooks:
            hook()

    @contextmanager
    def on_kill(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run ``hook`` if the minion must end the call's work at once."""
        with self._lock:
            self._kill_hooks.append(hook)
        try:
            yield
        finally:
            with self._lock:
                self._kill_hooks.remove(hook)

    @contextmanager
    def on_cancel(self, hook: Callable[[], None]) -> Iterator[None]:
        """Run ``hook`` if the call is cancelled while the block runs (at once if it was)."""
        with self._lock:
            self._cancel_hooks.append(hook)
            already = self.cancel_event.is_set()
        try:
            if already:
                hook()
            yield
        finally:
            with self._lock:
                self._cancel_hooks.remove(hook)


_current = threading.local()


@contextmanager
def bound(context: CallContext) -> Iterator[CallContext]:
    """Bind ``context`` to this thread while a module method runs (the minion's job)."""
    previous = getattr(_current, "context", None)
    _current.context = context
    try:
        yield context
    finally:
        _current.context = previous


def current_call() -> CallContext | None:
    """The running call's context, or None outside a call."""
    return getattr(_current, "context", None)


def report(phase: str, current: int | None = None, total: int | None = None, message: str = "") -> None:
    """Tell the caller where the call stands (latest report wins if they come fast)."""
    context = current_call()
    if context is not None:
        context.on_progress(Progress(str(phase), _count(current), _count(total), str(message)))


def _count(value: object) -> int | None:
    """Progress counts travel as integers; anything else (NaN, a Decimal) is coerced or dropped."""
    if value is None:
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None


def log(*lines: str) -> None:
    """Stream log lines to callers that follow the call."""
    context = current_call()
    if context is not None and lines:
        context.on_log([str(line).rstrip("\n") for line in lines])


def cancelled() -> bool:
    """True once the caller asked to cancel this call."""
    context = current_call()
    return context is not None and context.cancel_event.is_set()


def check_cancelled() -> None:
    """Raise :class:`CallCancelled` if the caller asked to cancel."""
    if cancelled():
        raise CallCancelled("the call was cancelled by its caller")
