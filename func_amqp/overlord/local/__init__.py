"""func's overlord-side "local" pseudo-modules: file transfer built from minion calls.

``Overlord(spec).local.copyfile.send(src, dst)`` and
``Overlord(spec).local.getfile.get(src, folder)`` run here, on the overlord,
calling the minions' ``copyfile`` and ``getfile`` modules chunk by chunk. The
asyncio versions take an :class:`~func_amqp.overlord.caller.AsyncOverlord`::

    async with AsyncOverlord("web*") as ol:
        await copyfile.send(ol, "/etc/motd", "/etc/motd")
        await getfile.get(ol, "/var/log/messages", "/tmp/logs")

Chunks are :data:`CHUNK_BYTES` (func used 60000): large enough that a big file
is not thousands of round trips, small enough that base64 keeps each message far
under the 16 MiB default limit.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from func_amqp import utils
from func_amqp.errors import FuncException, qualified_name

if TYPE_CHECKING:
    from func_amqp.overlord.caller import AsyncOverlord

CHUNK_BYTES = 1024 * 1024
"""Bytes per chunk in both directions."""

MAX_CHUNK_BYTES = 8 * 1024 * 1024
"""Largest chunk accepted: about 11 MiB once base64-encoded."""

MESSAGE_OVERHEAD = 64 * 1024
"""Room left in a message for everything but the chunk."""

MAX_FILE_BYTES = 1024**3
"""Largest file sent or fetched, as the minions' own ``max_file_bytes`` default."""


class TransferError(FuncException):
    """A transfer refused or failed; the message says why."""


def transfer_failure(message: str) -> list[str]:
    """The REMOTE_ERROR value for a minion whose transfer failed on the overlord's side."""
    return utils.remote_error(qualified_name(TransferError), message)


def check_chunk_size(bufsize: int, max_message_bytes: int) -> int:
    """``bufsize`` if one base64-encoded chunk fits in a message; raises otherwise."""
    limit = min(MAX_CHUNK_BYTES, (max_message_bytes - MESSAGE_OVERHEAD) * 3 // 4)
    if not 0 < bufsize <= limit:
        raise TransferError(f"the chunk size must be between 1 and {limit} bytes, got {bufsize}")
    return bufsize


def by_minion(ol: "AsyncOverlord", results: dict[str, Any]) -> Any:
    """``{minion: result}``, or the bare result when the overlord uses noglobs."""
    if ol.noglobs and len(results) == 1:
        return next(iter(results.values()))
    return results


Run = Callable[[Coroutine[Any, Any, Any]], Any]


class _CopyFile:
    """``local.copyfile``, synchronous."""

    def __init__(self, run: Run, overlord: "AsyncOverlord") -> None:
        self._run = run
        self._overlord = overlord

    def send(
        self,
        localpath: str,
        remotepath: str,
        bufsize: int = CHUNK_BYTES,
        mode: int | None = None,
        force: bool = False,
    ) -> Any:
        from func_amqp.overlord.local import copyfile  # the submodule imports this package

        return self._run(copyfile.send(self._overlord, localpath, remotepath, bufsize, mode, force))


class _GetFile:
    """``local.getfile``, synchronous."""

    def __init__(self, run: Run, overlord: "AsyncOverlord") -> None:
        self._run = run
        self._overlord = overlord

    def get(self, remotesource: str, foldertarget: str) -> Any:
        from func_amqp.overlord.local import getfile  # the submodule imports this package

        return self._run(getfile.get(self._overlord, remotesource, foldertarget))


class LocalModules:
    """``overlord.local``: the local pseudo-modules, run through ``run``.

    ``run`` executes a coroutine on the loop ``overlord`` belongs to and returns
    its result. A transfer makes many calls, each bounded by the call timeout, so
    ``run`` should not impose an overall timeout of its own.
    """

    def __init__(self, run: Run, overlord: "AsyncOverlord") -> None:
        self.copyfile = _CopyFile(run, overlord)
        self.getfile = _GetFile(run, overlord)
