import gzip

import numpy as np
import pytest
import torch

from physgrad.data import load_dataset, read_idx
from physgrad.data.datasets import IDX_FILES
from physgrad.errors import ConfigError, DataNotFoundError


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_mnist(folder, compress):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12), rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)]
    for stem, a in zip(IDX_FILES, arrays):
        write_idx(folder / stem, a, compress)
    return arrays


def test_digits_is_embedded_split_and_scaled():
    d = load_dataset("digits")
    assert d.x_train.shape == (1347, 64) and d.x_test.shape == (450, 64)
    assert d.x_train.dtype == torch.float32 and 0 <= float(d.x_train.min()) and float(d.x_train.max()) == 1.0
    assert set(d.y_train.tolist()) == set(range(10)) and d.num_classes == 10
    s = d.subset(train=100, test=20, seed=1)
    assert len(s.y_train) == 100 and len(s.y_test) == 20


@pytest.mark.parametrize("compress", [False, True])
def test_idx_loader_reads_a_given_folder(tmp_path, compress):
    arrays = fake_mnist(tmp_path, compress)
    d = load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (5, 784) and d.image_shape == (28, 28)
    assert torch.allclose(d.x_train[3], torch.from_numpy(arrays[0][3].reshape(-1) / 255.0).float())
    assert torch.equal(d.y_test, torch.from_numpy(arrays[3]).long())


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="mnist IDX files not found.*--data-root DIR"):
        load_dataset("mnist", root=tmp_path / "nowhere", download=False)


def test_truncated_idx_file_is_reported(tmp_path):
    fake_mnist(tmp_path, False)
    path = tmp_path / IDX_FILES[0]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataNotFoundError, match="truncated or corrupt"):
        read_idx(path)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataNotFoundError, match="magic"):
        read_idx(tmp_path / "bad")


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
