"""Canonical weights: one flat, ordered mapping from framework-neutral names to NumPy arrays.

Names come from the spec (`stem.conv.weight`, `stage2.0.bn1.gamma`, `head.fc.bias`) and are the
same in all four frameworks. Layout: convolution kernels (out, in, kh, kw); dense weights
(out, in); BatchNorm `gamma`, `beta`, `running_mean`, `running_var`, each (channels,). All
arrays are float32. Files are `.safetensors` or `.npz` (read with `allow_pickle=False`), so
loading a weights file never runs code.
"""
from __future__ import annotations

import json
import os
import zipfile
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import numpy as np

from common.core.errors import Error
from common.core.files import atomic_path, path_error
from common.core.oracle import layers
from common.core.spec import ResNetSpec

Weights = dict[str, np.ndarray]


class WeightsError(Error):
    """Weights do not fit the layout: the message lists what is missing, unexpected or mis-shaped."""


def canonical_layout(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical weight name of `spec`, in forward order, with its shape."""
    return {f"{layer.path}.{name}": shape
            for layer in layers(spec, 2 ** (len(spec.stages) + 4))
            for name, shape in layer.params.items()}


def few_names(names: list[str], most: int = 5) -> str:
    """A few names and the count, so that a wrong file does not print thousands of names."""
    shown = ", ".join(names[:most])
    return f"{len(names)}: {shown}" + (f", ... ({len(names) - most} more)" if len(names) > most
                                       else "")


def check_values(name: str, array) -> None:
    """Raise WeightsError unless `array` holds finite floating-point values (and, for a running
    variance, no negative one); the message names the tensor and the first bad value."""
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.floating):
        raise WeightsError(f"{name}: expected a floating-point dtype, got {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        finite = bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())
    if not finite:
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise WeightsError(f"{name}: expected finite values, got {a[pos]} at position {pos}")
    if name.endswith(".running_var") and a.size and a.min() < 0:
        pos = tuple(int(i) for i in np.argwhere(a < 0)[0])
        raise WeightsError(f"{name}: expected values >= 0 (a variance), got {a[pos]} at "
                           f"position {pos}")


def layout_problems(layout: Mapping[str, tuple[int, ...]],
                    weights: Mapping[str, object]) -> list[str]:
    """What keeps `weights` (name -> array or shape) from fitting `layout` (name -> shape): the
    missing, unexpected and mis-shaped names, a few of each with their counts; [] if it fits.
    Names are whatever the layout uses: canonical ones, or a foreign file's (torchvision's)."""
    shapes = {n: tuple(v) if isinstance(v, tuple) else tuple(np.shape(v))
              for n, v in weights.items()}
    missing = [n for n in layout if n not in shapes]
    unexpected = [n for n in shapes if n not in layout]
    misshaped = [f"{n}: expected {layout[n]}, got {shapes[n]}"
                 for n in layout if n in shapes and shapes[n] != layout[n]]
    problems = []
    if missing:
        problems.append(f"missing {few_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {few_names(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {'; '.join(misshaped[:5])}"
                        + (f"; ... ({len(misshaped) - 5} more)" if len(misshaped) > 5 else ""))
    return problems


def check_weights(spec: ResNetSpec, weights: Mapping[str, np.ndarray]) -> None:
    """Raise WeightsError naming the missing, unexpected and mis-shaped entries (a few of each,
    with their counts), or the first tensor with a non-float dtype, a NaN or an infinity, or a
    negative running variance."""
    layout = canonical_layout(spec)
    problems = layout_problems(layout, weights)
    if problems:
        raise WeightsError(f"weights do not fit {spec.name!r}: " + " | ".join(problems))
    for name in layout:
        check_values(name, weights[name])


def unreadable(path, kind: str, err: BaseException | None = None) -> WeightsError:
    """The error for a weights file that its reader could not read: the path, the format
    expected and (briefly) what the reader said. A reader's message that advises loading the
    file with pickle (torch.load's `weights_only=False`) is left out: never unpickle a file
    you did not write."""
    lines = [line.strip() for line in str(err or "").splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # MXNet's C++ backtrace: its last line
        lines = lines[-1:]
    first = lines[0].removeprefix(f"{type(err).__name__}: ").split(". ")[0][:160] if lines else ""
    said = "" if err is None else (f"{type(err).__name__}: {first}" if first
                                   else type(err).__name__)
    if "weights_only" in said or "pickle" in said.lower():
        said = type(err).__name__
    return WeightsError(f"weights file {path}: expected {kind}, could not read it"
                        + (f" ({said})" if said else "") + "; is it truncated or of another format?")


def fit_file(path, load):
    """load() (a framework's from_canonical of a file's arrays), with the file's path put before
    a WeightsError: which file does not fit is the first thing a user needs to know."""
    try:
        return load()
    except WeightsError as err:
        raise WeightsError(f"weights file {path}: {err}") from None


def save_weights(weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write weights to `.safetensors` or `.npz`, atomically (temporary file, then rename)."""
    path = Path(path)
    arrays = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in weights.items()}
    if path.suffix not in (".safetensors", ".npz"):
        raise WeightsError(f"weights file: expected a .safetensors or .npz path, got {path}")
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file
            save_file(arrays, str(tmp))
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return path


def load_weights(path: str | os.PathLike, spec: ResNetSpec | None = None) -> Weights:
    """Read a `.safetensors` or `.npz` weights file; never unpickles, so never runs code.
    float16 and bfloat16 tensors are read as float32 (exactly: both widen without rounding).
    With `spec`, the names, shapes and dtypes the file's headers promise are checked against
    it before any data is read, so that a file that does not fit costs no more than its
    headers (an .npz member of compressed zeros may promise gigabytes)."""
    path = Path(path)
    if not path.is_file():
        raise path_error(FileNotFoundError, f"weights file: expected an existing file, got {path}",
                         path)
    if path.suffix not in (".safetensors", ".npz"):
        raise WeightsError(f"weights file: expected a .safetensors or .npz path, got {path}")
    kind = "safetensors" if path.suffix == ".safetensors" else "npz (zip of .npy arrays)"
    try:
        entries = stored_entries(path)
    except WeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - each reader has its own errors for a bad file
        raise unreadable(path, f"a {kind} file", err) from None
    if spec is not None:
        fit_file(path, lambda: check_entries(spec, entries))
    try:
        return {name: as_float32(entry.read()) for name, entry in entries.items()}
    except WeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - a file damaged past its headers
        raise unreadable(path, f"a {kind} file", err) from None


class Entry(NamedTuple):
    """One tensor of a weights file as its header describes it: shape, dtype (a NumPy dtype,
    or safetensors' name for one NumPy lacks: BF16, F8_...) and read(), which reads only the
    bytes the header promises."""
    shape: tuple[int, ...]
    dtype: str
    read: Callable[[], np.ndarray]


def stored_entries(path: str | os.PathLike) -> dict[str, Entry]:
    """Name -> Entry of every tensor of a `.safetensors` or `.npz` file, from the headers
    alone (nothing of the data is read until an entry's read() is called)."""
    path = Path(path)
    return safetensors_entries(path) if path.suffix == ".safetensors" else npz_entries(path)


def check_entries(spec: ResNetSpec, entries: Mapping[str, Entry]) -> None:
    """check_weights from a file's headers: names, shapes and a floating-point dtype."""
    problems = layout_problems(canonical_layout(spec), {n: e.shape for n, e in entries.items()})
    if problems:
        raise WeightsError(f"weights do not fit {spec.name!r}: " + " | ".join(problems))
    for name, entry in entries.items():
        if not _floating(entry.dtype):
            raise WeightsError(f"{name}: expected a floating-point dtype, got {entry.dtype}")


def _floating(dtype: str) -> bool:
    """Whether a header's dtype is a floating-point one this module reads."""
    if dtype in HALF:
        return True
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.floating))
    except TypeError:  # a name NumPy does not know (safetensors' F8_E4M3, ...)
        return False


# safetensors' dtype names that NumPy reads as they are; BF16 is widened by hand (as_float32).
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                      "BOOL": "bool"}
HALF = ("BF16",)
SAFETENSORS_MAX_HEADER = 100 << 20  # safetensors' own limit


def safetensors_entries(path: Path) -> dict[str, Entry]:
    """The tensors of a `.safetensors` file from its header: 8 bytes (little-endian length),
    a JSON object name -> {dtype, shape, data_offsets}, then the data. safetensors' own
    reader checks the header first (offsets inside the file, no overlap), and raises what it
    raises for a damaged file."""
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy"):
        pass  # validates the header against the file, or raises
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > SAFETENSORS_MAX_HEADER:
            raise ValueError(f"a header of {size} bytes")
        header = json.loads(f.read(size))
    start = 8 + size
    return {name: Entry(tuple(e["shape"]), SAFETENSORS_DTYPES.get(e["dtype"], e["dtype"]),
                        partial(_read_safetensor, path, e, start + e["data_offsets"][0]))
            for name, e in header.items() if name != "__metadata__"}


def _read_safetensor(path: Path, entry: dict, offset: int) -> np.ndarray:
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"], "uint16" if entry["dtype"] == "BF16" else None)
    if dtype is None:
        raise WeightsError(f"weights file {path}: expected tensors of a dtype NumPy reads "
                           f"({', '.join([*SAFETENSORS_DTYPES, *HALF])}), got {entry['dtype']}")
    shape = tuple(entry["shape"])
    array = np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"),
                        count=int(np.prod(shape)), offset=offset).reshape(shape)
    return _bfloat16_as_float32(array) if entry["dtype"] == "BF16" else array


def npz_entries(path: Path) -> dict[str, Entry]:
    """The arrays of a `.npz` file from each member's .npy header (np.lib.format): an object
    array (which only pickle could read) is refused here, as np.load(allow_pickle=False) does."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            with zf.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"{member}: .npy format version {version}")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(fp)
            if dtype.hasobject:
                raise ValueError(f"{member}: Object arrays cannot be loaded when "
                                 f"allow_pickle=False")
            out[member.removesuffix(".npy")] = Entry(tuple(shape), dtype.name,
                                                     partial(_read_npz_member, path, member))
    return out


def _read_npz_member(path: Path, member: str) -> np.ndarray:
    with zipfile.ZipFile(path) as zf, zf.open(member) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def _bfloat16_as_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the upper half of a float32: shifting its 16 bits up gives the float32 of
    the same value exactly (NaN and infinities included)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def as_float32(array: np.ndarray) -> np.ndarray:
    """float16 and bfloat16 (ml_dtypes' type, which TensorFlow gives NumPy) widened to float32,
    exactly; every other dtype as it is (check_values refuses the non-floating ones)."""
    if array.dtype.name == "bfloat16":
        return _bfloat16_as_float32(array.view(np.uint16))
    return array.astype(np.float32) if array.dtype == np.float16 else array


STEM_FILE_CHANNELS = 3  # what --adapt-stem reads a file's stem as: an ImageNet file's RGB


def adapt_stem(weights: Weights, in_channels: int) -> Weights:
    """`weights` (a 3-channel file's) for `in_channels` input channels, by timm's in_chans rule
    for a pretrained stem convolution (O, I, kh, kw): onto 1 channel, the kernel summed over
    its I input channels (a gray image is the same value in every channel, so the convolution
    of it is unchanged); onto C others, the I channels repeated to C and scaled by I / C."""
    kernel = np.asarray(weights["stem.conv.weight"], np.float32)
    if in_channels == 1:
        adapted = kernel.sum(axis=1, keepdims=True)
    else:
        repeats = -(-in_channels // kernel.shape[1])
        adapted = np.tile(kernel, (1, repeats, 1, 1))[:, :in_channels] * (kernel.shape[1]
                                                                            / in_channels)
    return {**weights, "stem.conv.weight": adapted.astype(np.float32)}
