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
makes every call a durable job, as in func: the call returns a job id at once and
``job_status(job_id)`` returns func's ``(code, results)`` later, from this process or
another (docs/jobs.md). ``overlord.pool("builders", arch="x86_64").mock.build(...)``
sends a job that one free member of a builder pool runs. :class:`Jobs` is the same for a
build backend that only ever talks to pools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from func_amqp.config import OverlordConfig, Paths, resolve_broker_url
from func_amqp.overlord.caller import AsyncOverlord, EventCallback, MethodPath, split_method_path
from func_amqp.overlord.job_client import JobClient
from func_amqp.overlord.jobs import job_status
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
        self.async_ = bool(async_)
        self.server_spec = server_spec
        self.exclude_spec = exclude_spec
        self.noglobs = noglobs
        self.port = port
        self.nforks = nforks
        self.verbose = verbose
        self._session = Session.get()
        self._async = _connected(self._session, server_spec, exclude_spec, timeout, noglobs, config_dir, config, url)
        self.config = self._async.config
        self.timeout = self._async.timeout
        self._jobs = JobClient(self._async)
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
        """func's entry point: ``{minion: result}``, or the bare result with noglobs;
        in async mode the id of the job sent to every targeted minion.

        ``on_event`` (called on the overlord's background thread) receives each
        minion's progress and log lines; ``call_id`` names the call for cancel/follow.
        """
        if self.async_:
            return self._run(self._jobs.submit(module, method, list(args)))
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

    # --- jobs (func's async mode, made durable) ----------------------------------------

    def job_status(self, job_id: str) -> tuple[int, Any]:
        """func's ``(code, results)``: RUNNING 0, FINISHED 1, LOST_IN_SPACE 2, PARTIAL 3, REMOTE_ERROR 4."""
        return self._run(self._jobs.status(job_id))

    def open_job_ids(self) -> dict[str, int]:
        """func's ``{job_id: status code}`` of every job recorded here."""
        return {record["id"]: job_status(record)[0] for record in self._run(self._jobs.records())}

    def wait_job(self, job_id: str, timeout: float | None = None) -> tuple[int, Any]:
        """Until the job has ended everywhere (or ``timeout`` s): its ``(code, results)``."""
        return self._session.run(self._jobs.wait(job_id, timeout), None if timeout is None else timeout + RUN_MARGIN)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Stop the job wherever it has not ended: ``{minion: what happened}``."""
        return self._run(self._jobs.cancel(job_id))

    def pool(self, name: str, *, ttl: float | None = None, **tags: str) -> "PoolJobs":
        """``overlord.pool("builders", arch="x86_64").mock.build(...)``: a job id."""
        return PoolJobs(self._session, self._jobs, name, tags, ttl)

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


class PoolJobs:
    """``.module.method(*args)`` sends a job to a pool (only members with ``tags`` take
    it) and returns its id."""

    def __init__(self, session: Session, jobs: JobClient, pool: str, tags: dict[str, str], ttl: float | None) -> None:
        self._session = session
        self._jobs = jobs
        self._pool = pool
        self._tags = tags
        self._ttl = ttl

    def run(self, module: str, method: str, args: tuple[Any, ...] | list[Any]) -> str:
        submit = self._jobs.submit_to_pool(self._pool, module, method, list(args), tags=self._tags, ttl=self._ttl)
        return self._session.run(submit, self._jobs.overlord.timeout + RUN_MARGIN)

    def __getattr__(self, name: str) -> CommandAutomagic:
        if name.startswith("_"):
            raise AttributeError(name)
        return CommandAutomagic(self, (name,))


class Jobs:
    """Durable jobs for a build backend, synchronously: submit to pools (or minions),
    then poll, wait or cancel, from this process or a later one.

        jobs = Jobs()
        job_id = jobs.submit_to_pool("builders", "mock", "build", [url, chroot], tags={"arch": "x86_64"})
        code, results = jobs.wait(job_id, timeout=3600)
    """

    def __init__(self, *, config_dir: str | Path | None = None, config: OverlordConfig | None = None, url: str | None = None, timeout: float | None = None, owner: str | None = None) -> None:
        self._session = Session.get()
        overlord = _connected(self._session, "*", None, timeout, False, config_dir, config, url)
        self.client = JobClient(overlord, owner=owner)
        self.timeout = overlord.timeout

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return self._session.run(coro, (timeout or self.timeout) + RUN_MARGIN)

    def submit(self, spec: str, module: str, method: str, args: list[Any] | tuple[Any, ...] = (), *, ttl: float | None = None) -> str:
        """A job for every minion ``spec`` names (each runs it once, even if it is down now)."""
        async def go() -> str:
            overlord = AsyncOverlord(spec, config=self.client.overlord.config, config_dir=self.client.overlord.paths.config_dir)
            overlord.use(self.client.overlord.rpc)
            return await JobClient(overlord, owner=self.client.owner).submit(module, method, list(args), ttl=ttl)

        return self._run(go())

    def submit_to_pool(self, pool: str, module: str, method: str, args: list[Any] | tuple[Any, ...] = (), *, tags: dict[str, str] | None = None, ttl: float | None = None) -> str:
        return self._run(self.client.submit_to_pool(pool, module, method, list(args), tags=tags, ttl=ttl))

    def status(self, job_id: str) -> tuple[int, Any]:
        return self._run(self.client.status(job_id))

    def record(self, job_id: str) -> dict[str, Any] | None:
        """Everything recorded of the job: each minion's state, attempt, result, progress."""
        return self._run(self.client.record(job_id))

    def records(self) -> list[dict[str, Any]]:
        return self._run(self.client.records())

    def wait(self, job_id: str, timeout: float | None = None) -> tuple[int, Any]:
        return self._session.run(self.client.wait(job_id, timeout), None if timeout is None else timeout + RUN_MARGIN)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._run(self.client.cancel(job_id))


def _connected(
    session: Session,
    spec: str,
    exclude_spec: str | None,
    timeout: float | None,
    noglobs: bool,
    config_dir: str | Path | None,
    config: OverlordConfig | None,
    url: str | None,
) -> AsyncOverlord:
    """An asyncio overlord on the session's shared connection to the configured broker."""
    paths = Paths.resolve(config_dir)
    config = config if config is not None else OverlordConfig.load(paths.overlord_conf)
    url = url or resolve_broker_url(config.broker_url, paths)
    overlord = AsyncOverlord(spec, exclude_spec=exclude_spec, timeout=timeout, noglobs=noglobs, config_dir=config_dir, config=config)
    creds = overlord.credentials()
    rpc = session.run(session.client(url, config.max_message_bytes, creds, broker_tls(url, creds, paths)))
    overlord.use(rpc)
    return overlord


class Client(Overlord):
    """func's older name for :class:`Overlord`, still the usual idiom in scripts."""
