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
