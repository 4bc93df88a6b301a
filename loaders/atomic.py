"""Crash-safe writes: a file or a folder is built under a temporary name beside its target and renamed into
place only when complete, so a crash never leaves a half-written dataset, checkpoint or run file behind.

Temporary names carry their owner, `.NAME.tmp-<pid>-<host>-<random>`, so the next run on the same path can tell
the temporary of a process that died (kill -9, power loss) from one still being written and remove it
(`remove_stale_temporaries`). New files and folders get the mode a plain open() or mkdir() would give them
(0o666 / 0o777 less the umask), like any other file the user writes.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mmtm.loaders.errors import UserError, write_error

# The folder locks (`hold`) this process holds: lock file -> [fd, how many times taken].
_HELD: dict[str, list[int]] = {}

# A temporary whose owner cannot be asked (written on another host, or named by an older mmtm without a pid)
# counts as stale only after this long: no write of a dataset or checkpoint takes a day.
STALE_AGE_S = 24 * 3600

_OWNED = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-(?P<host>[A-Za-z0-9._]*)-[0-9a-f]{8}")
_UNOWNED = (re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp"),       # older atomic_write_bytes (mkstemp)
            re.compile(r"\.(?P<name>.+)\.tmp-[a-z0-9_]{8}"),        # older AtomicDir (mkdtemp)
            re.compile(r"\.(?P<name>.+)\.old-\d+"))                 # older AtomicDir's replaced folder


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync, then rename over `path`. Stale temporaries of
    earlier writes of `path` go first. A full disk or a name too long is a UserError (`write_error`), raised
    after the temporary is gone and with `path` as it was."""
    path = Path(path)
    tmp = _temporary(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        error = write_error(e, path)
        if error is e:
            raise
        raise error from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


class AtomicDir:
    """Build a folder under a temporary name beside `final`, rename it into place on success.

    A crash or an error leaves `final` as it was (absent or the previous complete folder). Entering removes the
    stale temporaries of earlier runs on `final`; the rename into place holds `final`'s lock, so two writers
    finishing at once both succeed, the later one's folder winning."""

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.final)
        self.tmp = _temporary(self.final, "tmp")
        try:
            self.tmp.mkdir(0o777)
        except OSError as e:
            error = write_error(e, self.final)
            if error is e:
                raise
            raise error from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and (error := write_error(exc, self.final)) is not exc:
                raise error from None
            return
        old = None
        with locked(self.final):
            if self.final.exists():
                old = _temporary(self.final, "old")
                os.rename(self.final, old)
            os.rename(self.tmp, self.final)
        if old is not None:  # outside the lock: deleting a large dataset takes a while
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def locked(target: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of `target`: an flock on `.NAME.lock` beside it, a file that exists only while held.

    The holder unlinks the file before unlocking; a waiter that then gets the lock of the unlinked file sees that
    the name now points elsewhere (or nowhere) and tries again, so two processes never both hold it."""
    lock = _lock_path(Path(target))
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _names(lock, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def hold(lock: str | os.PathLike, *, wait: bool = False) -> str | None:
    """Take the exclusive flock of the file `lock` (created; it names this process, pid and host, while held) for
    this process until `release`. Returns None once held; when another process holds it, waits with `wait`, else
    returns what the holder wrote (`pid N on HOST`). Taken again by its holder it only counts; release as often.
    A lock whose holder died is free at once: the kernel drops an flock with the last process that held it."""
    key = os.path.abspath(lock)
    if key in _HELD:
        _HELD[key][1] += 1
        return None
    while True:
        fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            return holder or "another process"
        except BaseException:
            os.close(fd)
            raise
        if _names(Path(key), fd):  # else its holder released (unlinked) it meanwhile: take the new one
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    return None


def release(lock: str | os.PathLike) -> None:
    """Give back a lock taken with `hold`; the last release unlinks its file, then unlocks."""
    key = os.path.abspath(lock)
    held = _HELD[key]
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        Path(key).unlink(missing_ok=True)
        os.close(held[0])


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove what writers of `target` that died left beside it: temporaries whose owner process is gone (or,
    when it cannot be asked, that are older than STALE_AGE_S) and an unheld lock file. Returns what was removed;
    a folder that does not exist or cannot be listed holds nothing to remove."""
    target = Path(target)
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    removed = []
    for path in entries:
        if _is_stale_temporary(path, target.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        elif path == _lock_path(target) and _remove_unheld_lock(path):
            removed.append(path)
    return removed


def check_names_fit(path: str | os.PathLike, what: str, *, atomic: bool = True) -> None:
    """Every name in `path` fits the file system, and so does (`atomic`) the temporary that an atomic write of
    `path` makes beside it (about 30 bytes longer): a UserError otherwise, raised before anything is written."""
    path = Path(path)
    existing = path.parent
    while not _is_dir(existing):
        existing = existing.parent
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"{path}: {what} holds a name of {len(os.fsencode(part))} bytes, more than the {limit} "
                            "the file system allows; choose a shorter one")
    if atomic and (temporary := len(os.fsencode(_temporary(path, "tmp").name))) > limit:
        raise UserError(f"{path}: {what} is written under a temporary name of {temporary} bytes first (.NAME.tmp-…), "
                        f"more than the {limit} the file system allows; choose a name shorter by {temporary - limit}")


def _is_dir(path: Path) -> bool:
    try:
        return os.path.isdir(path) or path == path.parent
    except OSError:
        return False


def _temporary(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{_host()}-{secrets.token_hex(4)}")


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _host() -> str:
    # Only characters the name pattern expects: a hostname may hold '-', which separates the fields.
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def _is_stale_temporary(path: Path, name: str) -> bool:
    owned = _OWNED.fullmatch(path.name)
    if owned is not None:
        if owned["name"] != name:
            return False
        if owned["host"] == _host():
            return not _alive(int(owned["pid"]))
        return _older_than(path, STALE_AGE_S)
    unowned = (m for m in (p.fullmatch(path.name) for p in _UNOWNED) if m is not None)
    return any(m["name"] == name for m in unowned) and _older_than(path, STALE_AGE_S)


def _remove_unheld_lock(path: Path) -> bool:
    """Unlink a lock file nobody holds (its holder was killed), taking it first as `locked` does."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _names(path, fd):
            return False
        path.unlink()
        return True
    except BlockingIOError:  # held: a live writer is renaming into place
        return False
    finally:
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except FileNotFoundError:
        return False
