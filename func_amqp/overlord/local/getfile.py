"""``local.getfile.get``: fetch a file from every targeted minion, in chunks.

Each minion's copy is saved as ``<foldertarget>/<minion>/<basename>``, the path
Ansible's func connection plugin reads. The minions are fetched at the same time,
each chunk by chunk: ``getfile.stat`` gives the size and sha1, every chunk's sha1
is checked on arrival, and the whole file's sha1 before the copy is renamed into
place. A failed fetch leaves no partial file behind.

func returned one ``(0, foldertarget)`` or ``(1, message)`` for all minions; here
each minion gets its own ``[0, path]`` or ``[1, message]``, so one unreachable
minion does not hide the others' files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from func_amqp import utils
from func_amqp.overlord.local import (
    CHUNK_BYTES,
    MAX_FILE_BYTES,
    TransferError,
    by_minion,
    check_chunk_size,
)

if TYPE_CHECKING:
    from func_amqp.overlord.caller import AsyncOverlord

MODULE = "getfile"
OK = 0
FAILED = 1


async def get(
    ol: "AsyncOverlord",
    remotesource: str,
    foldertarget: str,
    *,
    chunksize: int = CHUNK_BYTES,
    max_bytes: int = MAX_FILE_BYTES,
) -> Any:
    """Fetch ``remotesource`` from every targeted minion into ``foldertarget``.

    Returns ``{minion: [0, saved path] or [1, reason]}``. ``foldertarget`` is created
    if missing, as func did.
    """
    check_chunk_size(chunksize, ol.config.max_message_bytes)
    basename = PurePosixPath(remotesource).name
    if not basename:
        raise TransferError(f"{remotesource!r} does not name a file")
    folder = Path(foldertarget)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferError(f"cannot create {foldertarget}: {exc.strerror}") from None
    minions = await ol.minions()
    fetch = _Fetch(ol, remotesource, basename, chunksize, max_bytes)
    outcomes = await asyncio.gather(*(fetch.into(folder, m) for m in minions))
    return by_minion(ol, dict(zip(minions, outcomes)))


def _safe_component(name: str) -> bool:
    """A minion name usable as one directory name under the target folder."""
    return bool(name) and name not in (".", "..") and os.sep not in name and "\0" not in name


class _Fetch:
    """One ``get``: the same source fetched from each minion."""

    def __init__(self, ol: "AsyncOverlord", source: str, basename: str, chunksize: int, max_bytes: int) -> None:
        self.ol = ol
        self.source = source
        self.basename = basename
        self.chunksize = chunksize
        self.max_bytes = max_bytes

    async def into(self, folder: Path, minion: str) -> list[Any]:
        """``[0, path]`` once the minion's copy is saved and verified, else ``[1, reason]``."""
        if not _safe_component(minion):
            return [FAILED, f"minion name {minion!r} cannot be used as a directory name"]
        part = folder / minion / f".{self.basename}.part"
        try:
            size, sha1 = await self._stat(minion)
            part.parent.mkdir(exist_ok=True)
            with part.open("wb") as out:
                received = await self._download(minion, size, out)
            if received != sha1:
                raise TransferError(f"checksum mismatch: received sha1 {received}, the minion read {sha1}")
            dest = part.with_name(self.basename)
            os.replace(part, dest)
        except (TransferError, OSError) as exc:
            part.unlink(missing_ok=True)
            return [FAILED, str(exc)]
        return [OK, str(dest)]

    async def _stat(self, minion: str) -> tuple[int, str]:
        info = await self._call(minion, "stat", [self.source])
        size = info.get("size") if isinstance(info, dict) else None
        sha1 = info.get("sha1") if isinstance(info, dict) else None
        if not isinstance(size, int) or size < 0 or not isinstance(sha1, str):
            raise TransferError(f"getfile.stat answered {info!r}, not a size and a sha1")
        if size > self.max_bytes:
            raise TransferError(f"{self.source} is {size} bytes, larger than the {self.max_bytes}-byte limit")
        return size, sha1

    async def _download(self, minion: str, size: int, out: BinaryIO) -> str:
        """Write every chunk to ``out``, each verified; the sha1 of all of them."""
        digest = hashlib.sha1()
        for number in range(-(-size // self.chunksize)):
            expected = min(self.chunksize, size - number * self.chunksize)
            data = await self._chunk(minion, number, expected)
            digest.update(data)
            await asyncio.to_thread(out.write, data)
        return digest.hexdigest()

    async def _chunk(self, minion: str, number: int, expected: int) -> bytes:
        answer = await self._call(minion, "getchunk", [number, self.source, self.chunksize])
        if not (isinstance(answer, list) and len(answer) == 2 and isinstance(answer[1], bytes)):
            raise TransferError(f"getfile.getchunk {number} answered {_short(answer)}, not [sha1, bytes]")
        chunk_sum, data = answer
        if hashlib.sha1(data).hexdigest() != chunk_sum:
            raise TransferError(f"chunk {number} arrived damaged (sha1 mismatch)")
        if len(data) != expected:
            raise TransferError(f"chunk {number} has {len(data)} bytes, not {expected}: the file changed while it was read")
        return data

    async def _call(self, minion: str, method: str, args: list[Any]) -> Any:
        answer = await self.ol.call_minion(minion, MODULE, method, args)
        if utils.is_error(answer):
            raise TransferError(f"getfile.{method}: {answer[2]}")
        return answer


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
