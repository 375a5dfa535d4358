"""Central finite differences, one coordinate at a time: the deterministic forward-only baseline.

``∂L/∂θ_i ≈ (L(θ + h e_i) − L(θ − h e_i)) / (2h)`` with O(h²) error; ``2D`` device queries for
``D`` parameters. In the local scope an input coordinate ``i`` is perturbed in every sample of the
batch at once (samples do not interact), so a device's vector–Jacobian product costs
``2·(input size + parameter count)`` queries whatever the batch size.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from .engine import Directions, PerturbationMethod


class FiniteDifference(PerturbationMethod):
    """Central differences with step ``delta`` (the method's ``h``)."""

    name = "fd"

    def direction_chunks(self, dim: int, input_shape: tuple[int, ...] | None) -> Iterator[Directions]:
        n_in = 0 if input_shape is None else math.prod(input_shape[1:])
        total = n_in + dim
        for start in range(0, total, self.max_probes):
            idx = torch.arange(start, min(start + self.max_probes, total))
            theta_dirs = torch.zeros(len(idx), dim)
            is_param = idx >= n_in
            theta_dirs[is_param.nonzero().squeeze(1), idx[is_param] - n_in] = 1.0
            input_dirs = None
            if input_shape is not None:
                flat = torch.zeros(len(idx), n_in)
                is_input = ~is_param
                flat[is_input.nonzero().squeeze(1), idx[is_input]] = 1.0
                input_dirs = flat.unsqueeze(1).expand(len(idx), input_shape[0], n_in).reshape(len(idx), *input_shape)
            yield theta_dirs, input_dirs

    def normaliser(self, dim: int, input_shape: tuple[int, ...] | None) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"FiniteDifference(delta={self.delta}, scope={self.scope!r})"
