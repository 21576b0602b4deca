"""The asyncio overlord: resolve a target spec, call every minion concurrently.

This is the public asyncio API; :mod:`func_amqp.overlord.client` wraps it in func's
synchronous ``Overlord``. Results are func's: ``{minion: result}``, where a failure is
``["REMOTE_ERROR", type, message, traceback]``.

    async with AsyncOverlord("web*") as ol:
        results = await ol.call("test", "ping")
        results = await ol.test.ping()          # the same, func-style
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from func_amqp import utils
from func_amqp.utils import remote_error_value
from func_amqp.config import OverlordConfig, Paths, resolve_broker_url
from func_amqp.errors import Func_Client_Exception, RemoteCallError, qualified_name
from func_amqp.overlord.directory import MinionDirectory
from func_amqp.overlord.groups import Groups
from func_amqp.overlord.rpc import RpcClient
from func_amqp.overlord.targets import resolve_spec, spec_needs_directory
from func_amqp.protocol.messages import AgentInfo, Indication, ProgressIndication
from func_amqp.security.credentials import Credentials, broker_tls, overlord_credentials
from func_amqp.transport import Transport, transport_for_url


CALL_ID_SEPARATOR = ":"
CONTROL_TIMEOUT = 10.0
"""Seconds to wait for a minion to acknowledge a cancel."""


def new_call_id() -> str:
    """A fresh call id: short enough to type into ``func ... cancel ID``."""
    return uuid.uuid4().hex[:16]


def minion_call_id(call_id: str, minion: str) -> str:
    """The id one minion knows a fan-out call by: unique per minion, derivable."""
    return f"{call_id}{CALL_ID_SEPARATOR}{minion}"


@dataclass(frozen=True)
class CallEvent:
    """Something one minion said about a running call: progress, log lines, its end."""

    minion: str
    call_id: str
    progress: ProgressIndication | None = None
    lines: tuple[str, ...] = ()
    result: Any = None
    done: bool = False


EventCallback = Callable[[CallEvent], None]


def event_listener(minion: str, cid: str, on_event: EventCallback) -> Callable[[Indication], None]:
    def listener(indication: Indication) -> None:
        if isinstance(indication, ProgressIndication):
            on_event(CallEvent(minion, cid, progress=indication))
        else:
            on_event(CallEvent(minion, cid, lines=tuple(indication.lines)))

    return listener


def split_method_path(path: Sequence[str]) -> tuple[str, str]:
    """func's proxy path -> (module, method): the method is the last part."""
    if len(path) < 2:
        raise AttributeError(
            f"a call needs a module and a method, e.g. overlord.test.ping(); got {'.'.join(path)!r}"
        )
    return ".".join(path[:-1]), path[-1]


class MethodPath:
    """``overlord.module.method`` collected attribute by attribute (aio-pika's Proxy
    shape); subclasses decide what calling it does."""

    __slots__ = ("_overlord", "_path")

    def __init__(self, overlord: Any, path: tuple[str, ...]) -> None:
        self._overlord = overlord
        self._path = path

    def __getattr__(self, name: str) -> "MethodPath":
        if name.startswith("__"):
            raise AttributeError(name)
        return type(self)(self._overlord, self._path + (name,))


class _AsyncMethod(MethodPath):
    """An awaitable call target."""

    __slots__ = ()

    async def __call__(self, *args: Any) -> Any:
        module, method = split_method_path(self._path)
        return await self._overlord.call(module, method, *args)


class AsyncOverlord:
    """Calls func modules on the minions a spec names, all at once.

    By default it connects to the configured broker itself. ``transport`` (already
    connected) or ``rpc`` share an existing connection instead; the caller closes it.
    """

    def __init__(
        self,
        server_spec: str = "*",
        *,
        exclude_spec: str | None = None,
        timeout: float | None = None,
        noglobs: bool = False,
        config_dir: str | Path | None = None,
        config: OverlordConfig | None = None,
        url: str | None = None,
        transport: Transport | None = None,
        rpc: RpcClient | None = None,
    ) -> None:
        self.paths = Paths.resolve(config_dir)
        self.config = config if config is not None else OverlordConfig.load(self.paths.overlord_conf)
        self.server_spec = server_spec
        self.exclude_spec = exclude_spec
        self.noglobs = noglobs
        self.timeout = float(timeout) if timeout else self.config.default_timeout
        if self.timeout <= 0:
            raise Func_Client_Exception(f"the timeout must be greater than 0, got {timeout}")
        self._transport = rpc.transport if rpc is not None else transport
        self._owns_transport = self._transport is None
        self._url = url
        self._rpc: RpcClient | None = rpc
        self._minions: list[str] | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> "AsyncOverlord":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._rpc is not None:
            return
        creds = self.credentials()
        if self._transport is None:
            url = self._url or resolve_broker_url(self.config.broker_url, self.paths)
            self._transport = transport_for_url(url, broker_tls(url, creds, self.paths))
            await self._transport.connect()
        rpc = RpcClient(self._transport, self.config.max_message_bytes, signer=creds.signer, trust=creds.trust)
        await rpc.start()
        self._rpc = rpc

    def credentials(self) -> Credentials:
        """What this overlord signs with and trusts (func's setup_ssl order)."""
        return overlord_credentials(self.paths, self.config.key_file, self.config.cert_file, self.config.ca_file)

    async def close(self) -> None:
        if self._owns_transport and self._transport is not None:
            await self._transport.close()
            self._transport = None
            self._rpc = None

    def use(self, rpc: RpcClient) -> None:
        """Share an already connected client (the synchronous facade's session)."""
        self._rpc, self._transport, self._owns_transport = rpc, rpc.transport, False

    @property
    def rpc(self) -> RpcClient:
        if self._rpc is None:
            raise RuntimeError("AsyncOverlord is not connected; use 'async with' or connect()")
        return self._rpc

    # --- targets ----------------------------------------------------------------------

    async def locate(self, timeout: float | None = None) -> dict[str, AgentInfo]:
        """The minions connected now, as they describe themselves; remembered."""
        directory = MinionDirectory.load(self.paths.minion_directory_file)
        found = await self.rpc.locate(timeout or self.config.locate_timeout, directory.names())
        if directory.record(found.values()):
            directory.save()
        return found

    async def known_minions(self) -> set[str]:
        """Remembered minions plus the ones answering now."""
        found = await self.locate()
        return MinionDirectory.load(self.paths.minion_directory_file).names() | found.keys()

    async def minions(self) -> list[str]:
        """The spec's minions (resolved once per overlord, as func did)."""
        if self._minions is None:
            groups = Groups.load(self.paths.groups_file)
            known: set[str] = set()
            if not self.noglobs and spec_needs_directory(self.server_spec, self.exclude_spec):
                known = await self.known_minions()
            self._minions = resolve_spec(self.server_spec, known, groups, self.exclude_spec)
        if not self._minions:
            raise Func_Client_Exception(f'Can\'t find any minions matching "{self.server_spec}".')
        return self._minions

    # --- calls ------------------------------------------------------------------------

    async def call_minion(
        self,
        minion: str,
        module: str,
        method: str,
        args: Sequence[Any],
        timeout: float | None = None,
        *,
        call_id: str | None = None,
        on_event: EventCallback | None = None,
    ) -> Any:
        """One minion's result, or its REMOTE_ERROR value."""
        cid = minion_call_id(call_id or new_call_id(), minion)
        listener = event_listener(minion, cid, on_event) if on_event else None
        try:
            return await self.rpc.call(
                minion, module, method, list(args), timeout or self.timeout, call_id=cid, on_indication=listener
            )
        except RemoteCallError as exc:
            return remote_error_value(exc)

    async def call(
        self,
        module: str,
        method: str,
        *args: Any,
        timeout: float | None = None,
        call_id: str | None = None,
        on_event: EventCallback | None = None,
    ) -> Any:
        """``{minion: result}`` for every targeted minion; bare result with noglobs.

        ``on_event`` receives each minion's progress and log lines as they come.
        ``call_id`` (default: a fresh one) names the call for :meth:`cancel`/:meth:`follow`.
        """
        targets = await self.minions()
        call_id = call_id or new_call_id()
        calls = [self.call_minion(m, module, method, args, timeout, call_id=call_id, on_event=on_event) for m in targets]
        results = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
        return self._shape(dict(zip(targets, results)))

    def _shape(self, by_minion: dict[str, Any]) -> Any:
        return next(iter(by_minion.values())) if self.noglobs else by_minion

    async def stream(self, module: str, method: str, *args: Any, timeout: float | None = None, call_id: str | None = None) -> AsyncIterator[CallEvent]:
        """The call's events as they come, each minion's result as a final event."""
        events: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        targets = await self.minions()
        call_id = call_id or new_call_id()

        async def one(minion: str) -> None:
            try:
                result = await self.call_minion(minion, module, method, args, timeout, call_id=call_id, on_event=events.put_nowait)
            except Exception as exc:  # e.g. arguments that cannot travel: end this minion's stream
                result = utils.remote_error(qualified_name(type(exc)), str(exc))
            events.put_nowait(CallEvent(minion, minion_call_id(call_id, minion), result=result, done=True))

        tasks = [asyncio.ensure_future(one(m)) for m in targets]
        try:
            for _ in range(len(targets)):
                while True:
                    event = await events.get()
                    assert event is not None
                    yield event
                    if event.done:
                        break
        finally:
            for task in tasks:
                task.cancel()

    async def cancel(self, call_id: str, timeout: float | None = None) -> Any:
        """Cancel a running call on the targeted minions: ``{minion: True/False}``."""
        targets = await self.minions()

        async def one(minion: str) -> Any:
            try:
                return await self.rpc.cancel(minion, minion_call_id(call_id, minion), timeout or CONTROL_TIMEOUT)
            except RemoteCallError as exc:
                return remote_error_value(exc)

        return self._shape(dict(zip(targets, await asyncio.gather(*(one(m) for m in targets)))))

    async def follow(self, call_id: str, *, timeout: float | None = None, on_event: EventCallback | None = None) -> Any:
        """Re-attach to a running call: its events from now on, then ``{minion: result}``."""
        targets = await self.minions()

        async def one(minion: str) -> Any:
            cid = minion_call_id(call_id, minion)
            listener = event_listener(minion, cid, on_event) if on_event else None
            try:
                return await self.rpc.follow(minion, cid, timeout or self.timeout, listener)
            except RemoteCallError as exc:
                return remote_error_value(exc)

        return self._shape(dict(zip(targets, await asyncio.gather(*(one(m) for m in targets)))))

    async def method_args(self, module: str, timeout: float | None = None) -> dict[str, Any]:
        """The module's registered arguments, from the first targeted minion that answers."""
        last: RemoteCallError | None = None
        deadline = time.time() + (timeout or self.timeout)
        for minion in await self.minions():
            try:
                return await self.rpc.method_args(minion, module, max(deadline - time.time(), 0.001))
            except RemoteCallError as exc:
                last = exc
        assert last is not None
        raise last

    def __getattr__(self, name: str) -> _AsyncMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(self, (name,))
