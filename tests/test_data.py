"""The data readers and the one pipeline, on small files the tests write themselves."""
import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from common.core import data
from common.core.data import DataError, batches, load_dataset, read_cifar_batch, read_idx, to_float


def write_idx(path, array: np.ndarray, compress=True):
    raw = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)
    return raw


def write_fashion(folder, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        write_idx(folder / name, a)
    return arrays


def test_idx_round_trip(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (3, 5, 4)).astype(np.uint8)
    write_idx(tmp_path / "x.gz", images)
    write_idx(tmp_path / "y", np.array([1, 2, 3]), compress=False)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)
    assert read_idx(tmp_path / "y").tolist() == [1, 2, 3]


def test_truncated_idx_names_expected_and_given_size(tmp_path):
    raw = write_idx(tmp_path / "x", np.zeros((3, 5, 4)), compress=False)
    (tmp_path / "x").write_bytes(raw[:-7])
    with pytest.raises(DataError, match=r"expected 76 bytes for shape \(3, 5, 4\), got 69"):
        read_idx(tmp_path / "x")


def test_corrupt_gzip_and_bad_magic_are_reported(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 7]))
    (tmp_path / "cut.gz").write_bytes(good[:-6])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "magic").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="expected an IDX file.*got header 504b0304"):
        read_idx(tmp_path / "magic")


def test_fashion_mnist_is_found_in_torchvision_layout(tmp_path):
    arrays = write_fashion(tmp_path / "FashionMNIST" / "raw")
    ds = load_dataset("fashion_mnist", str(tmp_path), download_ok=False)
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.train_y, arrays["train-labels-idx1-ubyte.gz"])
    assert ds.in_channels == 1 and ds.num_classes == 10


def test_label_image_count_mismatch_is_reported(tmp_path):
    folder = tmp_path / "fashion-mnist"
    write_fashion(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(4))
    with pytest.raises(DataError, match="expected as many t10k labels as images, got 4 labels and 5"):
        load_dataset("fashion_mnist", str(tmp_path), download_ok=False)


def test_missing_files_offline_say_which_files_go_where(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "cache_roots", lambda d: [tmp_path])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", str(tmp_path), download_ok=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "--dataset digits" in msg


def test_download_with_wrong_checksum_is_refused_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="expected md5 abc, got"):
        data.download("http://example.invalid/f.gz", tmp_path / "f.gz", "abc")
    assert list(tmp_path.iterdir()) == []


def test_download_with_right_checksum_is_kept(tmp_path, monkeypatch):
    import hashlib
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"good"))
    path = data.download("http://example.invalid/f.gz", tmp_path / "f.gz",
                         hashlib.md5(b"good").hexdigest())
    assert path.read_bytes() == b"good"


def write_cifar_batch(path, n=6, seed=0):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)]}
    path.write_bytes(pickle.dumps(batch))
    return batch


def test_cifar_batches_are_read_and_layout_is_nchw(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches_ = [write_cifar_batch(folder / f"data_batch_{i}", seed=i) for i in range(1, 6)]
    write_cifar_batch(folder / "test_batch", n=4, seed=9)
    ds = load_dataset("cifar10", str(tmp_path), download_ok=False)
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert np.array_equal(ds.train_x[0, 1].ravel(), batches_[0][b"data"][0, 1024:2048])


def test_truncated_cifar_batch_is_reported(tmp_path):
    write_cifar_batch(tmp_path / "b")
    (tmp_path / "b").write_bytes((tmp_path / "b").read_bytes()[:500])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_cifar_batch(tmp_path / "b")


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="expected only arrays, got a reference to builtins.print"):
        read_cifar_batch(tmp_path / "b")


@pytest.mark.parametrize("name,shape", [("digits", (1, 8, 8)), ("mnist5k", (1, 28, 28))])
def test_embedded_data_sets_need_no_network(name, shape):
    ds = load_dataset(name)
    assert ds.train_x.shape[1:] == shape and ds.train_x.dtype == np.uint8
    assert len(ds.train_x) + len(ds.test_x) == {"digits": 1797, "mnist5k": 5000}[name]
    assert set(np.unique(ds.train_y)) == set(range(10))
    assert ds.train_x.max() > 200  # real images, scaled to 0..255


def test_shuffling_is_per_example_seeded_and_changes_per_epoch():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = np.arange(10)
    order = lambda seed, epoch: np.concatenate([b for _, b in batches(x, y, 3, seed=seed, epoch=epoch)])  # noqa: E731
    assert np.array_equal(order(5, 0), order(5, 0))
    assert not np.array_equal(order(5, 0), order(5, 1))
    assert sorted(order(5, 1)) == list(range(10))
    assert [len(b) for _, b in batches(x, y, 3)] == [3, 3, 3, 1]


def test_resize_equals_torch_bilinear_without_antialiasing():
    import torch
    from torch.nn import functional as F
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 28, 28)).astype(np.uint8)
    ours = to_float(images, 96)
    ref = F.interpolate(torch.from_numpy(images.astype(np.float32) / 255), size=(96, 96),
                        mode="bilinear", align_corners=False).numpy()
    assert ours.shape == (2, 1, 96, 96) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-6)
    down = to_float(images, 13)
    ref_down = F.interpolate(torch.from_numpy(images.astype(np.float32) / 255), size=(13, 13),
                             mode="bilinear", align_corners=False, antialias=False).numpy()
    np.testing.assert_allclose(down, ref_down, rtol=0, atol=5e-6)


def test_limit_keeps_first_examples_and_rejects_nonsense():
    ds = load_dataset("digits")
    assert np.array_equal(ds.limit(7).train_y, ds.train_y[:7])
    with pytest.raises(DataError, match="expected a positive number of examples, got 0"):
        ds.limit(0)


# --- empty and degenerate data, and where it was read from -------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_split_is_refused_saying_which_and_where(tmp_path, split):
    folder = tmp_path / "fashion-mnist"
    write_fashion(folder, **({"n_train": 0} if split == "train" else {"n_test": 0}))
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", str(tmp_path), download_ok=False)
    assert str(err.value) == (f"fashion_mnist {split} split: expected at least one example, "
                              f"got none in {folder.resolve()}")


def test_classes_without_examples_are_noted_not_refused():
    ds = load_dataset("digits")
    assert ds.notes() == []
    first = ds.train_y[:5].tolist()
    absent = sorted(set(range(10)) - set(first))
    assert ds.limit(5).notes() == [f"the training split of digits has no example of classes "
                                   f"{', '.join(map(str, absent))}"]
    one = np.flatnonzero(ds.train_y == 3)[:4]
    alike = data.Dataset("digits", ds.train_x[one], ds.train_y[one], ds.test_x, ds.test_y, 10)
    assert alike.notes() == ["every training label of digits is 3: accuracy says nothing about "
                             "the other 9 classes"]


def test_limit_keeps_the_test_split_whole_so_it_cannot_empty_it():
    ds = load_dataset("digits")
    small = ds.limit(1)
    assert len(small.train_y) == 1 and np.array_equal(small.test_y, ds.test_y)
    assert small.source == ds.source == "scikit-learn's sklearn.datasets.load_digits"


def test_a_partial_data_dir_names_the_missing_files_and_is_not_passed_over(tmp_path, monkeypatch):
    complete = tmp_path / "cache"
    write_fashion(complete / "fashion-mnist")
    monkeypatch.setattr(data, "cache_roots", lambda d: ([Path(d)] if d else []) + [complete])
    named = tmp_path / "mine"
    write_fashion(named / "fashion-mnist")
    (named / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", str(named), download_ok=False)
    assert str(err.value).startswith(
        f"fashion_mnist: --data-dir {named}: expected all of its files in "
        f"{named / 'fashion-mnist'}, got 3 of 4: missing t10k-labels-idx1-ubyte.gz")
    # Without --data-dir, a cache that holds all of them is used, and named as the source.
    assert load_dataset("fashion_mnist", None, download_ok=False).source == str(
        (complete / "fashion-mnist").resolve())


def test_an_empty_data_dir_is_not_passed_over_for_a_cache(tmp_path, monkeypatch):
    complete = tmp_path / "cache"
    write_fashion(complete / "fashion-mnist")
    monkeypatch.setattr(data, "cache_roots", lambda d: ([Path(d)] if d else []) + [complete])
    with pytest.raises(DataError, match="could not download them .downloads are off"):
        load_dataset("fashion_mnist", str(tmp_path / "empty"), download_ok=False)
