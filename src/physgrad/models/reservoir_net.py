"""The PGT paper's dense network with a physical reservoir layer.

``Linear(in → reservoir inputs) → PhysicalLayer(reservoir) → Linear(reservoir outputs → classes)``
(Abbott, Elo, Bozhko 2025, arXiv 2506.04523, the "dense network with a reservoir layer"). The
digital layer *before* the black box is what makes backpropagation impossible on hardware: its
gradient must pass through the device.
"""

from __future__ import annotations

import torch
from torch import nn

from ..systems.base import PhysicalSystem
from .physical_layer import PhysicalLayer


class ReservoirNet(nn.Module):
    """Digital encoder → physical reservoir → digital read-out."""

    def __init__(self, in_features: int, reservoir: PhysicalSystem, num_classes: int, *, seed: int = 0) -> None:
        super().__init__()
        if len(reservoir.input_shape) != 1 or len(reservoir.output_shape) != 1:
            raise ValueError("ReservoirNet needs a reservoir with flat input and output vectors")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = nn.Linear(in_features, reservoir.input_shape[0])
            self.reservoir = PhysicalLayer(reservoir)
            self.readout = nn.Linear(reservoir.output_shape[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.reservoir(self.encoder(x.flatten(1))))
