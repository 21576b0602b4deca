"""One background event loop and one broker connection per URL for synchronous callers.

func's API is blocking. Rather than a connection per ``Overlord`` (tens of
milliseconds each), every synchronous overlord in a process shares a daemon thread
running an asyncio loop, and one connected :class:`RpcClient` per broker URL.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from concurrent.futures import Future
from typing import Any, Coroutine, TypeVar

from func_amqp.overlord.rpc import RpcClient
from func_amqp.security.credentials import Credentials
from func_amqp.security.tls import BrokerTls
from func_amqp.transport import transport_for_url

T = TypeVar("T")

CLOSE_TIMEOUT = 5.0


class Session:
    """The process's background loop and its shared RPC clients."""

    _lock = threading.Lock()
    _instance: "Session | None" = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="func-amqp-loop", daemon=True)
        self._thread.start()
        self._clients: dict[tuple[str, int, str], RpcClient] = {}
        self._client_lock = asyncio.Lock()

    @classmethod
    def get(cls) -> "Session":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
                atexit.register(cls._instance.shutdown)
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it; Ctrl-C cancels it."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    async def client(
        self, url: str, max_message_bytes: int, credentials: Credentials, tls: BrokerTls | None = None
    ) -> RpcClient:
        """The shared, connected client for ``url`` and these credentials (made on first use)."""
        key = (url, max_message_bytes, credentials.fingerprint)
        async with self._client_lock:
            client = self._clients.get(key)
            if client is None:
                transport = transport_for_url(url, tls)
                await transport.connect()
                client = RpcClient(transport, max_message_bytes, signer=credentials.signer, trust=credentials.trust)
                await client.start()
                self._clients[key] = client
            return client

    async def _close_all(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.transport.close()

    @classmethod
    def close_shared(cls) -> None:
        """Shut the process's session down, if it was started (tests, embedding apps)."""
        with cls._lock:
            instance, cls._instance = cls._instance, None
        if instance is not None:
            instance.shutdown()

    def shutdown(self) -> None:
        """Close every connection and stop the loop (at interpreter exit)."""
        if not self.loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close_all(), self.loop).result(CLOSE_TIMEOUT)
        except Exception:  # exiting anyway: a broker that is gone must not block exit
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CLOSE_TIMEOUT)
