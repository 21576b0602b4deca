"""func's synchronous ``Overlord`` / ``Client`` API over the asyncio overlord.

    from func_amqp.overlord.client import Overlord
    Overlord("web*").service.restart("httpd")   # {"web1": 0, "web2": [...REMOTE_ERROR...]}

The constructor takes func's arguments. Those that no longer mean anything on a
broker are accepted and ignored, so existing scripts run unchanged:

- ``port``: minions are addressed by name on the broker, not by port;
- ``nforks``: every targeted minion is called concurrently anyway;
- ``interactive``, ``verbose``, ``init_ssl``: no effect (credentials come from the
  broker URL);
- ``delegate``, ``mapfile``: the broker routes to every minion, so there is nothing to
  delegate.

``async`` (a reserved word in Python 3: pass ``async_=True`` or ``**{"async": True}``)
is reserved for durable asynchronous jobs and refused with a clear error until then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from func_amqp.config import OverlordConfig, Paths, resolve_broker_url
from func_amqp.errors import Func_Client_Exception
from func_amqp.overlord.caller import AsyncOverlord, EventCallback, MethodPath, split_method_path
from func_amqp.overlord.local import LocalModules
from func_amqp.overlord.session import Session
from func_amqp.security.credentials import broker_tls

DEFAULT_PORT = 51234
"""func's XML-RPC port; accepted in the constructor for compatibility only."""

RUN_MARGIN = 10.0
"""Seconds beyond the call timeout before the synchronous wait itself gives up."""


class CommandAutomagic(MethodPath):
    """``overlord.module.method`` path collector, func's name for it."""

    __slots__ = ()

    def __call__(self, *args: Any) -> Any:
        module, method = split_method_path(self._path)
        return self._overlord.run(module, method, args)


class Overlord:
    """Calls func modules on every minion ``server_spec`` names."""

    def __init__(
        self,
        server_spec: str,
        port: int = DEFAULT_PORT,
        interactive: bool = False,
        verbose: bool = False,
        noglobs: bool = False,
        nforks: int = 1,
        config: OverlordConfig | None = None,
        async_: bool = False,
        init_ssl: bool = True,
        delegate: bool = False,
        mapfile: str | None = None,
        timeout: float | None = None,
        exclude_spec: str | None = None,
        *,
        config_dir: str | Path | None = None,
        url: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "async" in kwargs:
            async_ = bool(kwargs.pop("async"))
        if kwargs:
            raise TypeError(f"Overlord() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        if async_:
            raise Func_Client_Exception(
                "asynchronous jobs are not available in this version of func-amqp; "
                "call without async (results arrive when every minion has answered)"
            )
        self.server_spec = server_spec
        self.exclude_spec = exclude_spec
        self.noglobs = noglobs
        self.port = port
        self.nforks = nforks
        self.verbose = verbose
        self._session = Session.get()
        paths = Paths.resolve(config_dir)
        self.config = config if config is not None else OverlordConfig.load(paths.overlord_conf)
        self._url = url or resolve_broker_url(self.config.broker_url, paths)
        self._async = AsyncOverlord(
            server_spec,
            exclude_spec=exclude_spec,
            timeout=timeout,
            noglobs=noglobs,
            config_dir=config_dir,
            config=self.config,
        )
        creds = self._async.credentials()
        rpc = self._session.run(
            self._session.client(
                self._url, self.config.max_message_bytes, creds, broker_tls(self._url, creds, paths)
            )
        )
        self._async.use(rpc)
        self.timeout = self._async.timeout
        # func's overlord-side pseudo-modules: local.copyfile.send, local.getfile.get
        self.local = LocalModules(self._session.run, self._async)
        self.minions = self._run(self._async.minions())

    def _run(self, coro: Any) -> Any:
        return self._session.run(coro, self.timeout + RUN_MARGIN)

    def run(
        self,
        module: str,
        method: str,
        args: tuple[Any, ...] | list[Any],
        nforks: int = 1,
        timeout: float | None = None,
        *,
        on_event: EventCallback | None = None,
        call_id: str | None = None,
    ) -> Any:
        """func's entry point: ``{minion: result}``, or the bare result with noglobs.

        ``on_event`` (called on the overlord's background thread) receives each
        minion's progress and log lines; ``call_id`` names the call for cancel/follow.
        """
        return self._session.run(
            self._async.call(module, method, *args, timeout=timeout, call_id=call_id, on_event=on_event),
            (timeout or self.timeout) + RUN_MARGIN,
        )

    def cancel(self, call_id: str) -> Any:
        """Cancel a running call on the targeted minions: ``{minion: True/False}``."""
        return self._run(self._async.cancel(call_id))

    def follow(self, call_id: str, on_event: EventCallback | None = None, timeout: float | None = None) -> Any:
        """Re-attach to a running call (e.g. one started by another process)."""
        return self._session.run(
            self._async.follow(call_id, timeout=timeout, on_event=on_event), (timeout or self.timeout) + RUN_MARGIN
        )

    def list_minions(self, format: str = "list") -> list[str]:
        """The names this overlord targets."""
        return list(self.minions)

    def get_method_args(self, module: str) -> dict[str, Any]:
        """The module's registered arguments, asked of the first targeted minion."""
        return self._run(self._async.method_args(module))

    def __getattr__(self, name: str) -> CommandAutomagic:
        if name.startswith("_"):
            raise AttributeError(name)
        return CommandAutomagic(self, (name,))


class Client(Overlord):
    """func's older name for :class:`Overlord`, still the usual idiom in scripts."""
