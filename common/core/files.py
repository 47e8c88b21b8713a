"""Atomic file writing, used for every file the project writes: nothing half-written is left.

A write goes to `.<name>.partial-<pid>-<random><suffixes>` beside the target (the suffixes
kept, for writers that pick a format from them), then is renamed onto the target. The file gets the
mode an ordinary `open(path, "w")` would give (0644 under umask 022), not mkstemp's 0600. A
failed write removes its temporary file; one left by a killed process is removed by the next
write to the same target.

`path_error` makes the file-system errors about a user's path that the project raises itself.
"""
from __future__ import annotations

import glob
import os
import tempfile
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


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix); renamed onto `path` when the block ends
    without an error, removed otherwise."""
    path = Path(path)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL}{os.getpid()}-",
                               suffix="".join(path.suffixes))  # Keras wants .weights.h5
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
