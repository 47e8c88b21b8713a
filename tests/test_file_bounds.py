"""Files that lie about their size are refused at the cost of what they promise, not of what
they hold: each file here is small on disk (or sparse) and would take about 1 GiB to read whole.
A child process reads it (the readers are framework-free, common/) and reports its peak
resident memory; the bound asserted is far below 1 GiB and far above the child's baseline.
The messages are the ones every framework's command gives (tests/test_bad_inputs.py rows)."""
from __future__ import annotations

import gzip
import json
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
BOUND_MIB = 300  # the child's baseline (Python, NumPy, common/) is about 60 MiB


def peak_rss_of(code: str, timeout: float = 60) -> tuple[dict, float]:
    """Run `code` in a child Python (the repository first on its path) that sets `said` to a
    dict; returns that dict and the child's peak resident memory in MiB."""
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a child of this
    # pytest process (which holds four frameworks) would report the parent's peak.
    script = (f"import json, sys\nsys.path.insert(0, {str(ROOT)!r})\nsaid = {{}}\n{code}\n"
              f"hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
              f"said['peak_mib'] = int(hwm.split()[1]) / 1024\nprint(json.dumps(said))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    return said, said.pop("peak_mib")


def refused(call: str) -> str:
    """Child code: call, which must raise an Error; its message is said['error']."""
    return (f"from common.core.errors import Error\ntry:\n    {call}\n    said['error'] = None\n"
            f"except Error as err:\n    said['error'] = str(err)\n")


def zeros_deflated(n: int, level: int = 1) -> bytes:
    """n zero bytes, deflated (raw stream), 16 MiB at a time."""
    z, out = zlib.compressobj(level, zlib.DEFLATED, -15), []
    for start in range(0, n, 1 << 24):
        out.append(z.compress(bytes(min(1 << 24, n - start))))
    return b"".join(out) + z.flush()


def test_a_gzip_idx_file_is_inflated_no_further_than_its_header_promises(tmp_path):
    """A 2x5x7 IDX header, then 1 GiB of zeros: gzip members may follow one another, so the
    file is the header's member and 64 copies of one 16 MiB member (about 1 MiB on disk)."""
    head = struct.pack(">IIII", 0x00000803, 2, 5, 7) + bytes(70)
    member = gzip.compress(bytes(1 << 24), compresslevel=9)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(64):
            f.write(member)
    assert path.stat().st_size < 2 << 20
    said, peak = peak_rss_of(refused(f"from common.core.data import read_idx; "
                                     f"read_idx({str(path)!r})"))
    assert "expected 86 bytes for shape (2, 5, 7), got more than 86" in said["error"], said
    assert peak < BOUND_MIB, peak


def npz_with_member(path: Path, name: str, shape: tuple[int, ...]) -> Path:
    """An .npz whose member `name` holds float32 zeros of `shape`, deflated, written here from
    the .npy format's description (magic, version 1.0, a padded header dict, the data)."""
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    npy_head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            f.write(npy_head)
            for start in range(0, 4 * int(np.prod(shape)), 1 << 24):
                f.write(bytes(min(1 << 24, 4 * int(np.prod(shape)) - start)))
    return path


@pytest.fixture(scope="module")
def npz_bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "w.npz"
    return npz_with_member(path, "stem.conv.weight", (GIB // 4,))


def test_an_npz_member_that_does_not_fit_is_refused_from_its_header(npz_bomb):
    """1 GiB of float32 zeros in a file of a few MiB: the shape in the member's header does
    not fit the spec, so load_weights refuses it before reading any data; listing the file's
    shapes (what format detection and --weights' head check read) reads headers only."""
    assert npz_bomb.stat().st_size < 8 << 20
    said, peak = peak_rss_of(
        "from common.core.spec import get_spec\nfrom common.core.weights import load_weights\n"
        + refused(f"load_weights({str(npz_bomb)!r}, get_spec('cifar_resnet20'))"))
    assert ("weights do not fit 'cifar_resnet20': missing" in said["error"]
            and "mis-shaped 1: stem.conv.weight: expected (16, 3, 3, 3), got (268435456,)"
            in said["error"] and str(npz_bomb) in said["error"]), said
    assert peak < BOUND_MIB, peak
    said, peak = peak_rss_of(f"from common.formats.libraries import npz_shapes\n"
                             f"said['shapes'] = npz_shapes({str(npz_bomb)!r})")
    assert said["shapes"] == {"stem.conv.weight": [GIB // 4]}
    assert peak < BOUND_MIB, peak


def sparse_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    """A .safetensors file written from its description (8-byte little-endian header length,
    the JSON header, the data), name -> (dtype, shape); the data is a hole (a sparse file),
    so a 1 GiB tensor takes no disk."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = {"F32": 4, "F16": 2, "BF16": 2}[dtype] * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset,
                                                                              offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def test_a_safetensors_header_that_does_not_fit_is_refused_before_its_data(tmp_path):
    """A safetensors file whose stem.conv.weight is 1 GiB (sparse): refused from the header."""
    path = sparse_safetensors(tmp_path / "w.safetensors",
                              {"stem.conv.weight": ("F32", (GIB // 4,))})
    said, peak = peak_rss_of(
        "from common.core.spec import get_spec\nfrom common.core.weights import load_weights\n"
        + refused(f"load_weights({str(path)!r}, get_spec('cifar_resnet20'))"))
    assert ("mis-shaped 1: stem.conv.weight: expected (16, 3, 3, 3), got (268435456,)"
            in said["error"]), said
    assert peak < BOUND_MIB, peak


def test_a_checkpoint_that_does_not_fit_is_refused_before_its_data(tmp_path):
    """A checkpoint (safetensors with the train scripts' metadata) whose model/ part promises
    1 GiB for stem.conv.weight: load_checkpoint with the run's spec refuses it from the header."""
    meta = {"epoch": "1", "history": "[]", "config": "{}", "framework": "torch"}
    path = sparse_safetensors(tmp_path / "checkpoint.safetensors",
                              {"model/stem.conv.weight": ("F32", (GIB // 4,))}, meta)
    said, peak = peak_rss_of(
        "from common.core.spec import get_spec\n"
        "from common.formats.checkpoint import load_checkpoint\n"
        + refused(f"load_checkpoint({str(path)!r}, get_spec('cifar_resnet20'))"))
    assert said["error"].startswith(f"checkpoint {path}: weights do not fit 'cifar_resnet20'")
    assert "stem.conv.weight: expected (16, 3, 3, 3), got (268435456,)" in said["error"], said
    assert peak < BOUND_MIB, peak


def test_a_cifar_batch_of_references_is_refused_before_it_becomes_an_array(tmp_path):
    """A pickle refers to one object many times at a few bytes each: labels that are 200,000
    references to one 3072-byte array take 0.6 MB on disk and 600 MiB as one NumPy array."""
    row = np.zeros(3072, np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                   b"labels": [row] * 200_000}))
    assert path.stat().st_size < 2 << 20
    said, peak = peak_rss_of(refused(f"from common.core.data import read_cifar_batch; "
                                     f"read_cifar_batch({str(path)!r})"))
    assert "expected b'labels' a list of integers" in said["error"], said
    assert peak < BOUND_MIB, peak
