"""The data readers against files written here by hand, byte by byte, from the formats' own
descriptions (IDX: big-endian header; CIFAR-10: a pickled dict of R, G, B planes), never with
the project's own writer: a reader and a writer that share a mistake cannot hide it here."""
import gzip
import pickle
import struct

import numpy as np
import pytest

from common.core.data import DataError, Dataset, batches, load_dataset, read_cifar_batch, read_idx


def idx_images(n: int, rows: int, cols: int, pixels: dict) -> bytes:
    """An IDX3 file of uint8 images, all 0 except pixels[(image, row, col)] = value; the data
    is row-major: image by image, row by row."""
    header = struct.pack(">I", 0x00000803) + struct.pack(">III", n, rows, cols)
    data = bytearray(n * rows * cols)
    for (i, r, c), value in pixels.items():
        data[i * rows * cols + r * cols + c] = value
    return header + bytes(data)


def idx_labels(labels) -> bytes:
    return struct.pack(">I", 0x00000801) + struct.pack(">I", len(labels)) + bytes(labels)


def write(path, raw: bytes):
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("name", ["images", "images.gz"])
@pytest.mark.parametrize("rows,cols", [(4, 4), (5, 7), (7, 5)])
def test_idx_pixel_lands_at_its_row_and_column(tmp_path, name, rows, cols):
    # Off the diagonal: a reader that transposes moves them, even in a square image.
    pixels = {(1, rows - 1, cols - 2): 200, (1, 2, 1): 90, (2, 0, cols - 1): 17}
    images = read_idx(write(tmp_path / name, idx_images(3, rows, cols, pixels)))
    assert images.shape == (3, rows, cols) and images.dtype == np.uint8
    for (i, r, c), value in pixels.items():
        assert images[i, r, c] == value, (i, r, c)
    assert int(images.sum()) == sum(pixels.values())


@pytest.mark.parametrize("name", ["labels", "labels.gz"])
def test_idx_labels_are_read_in_order(tmp_path, name):
    labels = read_idx(write(tmp_path / name, idx_labels([3, 0, 9, 9, 1])))
    assert labels.shape == (5,) and labels.tolist() == [3, 0, 9, 9, 1]


@pytest.mark.parametrize("name", ["x", "x.gz"])
@pytest.mark.parametrize("extra", [1, 35])
def test_idx_trailing_bytes_are_refused(tmp_path, name, extra):
    raw = idx_images(2, 5, 7, {}) + bytes(extra)  # 16 header bytes, 70 pixels, then extra
    # A gzip file is inflated no further than the promised bytes plus one, so its true size
    # is not known; a plain file's is.
    got = "more than 86" if name.endswith(".gz") else str(86 + extra)
    with pytest.raises(DataError, match=r"expected 86 bytes for shape \(2, 5, 7\), got "
                                        rf"{got} .*trailing"):
        read_idx(write(tmp_path / name, raw))


def test_idx_label_file_with_trailing_bytes_is_refused(tmp_path):
    with pytest.raises(DataError, match="trailing"):
        read_idx(write(tmp_path / "y", idx_labels([1, 2, 3]) + b"\x04"))


@pytest.mark.parametrize("magic", [0x00000903,   # signed bytes
                                   0x00000D03,   # float32
                                   0x00000B03,   # int16
                                   0x01000803,   # non-zero first byte
                                   0x00010803,   # non-zero second byte
                                   0x03080000])  # byte-swapped (little-endian) magic
def test_idx_wrong_magic_is_refused(tmp_path, magic):
    raw = struct.pack(">I", magic) + idx_images(2, 5, 7, {})[4:]
    with pytest.raises(DataError, match=r"expected an IDX file of unsigned bytes.*got header "
                                        + f"{magic:08x}"):
        read_idx(write(tmp_path / "x", raw))


@pytest.mark.parametrize("ndim", [0, 2, 4])
def test_idx_with_other_than_one_or_three_dimensions_is_refused(tmp_path, ndim):
    raw = struct.pack(">I", 0x00000800 + ndim) + struct.pack(">I", 2) * ndim + bytes(2 ** ndim)
    with pytest.raises(DataError, match=f"expected a 1-d .labels. or 3-d .images. IDX file, "
                                        f"got {ndim} dimensions"):
        read_idx(write(tmp_path / "x", raw))


def test_mnist_files_load_as_nchw_with_pixels_and_labels_in_place(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    write(folder / "train-images-idx3-ubyte.gz", idx_images(4, 28, 28, {(2, 3, 20): 250}))
    write(folder / "train-labels-idx1-ubyte.gz", idx_labels([7, 1, 4, 0]))
    write(folder / "t10k-images-idx3-ubyte.gz", idx_images(2, 28, 28, {(1, 27, 0): 5}))
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_labels([9, 2]))
    ds = load_dataset("mnist", str(tmp_path), download_ok=False)
    assert ds.train_x.shape == (4, 1, 28, 28) and ds.test_x.shape == (2, 1, 28, 28)
    assert ds.train_x[2, 0, 3, 20] == 250 and int(ds.train_x.sum()) == 250
    assert ds.test_x[1, 0, 27, 0] == 5 and int(ds.test_x.sum()) == 5
    assert ds.train_y.tolist() == [7, 1, 4, 0] and ds.test_y.tolist() == [9, 2]
    assert ds.train_y.dtype == np.int64 and ds.in_channels == 1 and ds.num_classes == 10


def test_mnist_label_outside_the_classes_is_refused_when_loaded(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    write(folder / "train-images-idx3-ubyte.gz", idx_images(2, 28, 28, {}))
    write(folder / "train-labels-idx1-ubyte.gz", idx_labels([1, 10]))
    write(folder / "t10k-images-idx3-ubyte.gz", idx_images(1, 28, 28, {}))
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_labels([0]))
    with pytest.raises(DataError, match=r"mnist train labels: expected class indices in "
                                        r"\[0, 10\), got 10 at position 1"):
        load_dataset("mnist", str(tmp_path), download_ok=False)


# --- CIFAR-10 python batches ------------------------------------------------------------------

def cifar_batch(path, n: int, pixels: dict, labels) -> None:
    """A CIFAR-10 batch as its page documents it: b'data' is (n, 3072) uint8, each row the
    1024 red values, then 1024 green, then 1024 blue, each plane row-major 32x32."""
    data = np.zeros((n, 3072), np.uint8)
    for (i, channel, r, c), value in pixels.items():
        data[i, channel * 1024 + r * 32 + c] = value
    path.write_bytes(pickle.dumps({b"batch_label": b"testing", b"data": data,
                                   b"labels": list(labels)}))


def test_cifar_planes_are_channels_in_rgb_order_with_pixels_in_place(tmp_path):
    pixels = {(1, 1, 3, 5): 77,     # green, row 3, column 5
              (1, 0, 0, 0): 10,     # red, first pixel
              (1, 2, 31, 0): 200,   # blue, last row, first column
              (0, 2, 0, 31): 3}     # blue, first row, last column
    cifar_batch(tmp_path / "b", 2, pixels, [6, 9])
    x, y = read_cifar_batch(tmp_path / "b")
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.uint8
    for (i, channel, r, c), value in pixels.items():
        assert x[i, channel, r, c] == value, (i, channel, r, c)
    assert int(x.sum()) == sum(pixels.values())
    assert y.tolist() == [6, 9]


def test_cifar_data_set_joins_the_five_batches_in_order(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(1, 6):  # batch b: 2 images, the second with pixel b in the green plane
        cifar_batch(folder / f"data_batch_{b}", 2, {(1, 1, 3, 5): b}, [b, b - 1])
    cifar_batch(folder / "test_batch", 3, {(2, 2, 30, 1): 99}, [4, 5, 6])
    ds = load_dataset("cifar10", str(tmp_path), download_ok=False)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_y.tolist() == [1, 0, 2, 1, 3, 2, 4, 3, 5, 4]
    assert ds.train_x[:, 1, 3, 5].tolist() == [0, 1, 0, 2, 0, 3, 0, 4, 0, 5]
    assert ds.test_x[2, 2, 30, 1] == 99 and ds.test_y.tolist() == [4, 5, 6]
    assert ds.in_channels == 3 and ds.num_classes == 10


@pytest.mark.parametrize("width,labels", [(3073, [0, 1]), (1024, [0, 1]), (3072, [0])])
def test_cifar_batch_of_wrong_shape_is_refused(tmp_path, width, labels):
    data = np.zeros((2, width), np.uint8)
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    with pytest.raises(DataError, match=rf"expected data of shape \(n, 3072\) and n labels, "
                                        rf"got \(2, {width}\) and {len(labels)} labels"):
        read_cifar_batch(tmp_path / "b")


def test_dataset_refuses_labels_that_do_not_fit():
    x = np.zeros((3, 1, 4, 4), np.uint8)
    with pytest.raises(DataError, match=r"toy test labels: expected class indices in \[0, 3\), "
                                        r"got -1 at position 2"):
        Dataset("toy", x, np.array([0, 1, 2]), x, np.array([0, 1, -1]), 3)
    with pytest.raises(DataError, match=r"toy train labels: expected one per example"):
        Dataset("toy", x, np.array([0, 1]), x, np.array([0, 1, 2]), 3)


# --- batches: shuffled images stay with their labels -------------------------------------------

def indexed_examples(n: int, rows: int = 3, cols: int = 2):
    """Image i is filled with the value i, its label a scrambled function of i: a batch whose
    labels were shuffled apart from its images shows at once."""
    x = np.repeat(np.arange(n, dtype=np.uint8), rows * cols).reshape(n, 1, rows, cols)
    y = (np.arange(n) * 7 + 3) % 11
    return x, y


def example_index(images: np.ndarray) -> np.ndarray:
    """The index each (constant) image encodes."""
    flat = images.reshape(len(images), -1)
    assert np.allclose(flat, flat[:, :1], atol=1e-6)  # still constant after resizing
    return np.rint(flat[:, 0] * 255).astype(int)


@pytest.mark.parametrize("resize", [None, 5])
def test_shuffled_batches_keep_images_and_labels_paired(resize):
    x, y = indexed_examples(23)
    seen = []
    for xb, yb in batches(x, y, 5, resize, seed=11, epoch=0):
        idx = example_index(xb)
        assert xb.dtype == np.float32 and xb.shape[2:] == ((resize, resize) if resize else (3, 2))
        assert yb.tolist() == y[idx].tolist(), (idx, yb)
        seen += idx.tolist()
    assert sorted(seen) == list(range(23))  # every example exactly once
    assert seen != list(range(23))          # and shuffled


def epoch_order(x, y, seed, epoch, batch_size=5):
    order = []
    for xb, yb in batches(x, y, batch_size, seed=seed, epoch=epoch):
        idx = example_index(xb)
        assert yb.tolist() == y[idx].tolist()
        order += idx.tolist()
    assert sorted(order) == list(range(len(x)))
    return order


def test_every_epoch_covers_every_example_once_in_a_new_order():
    x, y = indexed_examples(23)
    orders = [epoch_order(x, y, seed=3, epoch=e) for e in range(4)]
    assert len({tuple(o) for o in orders}) == 4
    assert epoch_order(x, y, seed=3, epoch=2) == orders[2]  # reproducible
    assert epoch_order(x, y, seed=4, epoch=2) != orders[2]  # and the seed matters


def test_batches_without_seed_come_in_file_order_with_a_short_last_batch():
    x, y = indexed_examples(23)
    got = list(batches(x, y, 5))
    assert [len(yb) for _, yb in got] == [5, 5, 5, 5, 3]
    assert np.concatenate([example_index(xb) for xb, _ in got]).tolist() == list(range(23))
    assert np.concatenate([yb for _, yb in got]).tolist() == y.tolist()
    np.testing.assert_array_equal(got[1][0], x[5:10].astype(np.float32) / 255)
