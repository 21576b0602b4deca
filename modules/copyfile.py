"""func's ``copyfile`` module: write files sent by the overlord.

A chunked transfer (what ``local.copyfile.send`` does) is ``open``, one ``append``
per chunk, then ``commit``. func's ``open`` truncated the target itself, so a
transfer cut short left a truncated file behind. Here ``open`` and ``append`` write
a part file next to the target, and ``commit`` checks its size and sha1 against
what the sender read before renaming it over the target in one step: readers see
the old file or the whole new one, and a transfer garbled on the way, cut short or
raced by another sender is refused instead of installed. Callers of func's
two-step ``open``/``append`` must add ``commit`` (or use ``copyfile`` for files
small enough for one message).

The part file is ``.<name>.part-<pid>``: one per minion process, so that minions
sharing a file system never write into each other's part file.

Limits, for a daemon that writes wherever it is told:

- paths must be absolute and free of ``..``;
- the target's directory must already exist (func created it; a typo should not
  silently grow a directory tree);
- the target is replaced, never written through: a symlink at the target's name
  is replaced by the file, and part files are opened without following symlinks;
- no file grows past the ``max_file_bytes`` option (default 1 GiB) of
  ``modules/CopyFile.conf``.

func's methods (``open``, ``append``, ``copyfile``) keep func's return codes and
log why they failed; the new ``commit`` and ``abort`` raise :class:`TransferError`
with the reason, which reaches the caller in the REMOTE_ERROR value.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from func_amqp.errors import FuncException
from func_amqp.minion.modules.func_module import FuncModule

GIB = 1024**3
READ_BLOCK = 1 << 16
PART_MARK = ".part-"
MAX_NAME_LENGTH = 255
BACKUP_SUFFIX = "%Y-%m-%d@%H:%M~"
"""func's backup name: ``<path>.YYYY-MM-DD@HH:MM~``."""

ERROR = -1
COPIED = 1
UNCHANGED = 0


class TransferError(FuncException):
    """A write refused or failed; the message says why."""


# --- paths and files ----------------------------------------------------------------------


def checked_target(filepath: Any) -> Path:
    """The target as a Path, if it is a safe place to write a file; raises otherwise."""
    if not isinstance(filepath, str) or not filepath or "\0" in filepath:
        raise TransferError(f"the path must be a non-empty string, got {filepath!r}")
    if not os.path.isabs(filepath):
        raise TransferError(f"the path must be absolute: {filepath!r}")
    if ".." in filepath.split(os.sep):
        raise TransferError(f"the path must not contain '..': {filepath!r}")
    if filepath.endswith(os.sep):
        raise TransferError(f"the path names a directory, not a file: {filepath!r}")
    target = Path(filepath)
    if not target.parent.is_dir():
        raise TransferError(f"the directory {str(target.parent)!r} does not exist")
    if target.is_dir() and not target.is_symlink():
        raise TransferError(f"{filepath!r} is a directory")
    return target


def part_path(target: Path) -> Path:
    """This process's part file for ``target``, in the target's directory."""
    name = f".{target.name}{PART_MARK}{os.getpid()}"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha1(target.name.encode("utf-8", "surrogateescape")).hexdigest()
        name = f".{digest}{PART_MARK}{os.getpid()}"
    return target.with_name(name)


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def as_mode(mode: Any) -> int | None:
    """func passed modes as ints or octal strings ("0644"); None keeps the default."""
    if mode is None or mode == "":
        return None
    if isinstance(mode, str):
        return stat.S_IMODE(int(mode, 8))
    if isinstance(mode, int) and not isinstance(mode, bool):
        return stat.S_IMODE(mode)
    raise TransferError(f"the mode must be an int or an octal string, got {mode!r}")


def as_id(value: Any) -> int:
    """A uid or gid; -1 (or None) leaves it unchanged, as for os.chown."""
    if value is None or value == "":
        return -1
    return int(value)


def _new_part(part: Path) -> int:
    """A fresh, private part file: whatever sat at its name (even a symlink) is dropped."""
    try:
        part.unlink()
    except FileNotFoundError:
        pass
    return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def _set_owner_and_mode(fd: int, mode: int | None, uid: int, gid: int) -> None:
    """Apply owner, then mode (a change of owner clears set-id bits); owners already
    in place are not re-set, so no privilege is needed to keep them."""
    info = os.fstat(fd)
    wanted_uid = info.st_uid if uid == -1 else uid
    wanted_gid = info.st_gid if gid == -1 else gid
    if (wanted_uid, wanted_gid) != (info.st_uid, info.st_gid):
        os.fchown(fd, wanted_uid, wanted_gid)
    if mode is not None:
        os.fchmod(fd, mode)


def _inherited(target: Path, mode: int | None, uid: int, gid: int) -> tuple[int, int, int]:
    """func truncated the target in place, which kept its mode and owner: do the same.

    The owner is kept only when running as root, the only user who may give files
    away; otherwise the file belongs to the minion's user.
    """
    try:
        info = target.stat()
    except FileNotFoundError:
        return (mode if mode is not None else 0o666 & ~_umask()), uid, gid
    if mode is None:
        mode = stat.S_IMODE(info.st_mode)
    if os.geteuid() == 0:
        uid = info.st_uid if uid == -1 else uid
        gid = info.st_gid if gid == -1 else gid
    return mode, uid, gid


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _replace(part: Path, target: Path) -> None:
    """Flush the part file and rename it over the target in one step."""
    fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, target)


def _discard(part: Path) -> bool:
    try:
        part.unlink()
    except FileNotFoundError:
        return False
    return True


# --- the module ---------------------------------------------------------------------------


class CopyFile(FuncModule):
    version = "0.1.0"
    api_version = "0.0.3"
    description = "Allows for smart copying of a file."

    class Config(FuncModule.Config):
        max_file_bytes = GIB

    @property
    def max_file_bytes(self) -> int:
        return int(self.options.value("max_file_bytes"))

    # --- func's methods -----------------------------------------------------------------

    def open(self, filepath: str, mode: Any = None, uid: Any = -1, gid: Any = -1) -> str | int:
        """Start a chunked transfer: create (or restart) the target's part file.

        Returns ``filepath``, or -1. With no ``mode`` (or owner -1) the file keeps
        the current target's (func truncated it in place), else the umask's default.
        """
        try:
            target = checked_target(filepath)
            fd = _new_part(part_path(target))
            try:
                _set_owner_and_mode(fd, *_inherited(target, as_mode(mode), as_id(uid), as_id(gid)))
            finally:
                os.close(fd)
        except (TransferError, OSError, ValueError) as exc:
            self.logger.warning("copyfile.open %r failed: %s", filepath, exc)
            return ERROR
        return filepath

    def append(self, filepath: str, filebuf: bytes) -> int:
        """Add ``filebuf`` to the part file ``open`` made; 1, or -1 (see the log)."""
        try:
            self._append(filepath, filebuf)
        except (TransferError, OSError) as exc:
            self.logger.warning("copyfile.append %r failed: %s", filepath, exc)
            return ERROR
        return COPIED

    def copyfile(
        self,
        filepath: str,
        filebuf: bytes,
        mode: Any = 0o644,
        uid: Any = 0,
        gid: Any = 0,
        force: Any = None,
    ) -> int:
        """Write a whole file in one call: 1 copied, 0 unchanged (same sha1), -1 error.

        As in func, a changed file is first backed up to ``<path>.YYYY-MM-DD@HH:MM~``
        and ``force`` (anything but None) rewrites an unchanged one. The write goes
        through a part file, so a failure leaves the old file in place.
        """
        try:
            return self._copyfile(filepath, filebuf, as_mode(mode), as_id(uid), as_id(gid), force)
        except (TransferError, OSError, ValueError) as exc:
            self.logger.warning("copyfile.copyfile %r failed: %s", filepath, exc)
            return ERROR

    def checksum(self, thing: str | bytes) -> str:
        """sha1 hex of the file ``thing`` names, else of ``thing`` itself (func's rule)."""
        if isinstance(thing, str) and os.path.isfile(thing):
            return file_sha1(Path(thing))
        data = thing.encode("utf-8", "surrogateescape") if isinstance(thing, str) else bytes(thing)
        return hashlib.sha1(data).hexdigest()

    # --- chunked-transfer completion ------------------------------------------------------

    def commit(self, filepath: str, sha1: str, size: int) -> int:
        """Install the part file as ``filepath`` if it has ``size`` bytes and ``sha1``.

        The check is what makes a chunked transfer safe: each ``append`` is a separate
        call, so a lost, repeated or foreign chunk would otherwise go unnoticed. On a
        mismatch the part file is removed, the target left as it was, and
        :class:`TransferError` says what differed. Returns 1.
        """
        target = checked_target(filepath)
        part = part_path(target)
        try:
            info = os.lstat(part)
        except FileNotFoundError:
            raise TransferError(f"no transfer in progress for {filepath!r} (call open first)") from None
        try:
            self._verify(part, info, sha1, int(size))
            _replace(part, target)
        except BaseException:
            _discard(part)
            raise
        return COPIED

    def abort(self, filepath: str) -> int:
        """Drop an unfinished transfer's part file: 1 if there was one, else 0."""
        return COPIED if _discard(part_path(checked_target(filepath))) else UNCHANGED

    # --- helpers ------------------------------------------------------------------------

    def _append(self, filepath: str, filebuf: bytes) -> None:
        if not isinstance(filebuf, (bytes, bytearray)):
            raise TransferError(f"the chunk must be bytes, got {type(filebuf).__name__}")
        part = part_path(checked_target(filepath))
        try:
            fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise TransferError(f"no transfer in progress for {filepath!r} (call open first)") from None
        try:
            grown = os.fstat(fd).st_size + len(filebuf)
            if grown > self.max_file_bytes:
                raise TransferError(
                    f"{filepath!r} would grow to {grown} bytes, past max_file_bytes "
                    f"({self.max_file_bytes})"
                )
            _write_all(fd, filebuf)
        finally:
            os.close(fd)

    def _copyfile(
        self, filepath: str, filebuf: bytes, mode: int | None, uid: int, gid: int, force: Any
    ) -> int:
        if not isinstance(filebuf, (bytes, bytearray)):
            raise TransferError(f"the contents must be bytes, got {type(filebuf).__name__}")
        if len(filebuf) > self.max_file_bytes:
            raise TransferError(f"{len(filebuf)} bytes is past max_file_bytes ({self.max_file_bytes})")
        target = checked_target(filepath)
        exists = target.is_file()
        if exists and force is None and file_sha1(target) == hashlib.sha1(filebuf).hexdigest():
            return UNCHANGED
        if exists:
            shutil.copy2(target, f"{target}.{time.strftime(BACKUP_SUFFIX)}")
        part = part_path(target)
        fd = _new_part(part)
        try:
            try:
                _write_all(fd, filebuf)
                _set_owner_and_mode(fd, mode, uid, gid)
            finally:
                os.close(fd)
            _replace(part, target)
        except BaseException:
            _discard(part)
            raise
        return COPIED

    def _verify(self, part: Path, info: os.stat_result, sha1: str, size: int) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise TransferError(f"{str(part)!r} is not a regular file")
        if size > self.max_file_bytes:
            raise TransferError(f"{size} bytes is past max_file_bytes ({self.max_file_bytes})")
        if info.st_size != size:
            raise TransferError(f"size mismatch: received {info.st_size} bytes, the sender read {size}")
        received = file_sha1(part)
        if received != str(sha1).lower():
            raise TransferError(f"checksum mismatch: received sha1 {received}, the sender read {sha1}")

    def register_method_args(self) -> dict[str, Any]:
        path = {"type": "string", "optional": False, "description": "Absolute path of the file on the minion"}
        return {
            "open": {
                "args": {
                    "filepath": path,
                    "mode": {"type": "string", "optional": True, "default": None, "description": "Octal permission bits, e.g. 0644"},
                    "uid": {"type": "int", "optional": True, "default": -1, "description": "Owner (-1: unchanged)"},
                    "gid": {"type": "int", "optional": True, "default": -1, "description": "Group (-1: unchanged)"},
                },
                "description": "Start a chunked transfer into a part file next to the target",
            },
            "checksum": {
                "args": {"thing": {"type": "string", "optional": False, "description": "A path, or any string"}},
                "description": "sha1 of a file, or of the string itself",
            },
            "commit": {
                "args": {
                    "filepath": path,
                    "sha1": {"type": "string", "optional": False, "description": "sha1 of the whole file"},
                    "size": {"type": "int", "optional": False, "min": 0, "description": "Size in bytes"},
                },
                "description": "Verify the transferred file and move it into place",
            },
            "abort": {"args": {"filepath": path}, "description": "Drop an unfinished transfer"},
        }


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked; loop until everything is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
