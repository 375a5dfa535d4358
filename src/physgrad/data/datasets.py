"""Datasets as tensors: embedded digits, and MNIST-format IDX loaders that work offline.

* ``digits`` — scikit-learn's 8×8 handwritten digits (1797 images, shipped inside the wheel).
  Split 75/25 with a fixed seed, stratified.
* ``fashion-mnist`` and ``mnist`` — the standard 60k/10k IDX files. Looked up, in order, in
  ``root`` (argument), ``$PHYSGRAD_DATA/<name>``, the Debian package's folder
  (``/usr/share/datasets/<name>``, package ``dataset-fashion-mnist``), and the user cache
  ``~/.cache/physgrad/<name>``; if none has them and ``download=True``, fetched from the official
  URLs into the cache and checked against their published MD5 before use.

All pixel values are scaled to [0, 1] and flattened to ``[N, H·W]`` float32; labels are int64.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Official locations and the published MD5 of each gzipped file (the checksums the datasets'
# authors and torchvision publish; integrity, not security).
SOURCES = {
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}

DATASETS = ("digits", "fashion-mnist", "mnist")


@dataclass
class Dataset:
    """Train and test tensors of one classification dataset."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image_shape: tuple[int, int]

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "Dataset":
        """A seeded random subset (for quick runs); ``None`` keeps everything."""
        g = torch.Generator().manual_seed(seed)

        def pick(x, y, n):
            if n is None or n >= len(y):
                return x, y
            idx = torch.randperm(len(y), generator=g)[:n]
            return x[idx], y[idx]

        xtr, ytr = pick(self.x_train, self.y_train, train)
        xte, yte = pick(self.x_test, self.y_test, test)
        return Dataset(self.name, xtr, ytr, xte, yte, self.num_classes, self.image_shape)


def load_dataset(name: str, root: str | os.PathLike | None = None, *, download: bool = True) -> Dataset:
    """Load ``digits``, ``fashion-mnist`` or ``mnist`` (see the module docstring for where from)."""
    if name == "digits":
        return _digits()
    if name in SOURCES:
        return _idx_dataset(name, root, download)
    raise ConfigError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    t = torch.from_numpy
    return Dataset("digits", t(xtr), t(ytr).long(), t(xte), t(yte).long(), 10, (8, 8))


def _candidates(name: str, root) -> list[Path]:
    dirs = []
    if root is not None:
        dirs.append(Path(root))
    if os.environ.get("PHYSGRAD_DATA"):
        dirs.append(Path(os.environ["PHYSGRAD_DATA"]) / name)
    dirs += [Path("/usr/share/datasets") / name, _cache_dir(name)]
    return dirs


def _cache_dir(name: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "physgrad" / name


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_dataset(name: str, root, download: bool) -> Dataset:
    found = None
    for directory in _candidates(name, root):
        paths = [_find(directory, stem) for stem in IDX_FILES]
        if all(paths):
            found = paths
            break
    if found is None and download:
        found = _download(name)
    if found is None:
        where = ", ".join(str(d) for d in _candidates(name, root))
        raise DataNotFoundError(
            f"{name} IDX files not found (looked in {where}). "
            + ("Install them with: apt-get install dataset-fashion-mnist; or " if name == "fashion-mnist"
               else "(Debian has no package for it.) ")
            + f"put {', '.join(IDX_FILES)} (optionally .gz) in a folder and give it with --data-root DIR (or "
            f"$PHYSGRAD_DATA/{name}); on a machine that is online, physgrad can fetch them into ~/.cache/physgrad/{name}: "
            f"python -c \"from physgrad.data import load_dataset; load_dataset('{name}', download=True)\"."
        )
    xtr, ytr, xte, yte = (read_idx(p) for p in found)
    to_x = lambda a: torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)  # noqa: E731
    return Dataset(
        name, to_x(xtr), torch.from_numpy(ytr.astype(np.int64)), to_x(xte), torch.from_numpy(yte.astype(np.int64)),
        10, tuple(xtr.shape[1:]),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a NumPy array, checking its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataNotFoundError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataNotFoundError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataNotFoundError(f"{path} is truncated or corrupt: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _download(name: str) -> list[Path] | None:
    base, digests = SOURCES[name]
    target = _cache_dir(name)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in IDX_FILES:
        dest = target / f"{stem}.gz"
        if not dest.exists():
            url = f"{base}{stem}.gz"
            log.info("downloading %s", url)
            try:
                with urllib.request.urlopen(url, timeout=30) as r, tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp:
                    shutil.copyfileobj(r, tmp)
            except OSError as e:
                log.info("download of %s failed: %s", url, e)
                return None
            digest = hashlib.md5(Path(tmp.name).read_bytes(), usedforsecurity=False).hexdigest()
            if digest != digests[stem]:
                os.unlink(tmp.name)
                raise DataNotFoundError(f"checksum mismatch for {url}: got {digest}, expected {digests[stem]}")
            os.replace(tmp.name, dest)
        paths.append(dest)
    return paths
