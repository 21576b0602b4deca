"""``local.copyfile.send``: copy a local file to every targeted minion, in chunks.

The file is read once, chunk by chunk; each chunk goes to all minions still in the
transfer at the same time (``copyfile.open``, ``append`` per chunk, then ``commit``
with the sha1 and size read). A minion that fails drops out with its error while
the others continue; its unfinished part file is removed.

Differences from func's ``send``: the minions verify the file before installing
it (``commit``), so a failed transfer leaves the old file in place; the owner is
not copied (the overlord's uid means nothing on the minion), only the mode; and
without ``force`` a minion whose file already has the same sha1 is left alone
(its result is 0, as ``copyfile.copyfile`` answers).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from func_amqp import utils
from func_amqp.overlord.local import (
    CHUNK_BYTES,
    MAX_FILE_BYTES,
    TransferError,
    by_minion,
    check_chunk_size,
    transfer_failure,
)

if TYPE_CHECKING:
    from func_amqp.overlord.caller import AsyncOverlord

MODULE = "copyfile"
COPIED = 1
UNCHANGED = 0
READ_BLOCK = 1 << 16
ABORT_TIMEOUT = 5.0
"""Seconds to wait for a failed minion to drop its part file: cleanup must not stall."""


def local_file(localpath: str, max_bytes: int) -> os.stat_result:
    """The file's stat, if it is a regular file within ``max_bytes``; raises otherwise."""
    try:
        info = os.stat(localpath)
    except OSError as exc:
        raise TransferError(f"cannot read {localpath}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TransferError(f"{localpath} is not a regular file")
    if info.st_size > max_bytes:
        raise TransferError(
            f"{localpath} is {info.st_size} bytes, larger than the {max_bytes}-byte limit; nothing was sent"
        )
    return info


def open_local(localpath: str) -> BinaryIO:
    try:
        return open(localpath, "rb")
    except OSError as exc:
        raise TransferError(f"cannot read {localpath}: {exc.strerror}") from None


def file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


async def send(
    ol: "AsyncOverlord",
    localpath: str,
    remotepath: str,
    bufsize: int = CHUNK_BYTES,
    mode: int | None = None,
    force: bool = False,
    *,
    max_bytes: int = MAX_FILE_BYTES,
) -> Any:
    """Copy ``localpath`` to ``remotepath`` on every targeted minion.

    Returns ``{minion: 1}`` (copied), 0 (already identical, without ``force``) or
    the minion's REMOTE_ERROR. A local file that is missing or over ``max_bytes``
    raises :class:`TransferError` before anything is sent. ``mode`` defaults to the
    local file's permission bits, as in func.
    """
    check_chunk_size(bufsize, ol.config.max_message_bytes)
    info = local_file(localpath, max_bytes)
    mode = stat.S_IMODE(info.st_mode) if mode is None else mode
    results: dict[str, Any] = {}
    with open_local(localpath) as fh:
        active = list(await ol.minions())
        if not force:
            active = await _skip_unchanged(ol, active, localpath, remotepath, results)
        if active:
            transfer = _Transfer(ol, localpath, remotepath, results)
            try:
                await transfer.run(active, fh, mode, bufsize)
            finally:
                await transfer.clean_up()
    return by_minion(ol, results)


async def _skip_unchanged(
    ol: "AsyncOverlord", minions: list[str], localpath: str, remotepath: str, results: dict[str, Any]
) -> list[str]:
    """Minions whose file differs; the others get 0 (unchanged) in ``results``."""
    local_sum = await asyncio.to_thread(file_sha1, localpath)
    sums = await asyncio.gather(*(ol.call_minion(m, MODULE, "checksum", [remotepath]) for m in minions))
    changed = []
    for minion, remote_sum in zip(minions, sums):
        if remote_sum == local_sum:
            results[minion] = UNCHANGED
        else:
            changed.append(minion)
    return changed


class _Transfer:
    """One send's calls: which minions are still in, and what failed where."""

    def __init__(self, ol: "AsyncOverlord", localpath: str, remotepath: str, results: dict[str, Any]) -> None:
        self.ol = ol
        self.localpath = localpath
        self.remotepath = remotepath
        self.results = results
        self.started: list[str] = []

    async def run(self, minions: list[str], fh: BinaryIO, mode: int, bufsize: int) -> None:
        """open, append each chunk, commit; the minions still in at the end copied it."""
        self.started = await self.step(minions, "open", [self.remotepath, mode, -1, -1], self.remotepath)
        active, digest, size = list(self.started), hashlib.sha1(), 0
        while active:
            chunk = await self._read(fh, bufsize)
            if not chunk:
                break
            digest.update(chunk)
            active = await self.step(active, "append", [self.remotepath, chunk], COPIED, size)
            size += len(chunk)
        if active:
            active = await self.step(active, "commit", [self.remotepath, digest.hexdigest(), size], COPIED)
        self.results.update(dict.fromkeys(active, COPIED))

    async def _read(self, fh: BinaryIO, bufsize: int) -> bytes:
        try:
            return await asyncio.to_thread(fh.read, bufsize)
        except OSError as exc:
            raise TransferError(f"cannot read {self.localpath}: {exc.strerror}") from None

    async def step(
        self, minions: Sequence[str], method: str, args: list[Any], expected: Any, sent: int = 0
    ) -> list[str]:
        """Call ``method`` on every minion at once; the ones that answered ``expected``."""
        answers = await asyncio.gather(*(self.ol.call_minion(m, MODULE, method, args) for m in minions))
        survivors = []
        for minion, answer in zip(minions, answers):
            if answer == expected:
                survivors.append(minion)
            else:
                self.results[minion] = self._failure(method, answer, sent)
        return survivors

    async def clean_up(self) -> None:
        """Remove the part files of minions that did not commit (best effort, briefly)."""
        unfinished = [m for m in self.started if self.results.get(m) != COPIED]
        await asyncio.gather(
            *(self.ol.call_minion(m, MODULE, "abort", [self.remotepath], ABORT_TIMEOUT) for m in unfinished)
        )

    def _failure(self, method: str, answer: Any, sent: int) -> Any:
        if utils.is_error(answer):
            return answer
        if method == "open":
            reason = "the path must be absolute, its directory must exist and be writable"
        elif method == "append":
            reason = f"the write failed after {sent} bytes, or the file grew past the minion's max_file_bytes"
        else:
            reason = f"unexpected answer {answer!r}"
        return transfer_failure(
            f"copyfile.{method} {self.remotepath!r} returned {answer!r}: {reason} (the minion's log says why)"
        )
