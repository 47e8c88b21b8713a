"""Every file the project writes: atomic, with the umask's mode, and no temporary file left
behind by a failed write or, after the next write, by a killed one."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from common.core.files import PARTIAL, atomic_path
from common.core.weights import save_weights


def partials(folder):
    return sorted(p.name for p in folder.iterdir() if PARTIAL in p.name)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_weights({"head.fc.bias": np.zeros(3, np.float32)}, tmp_path / "w.safetensors")
        with atomic_path(tmp_path / "note.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    for name in ("w.safetensors", "note.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert os.umask(old) == old  # the umask itself is left as it was


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.name.startswith(".metrics.jsonl" + PARTIAL) and tmp.suffix == ".jsonl"
            raise RuntimeError("killed halfway")
    assert target.read_text() == "old\n" and partials(tmp_path) == []


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    stale = tmp_path / f".weights.safetensors{PARTIAL}{dead.pid}-abc.safetensors"
    live = tmp_path / f".weights.safetensors{PARTIAL}{os.getpid()}-def.safetensors"
    other = tmp_path / f".curves.png{PARTIAL}{dead.pid}-ghi.png"
    for p in (stale, live, other):
        p.write_bytes(b"\0" * 1024)
    save_weights({"head.fc.bias": np.zeros(3, np.float32)}, tmp_path / "weights.safetensors")
    # The dead writer's file of this target goes; a live writer's, and other targets', stay.
    assert partials(tmp_path) == sorted([live.name, other.name])


@pytest.mark.parametrize("name", ["w.pt", "w.weights.h5", "w.params", "w.npz"])
def test_convert_writes_every_format_atomically_with_the_umasks_mode(tmp_path, name):
    from common.commands.convert import read, write
    from common.core.init import init_weights
    from common.core.spec import get_spec
    spec = get_spec("cifar_resnet20")
    weights = init_weights(spec, 0)
    old = os.umask(0o022)
    try:
        write(weights, tmp_path / name, spec)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert partials(tmp_path) == []
    back = read(tmp_path / name, spec)
    assert all(np.array_equal(back[k], weights[k]) for k in weights)


# --- a full disk: one line naming the path and the space, the old file kept, nothing left ---

from tests import test_run_faults  # noqa: E402

small_disk = test_run_faults.small_disk  # the fixture: a folder on a small tmpfs


def test_a_write_that_runs_out_of_space_names_the_path_and_keeps_the_old_file(small_disk):
    from common.core.files import DiskFullError
    disk = small_disk(64 * 1024)
    target = disk / "metrics.jsonl"
    target.write_text("old\n")
    with pytest.raises(DiskFullError) as err:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 200_000)  # the system's ENOSPC
    assert str(err.value).startswith(f"{target}: expected more than the ")
    assert str(err.value).endswith("free on its file system to write it (no space left on "
                                   "device); the earlier metrics.jsonl there is kept")
    assert err.value.filename == str(target)  # a command answers it with one line
    assert target.read_text() == "old\n" and partials(disk) == []


def test_a_library_that_hides_enospc_is_still_answered_as_a_full_disk(small_disk):
    """safetensors wraps ENOSPC in its own error; torch.save says only "unexpected pos": both
    are a DiskFullError, with nothing left behind."""
    import torch
    from common.core.files import DiskFullError
    disk = small_disk(64 * 1024)
    big = {"head.fc.bias": np.zeros(100_000, np.float32)}
    with pytest.raises(DiskFullError, match="w.safetensors: expected more than .* nothing was"):
        save_weights(big, disk / "w.safetensors")
    with pytest.raises(DiskFullError, match=r"w.pt: expected more than .*\(no space left"):
        with atomic_path(disk / "w.pt") as tmp:
            torch.save({"w": torch.zeros(100_000)}, str(tmp))
    assert partials(disk) == []


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt", "w.weights.h5", "w.params"])
def test_convert_to_a_full_disk_is_one_line_before_anything_is_written(small_disk, tmp_path,
                                                                      name, capsys):
    """resnet-convert checks the room for its output first: one error line, exit 2, nothing
    written (MXNet would crash writing .params to a full disk)."""
    from common.commands import convert
    from common.core.init import init_weights
    from common.core.spec import get_spec
    src = tmp_path / "src.safetensors"
    save_weights(init_weights(get_spec("cifar_resnet20"), 0), src)
    disk = small_disk(256 * 1024)
    assert convert.main([str(src), str(disk / name), "--arch", "cifar_resnet20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {disk / name}: expected 1.") and err.count("\n") == 1, err
    assert "MB free on its file system to write it, got " in err
    assert "(no space left on device); nothing was written" in err
    assert os.listdir(disk) == []


# --- one run per folder ------------------------------------------------------------------------

def test_a_held_folder_is_refused_until_it_is_released(tmp_path):
    from common.core.files import FolderInUseError, lock_folder
    with lock_folder(tmp_path):
        with pytest.raises(FolderInUseError) as err:
            with lock_folder(tmp_path):
                pass
        assert str(err.value) == (f"--out: expected a folder no other run is writing, got "
                                  f"{tmp_path}, in use by process {os.getpid()}; wait for it to "
                                  f"end or choose another --out")
    with lock_folder(tmp_path):  # released: held again
        pass
