"""A fixed random nonlinear reservoir: the stand-in physical layer of the PGT paper's dense net.

Physical reservoir computing uses a medium whose inner couplings are fixed and unknown; only a
few knobs (an input gain, per-node bias/operating points) can be set. The static model is::

    y = tanh( gain · W_in x + b₀ + bias ),   W_in, b₀ fixed and hidden

with ``W_in`` drawn once from a seeded N(0, 1) and scaled either by fan-in (``1/√n_in``, unit
variance pre-activations for unit-variance inputs) or to a given spectral norm (largest singular
value = ``scale``). The controllable parameters are ``gain`` (scalar, safe range [0, 4]) and
``bias`` (one per node, safe range [-2, 2]); with ``controllable=False`` the device exposes no
parameters and only its inputs can be trained upstream.
"""

from __future__ import annotations

import math

import torch

from ..base import ParameterSpec, PhysicalSystem


class RandomReservoir(PhysicalSystem):
    differentiable = True

    def __init__(
        self,
        input_size: int,
        size: int = 256,
        *,
        scaling: str = "fan_in",
        scale: float = 1.0,
        controllable: bool = True,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if input_size < 1 or size < 1:
            raise ValueError(f"RandomReservoir needs input_size >= 1 and size >= 1, got {input_size}, {size}")
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(size, input_size, generator=g)
        if scaling == "fan_in":
            w = w * (scale / math.sqrt(input_size))
        elif scaling == "spectral":
            w = w * (scale / torch.linalg.matrix_norm(w, ord=2))
        else:
            raise ValueError(f"scaling must be 'fan_in' or 'spectral', got {scaling!r}")
        self._w_in = w
        self._b0 = (torch.rand(size, generator=g) - 0.5)
        specs = []
        if controllable:
            specs = [
                ParameterSpec("gain", (1,), 0.0, 4.0, default=1.0),
                ParameterSpec("bias", (size,), -2.0, 2.0, default=0.0),
            ]
        super().__init__((input_size,), (size,), specs, seed=seed + 1, **kwargs)

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        pre = inputs @ self._w_in.to(inputs.dtype).T  # [K, B, N]
        if "gain" in params:
            pre = pre * params["gain"].unsqueeze(1) + params["bias"].unsqueeze(1)
        return torch.tanh(pre + self._b0.to(inputs.dtype))
