"""The tasks and model builders a config can name beyond the standard datasets.

* ``sphere``: the HGE paper's 3-D sphere task (Boon et al., arXiv 2105.11233): points uniform in
  ``[−1, 1]³`` labelled inside/outside the centred ball that holds half the cube's volume;
* models: ``reservoir-net`` (the PGT paper's dense net), ``transformer`` (the PGT paper's ring
  transformer), ``energy`` (the device alone, for EqProp/Aeqprop), ``readout`` (data drive the
  device's inputs directly — mapped from ``[−1, 1]`` onto its input range — and a digital linear
  read-out turns its outputs into class scores: the DNPU setting).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.datasets import DATASETS as STANDARD_DATASETS
from ..data.datasets import Dataset, load_dataset
from ..errors import ConfigError, ShapeError
from ..models.physical_layer import PhysicalLayer
from ..systems.base import PhysicalSystem

SPHERE_RADIUS = (3.0 / math.pi) ** (1.0 / 3.0)  # ball of volume 4 = half the cube [-1, 1]^3
TASKS = ("sphere",)
DATASETS = tuple(STANDARD_DATASETS) + TASKS
MODELS = ("reservoir-net", "transformer", "energy", "readout")


def sphere(train: int = 512, test: int = 512, seed: int = 0) -> Dataset:
    """The 3-D sphere task: ``train``/``test`` points, classes 0 (outside) and 1 (inside)."""
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = 2 * torch.rand(n, 3, generator=g) - 1
        return p, (p.norm(dim=1) < SPHERE_RADIUS).long()

    xtr, ytr = draw(train)
    xte, yte = draw(test)
    return Dataset("sphere", xtr, ytr, xte, yte, 2, (1, 3))


def load_task(name: str, root: str | None = None, *, train: int | None = None, test: int | None = None,
              seed: int = 0) -> Dataset:
    """A dataset by name: a standard one (digits, fashion-mnist, mnist) or a generated task (sphere)."""
    if name == "sphere":
        return sphere(train or 512, test or 512, seed=100 + seed)
    if name not in STANDARD_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    data = load_dataset(name, root)
    if train or test:
        data = data.subset(train, test, seed=seed)
    return data


class Readout(nn.Module):
    """Data on the device's inputs (``[−1, 1]`` → its input range), a digital linear read-out after it.

    When the data have another number of features than the device has inputs, a digital linear
    encoder (then ``tanh``, so the drive stays inside the range) comes first.
    """

    def __init__(self, in_features: int, device: PhysicalSystem, num_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        n_in, n_out = math.prod(device.input_shape), math.prod(device.output_shape)
        low, high = _input_box(device)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = None if in_features == n_in else nn.Linear(in_features, n_in)
            self.device = PhysicalLayer(device)
            self.readout = nn.Linear(n_out, num_classes)
        self.register_buffer("low", low.reshape(-1))
        self.register_buffer("high", high.reshape(-1))
        self.input_shape = device.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.encoder is not None:
            x = torch.tanh(self.encoder(x))
        volts = self.low + (x.clamp(-1, 1) + 1) / 2 * (self.high - self.low)
        out = self.device(volts.reshape(-1, *self.input_shape))
        return self.readout(out.flatten(1))


def _input_box(device: PhysicalSystem) -> tuple[torch.Tensor, torch.Tensor]:
    """The device's per-input range (its ``input_bounds()`` where it declares one, else ``input_range``)."""
    shape = device.input_shape
    bounds = getattr(device, "input_bounds", None)
    box = bounds() if callable(bounds) else None
    if box is not None:
        low, high = box
        return torch.as_tensor(low, dtype=torch.float32).expand(shape), torch.as_tensor(high, dtype=torch.float32).expand(shape)
    lo, hi = device.input_range if device.input_range is not None else (-1.0, 1.0)
    return torch.full(shape, float(lo)), torch.full(shape, float(hi))


def build_model(name: str, data: Dataset, device: PhysicalSystem, *, seed: int = 0, options: dict | None = None) -> nn.Module:
    """A model by name around ``device`` for ``data`` (see the module docstring)."""
    options = dict(options or {})
    if name == "reservoir-net":
        from ..models.reservoir_net import ReservoirNet

        if len(device.input_shape) != 1 or len(device.output_shape) != 1:
            raise ShapeError(f"model 'reservoir-net' needs a device with flat inputs and outputs; this one has "
                             f"{device.input_shape} -> {device.output_shape} (try model 'readout')")
        return ReservoirNet(data.num_features, device, data.num_classes, seed=seed)
    if name == "transformer":
        from ..models.transformer import ReservoirTransformer

        seq_len, token_dim = data.image_shape
        kwargs = {"d_model": 32, "heads": 4, "blocks": 1, **options}
        return ReservoirTransformer(token_dim, seq_len, data.num_classes, device, seed=seed, **kwargs)
    if name == "energy":
        from ..models.energy_model import EnergyModel

        return EnergyModel(device)
    if name == "readout":
        return Readout(data.num_features, device, data.num_classes, seed=seed)
    raise ConfigError(f"config key 'model': unknown value {name!r}; choose one of {list(MODELS)}")


__all__ = ["DATASETS", "MODELS", "Readout", "build_model", "load_task", "sphere"]
