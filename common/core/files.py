"""Atomic file writing, used for every file the project writes: nothing half-written is left.

A write goes to `.<name>.partial-<pid>-<random><suffixes>` beside the target (the suffixes
kept, for writers that pick a format from them), then is renamed onto the target. The file gets the
mode an ordinary `open(path, "w")` would give (0644 under umask 022), not mkstemp's 0600. A
failed write removes its temporary file; one left by a killed process is removed by the next
write to the same target.

A write that runs out of space (ENOSPC, or a writer library's error that says so, as
safetensors' does) is a `DiskFullError`, one line naming the path and the space it needed; the
target keeps its earlier content and no temporary file is left.

`path_error` makes the file-system errors about a user's path that the project raises itself.
`lock_folder` keeps two processes from writing one run folder at once.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PARTIAL = ".partial-"


class _ReadsAsMessage:
    """An OSError that reads as its message alone: the message names the path already."""

    def __str__(self) -> str:
        return str(self.strerror)


class MissingPathError(_ReadsAsMessage, FileNotFoundError):
    """A path the user gave that does not exist."""


class PathInUseError(_ReadsAsMessage, FileExistsError):
    """A path that holds what a command will not overwrite."""


class NotAFolderError(_ReadsAsMessage, NotADirectoryError):
    """A folder flag that names a file."""


class FolderNotWritableError(_ReadsAsMessage, PermissionError):
    """A folder this user cannot make or write."""


class DiskFullError(_ReadsAsMessage, OSError):
    """A write that found too little free space on the target's file system."""


class FolderInUseError(_ReadsAsMessage, BlockingIOError):
    """A run folder that another live process is writing."""


_PATH_ERRORS = {FileNotFoundError: MissingPathError, FileExistsError: PathInUseError,
                NotADirectoryError: NotAFolderError, PermissionError: FolderNotWritableError}


def path_error(kind: type[OSError], message: str, path: str | os.PathLike) -> OSError:
    """An OSError of `kind` (FileNotFoundError, NotADirectoryError, ...) about the user's
    `path`, which it holds as its filename: commands answer such an error with one line
    (common.commands.cli.expected), which is `message`, not Python's "[Errno N] ...: 'path'"."""
    return _PATH_ERRORS[kind](None, message, str(path))


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writes to `path` whose process no longer runs."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{PARTIAL}*"):
        pid = tmp.name[len(path.name) + 1 + len(PARTIAL):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def free_bytes(folder: str | os.PathLike) -> int:
    """The bytes this user may still write on the file system of `folder`."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def size_text(n: float) -> str:
    """A byte count for people: 812 bytes, 4.2 MB, 1.3 GB (powers of 1000, as df -H)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether a write into `folder` that raised err failed for want of space: an OSError with
    ENOSPC or EDQUOT, a writer library's own error with the system's words in it (safetensors
    and h5py wrap the OSError), or any error raised while the file system has less than
    LOW_SPACE left (torch.save and MXNet say only that a write was short)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(words in str(err) for words in (os.strerror(errno.ENOSPC),
                                           os.strerror(errno.EDQUOT))):
        return True
    try:
        return free_bytes(folder) < LOW_SPACE
    except OSError:
        return False


LOW_SPACE = 64 * 1024  # a file system with less left than this is full, for out_of_space


def arrays_bytes(arrays) -> int:
    """About the bytes a file of these arrays takes: their data, a header line each, and
    64 kB for the container; used to refuse a write before it starts (ensure_space)."""
    return sum(getattr(a, "nbytes", 0) + 256 for a in arrays) + 64 * 1024


def disk_full(path: Path, needed: int | None) -> DiskFullError:
    """The one-line error of a write to `path` that does not fit: the space it needs (or, not
    known beforehand, more than what is free), what is free, and whether an earlier file at
    `path` is kept (it is: writes are atomic)."""
    free = size_text(free_bytes(path.parent))
    want = (f"{size_text(needed)} free on its file system to write it, got {free}"
            if needed is not None else f"more than the {free} free on its file system to "
                                       f"write it")
    kept = (f"the earlier {path.name} there is kept" if path.exists()
            else "nothing was written")
    return DiskFullError(errno.ENOSPC, f"{path}: expected {want} (no space left on device); "
                                       f"{kept}", str(path))


def ensure_space(path: str | os.PathLike, needed: int) -> None:
    """A DiskFullError unless `needed` bytes are free where `path` will be written."""
    path = Path(path)
    if free_bytes(path.parent) < needed:
        raise disk_full(path, needed)


@contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix); renamed onto `path` when the block ends
    without an error, removed otherwise. `needed`, the bytes the write will take when the
    caller knows them, is checked against the free space before anything is written; a write
    that runs out of space all the same is a DiskFullError too (out_of_space)."""
    path = Path(path)
    remove_stale_partials(path)
    if needed is not None:
        ensure_space(path, needed)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL}"
                                   f"{os.getpid()}-", suffix="".join(path.suffixes))
        os.close(fd)  # Keras wants the suffix .weights.h5
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as err:
        if isinstance(err, DiskFullError) or not out_of_space(err, path.parent):
            raise
        _remove(tmp)  # before measuring what is free
        raise disk_full(path, needed) from err
    finally:
        _remove(tmp)


def _remove(tmp: str | None) -> None:
    if tmp and os.path.exists(tmp):
        os.remove(tmp)


@contextmanager
def lock_folder(path: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold the run folder `path` for this process while the block runs: a second process
    that asks for it is refused with a FolderInUseError naming the holder's process id. The
    lock is the kernel's (flock on `path/.lock`), so a process that dies, however it dies,
    holds it no longer; the file itself stays, harmless."""
    lock = Path(path) / ".lock"
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(errno.EBUSY, f"{flag}: expected a folder no other run is "
                                                f"writing, got {path}, in use by process "
                                                f"{_holder(lock)}; wait for it to end or choose "
                                                f"another {flag}", str(path)) from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield lock


def _holder(lock: Path) -> str:
    """The process id the holder of `lock` wrote (it writes it just after taking the lock)."""
    for _ in range(20):
        pid = lock.read_text().strip()
        if pid:
            return pid
        time.sleep(0.05)
    return "(its id not yet written)"


def writable_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """The folder `path`, created if needed and proven writable now (a probe file is written
    and removed), so that a bad --out stops a command before its work, not after an epoch."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise path_error(NotADirectoryError, f"{flag}: expected a folder, got the file {path}",
                         path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=f".write-test{PARTIAL}{os.getpid()}-"):
            pass
    except OSError as err:
        raise path_error(PermissionError, f"{flag}: expected a folder this user can write, got "
                         f"{path} ({err.strerror or err})", path) from None
    return path
