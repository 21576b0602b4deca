"""func's ``getfile`` module: read a file chunk by chunk for the overlord.

``local.getfile.get`` asks ``stat`` for the size and sha1, fetches the chunks with
``getchunk`` and checks each chunk's sha1 and then the whole file's.

Differences from func, both because bytes travel natively here:

- ``getchunk`` returns the chunk as bytes and the sha1 of those bytes; func sent
  base64 text and the sha1 of that text.
- ``getchunk`` and ``chunkslen`` take an optional ``chunksize`` (default func's
  60000 bytes) so that the overlord can move larger chunks per message; it is
  capped by :data:`MAX_CHUNK_BYTES` to stay well under the message size limit.

Paths must be absolute and free of ``..``; files larger than the ``max_file_bytes``
option (default 1 GiB) of ``modules/GetFile.conf`` are refused. func's methods
return -1 (and log why) on failure; the new ``stat`` raises with the reason.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_module
from pathlib import Path
from typing import Any

from func_amqp.errors import FuncException
from func_amqp.minion.modules.func_module import FuncModule

GIB = 1024**3
CHUNK_BYTES = 60000
"""func's chunk size, still the default."""
MAX_CHUNK_BYTES = 8 * 1024 * 1024
"""Largest chunk sent in one reply: base64 makes it ~11 MiB, under the 16 MiB default."""
READ_BLOCK = 1 << 16
ERROR = -1


class TransferError(FuncException):
    """A read refused or failed; the message says why."""


def checked_source(filename: Any) -> Path:
    """The file to read, if the path is acceptable and names a regular file."""
    if not isinstance(filename, str) or not filename or "\0" in filename:
        raise TransferError(f"the path must be a non-empty string, got {filename!r}")
    if not os.path.isabs(filename):
        raise TransferError(f"the path must be absolute: {filename!r}")
    if ".." in filename.split(os.sep):
        raise TransferError(f"the path must not contain '..': {filename!r}")
    path = Path(filename)
    if not path.is_file():
        raise TransferError(f"{filename!r} does not exist or is not a regular file")
    return path


def checked_chunksize(chunksize: Any) -> int:
    size = int(chunksize)
    if not 0 < size <= MAX_CHUNK_BYTES:
        raise TransferError(f"the chunk size must be between 1 and {MAX_CHUNK_BYTES}, got {size}")
    return size


class GetFile(FuncModule):
    version = "0.1.0"
    api_version = "0.0.2"
    description = "Get a file, chunk by chunk"

    class Config(FuncModule.Config):
        max_file_bytes = GIB

    @property
    def max_file_bytes(self) -> int:
        return int(self.options.value("max_file_bytes"))

    def chunkslen(self, filename: str, chunksize: Any = CHUNK_BYTES) -> int:
        """How many chunks of ``chunksize`` bytes make the file; -1 on error."""
        try:
            size = self._size(checked_source(filename))
            per_chunk = checked_chunksize(chunksize)
        except (TransferError, OSError, ValueError) as exc:
            self.logger.warning("getfile.chunkslen %r failed: %s", filename, exc)
            return ERROR
        return -(-size // per_chunk)

    def getchunk(self, chunknum: Any, filename: str, chunksize: Any = CHUNK_BYTES) -> list[Any] | int:
        """``[sha1 hex of the chunk, chunk bytes]`` for chunk ``chunknum`` (from 0); -1 on error.

        A chunk past the end is empty, as in func.
        """
        try:
            return self._chunk(int(chunknum), checked_source(filename), checked_chunksize(chunksize))
        except (TransferError, OSError, ValueError) as exc:
            self.logger.warning("getfile.getchunk %r failed: %s", filename, exc)
            return ERROR

    def stat(self, filename: str) -> dict[str, Any]:
        """``{"size", "sha1", "mode"}`` of the file, so a fetched copy can be verified.

        Raises :class:`TransferError` saying why when the file cannot be served.
        """
        path = checked_source(filename)
        size = self._size(path)
        digest = hashlib.sha1()
        with path.open("rb") as fh:
            while block := fh.read(READ_BLOCK):
                digest.update(block)
        return {"size": size, "sha1": digest.hexdigest(), "mode": stat_module.S_IMODE(path.stat().st_mode)}

    def _size(self, path: Path) -> int:
        size = path.stat().st_size
        if size > self.max_file_bytes:
            raise TransferError(f"{str(path)!r} is {size} bytes, past max_file_bytes ({self.max_file_bytes})")
        return size

    def _chunk(self, chunknum: int, path: Path, chunksize: int) -> list[Any]:
        if chunknum < 0:
            raise TransferError(f"the chunk number must be 0 or more, got {chunknum}")
        self._size(path)
        with path.open("rb") as fh:
            fh.seek(chunknum * chunksize)
            data = fh.read(chunksize)
        return [hashlib.sha1(data).hexdigest(), data]

    def register_method_args(self) -> dict[str, Any]:
        path = {"type": "string", "optional": False, "description": "Absolute path of the file on the minion"}
        size = {
            "type": "int",
            "optional": True,
            "default": CHUNK_BYTES,
            "range": [1, MAX_CHUNK_BYTES],
            "description": "Bytes per chunk",
        }
        return {
            "chunkslen": {"args": {"filename": path, "chunksize": size}, "description": "Number of chunks in the file"},
            "getchunk": {
                "args": {
                    "chunknum": {"type": "int", "optional": False, "min": 0, "description": "Chunk number, from 0"},
                    "filename": path,
                    "chunksize": size,
                },
                "description": "One chunk of the file and its sha1",
            },
            "stat": {"args": {"filename": path}, "description": "Size, sha1 and mode of the file"},
        }
