"""An echo-state network: the digital reservoir the ring is compared with, at equal size.

Jaeger's echo-state network (GMD Report 148, 2001; leaky form: Jaeger et al., Neural Networks
20, 335 (2007)) with ``N`` tanh units::

    x(n) = (1 − α) · x(n−1) + α · tanh( ρ · W x(n−1) + γ · W_in u(n) )

``W`` is a fixed seeded N(0, 1) matrix rescaled to spectral radius 1, so ``ρ`` *is* the spectral
radius (``ρ < 1`` is the usual sufficient-in-practice condition for the echo-state property);
``W_in`` is a random ±1/√d matrix (the same kind of mask the ring uses, so the two reservoirs see
their inputs the same way). The read-out is the state itself (a digital reservoir reads its
units exactly). ``"sequence"`` mode only: ``[T, d]`` in, ``[T, N]`` out, the state reset to 0
before each sample.

Controllable parameters: ``spectral_radius`` ``ρ`` (safe range [0, 1.5]) and ``input_scale``
``γ`` ([0, 2]). It is a :class:`PhysicalSystem` so that it can be measured, noised, counted and
trained with the same code as the ring.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from ..base import ParameterSpec, PhysicalSystem
from .ring import binary_mask


class EchoStateNetwork(PhysicalSystem):
    """Leaky tanh echo-state network with ``size`` units (see the module docstring).

    Parameters
    ----------
    input_size, size, seq_len:
        ``d``, ``N`` and ``T`` (tokens per sample).
    spectral_radius, input_scale:
        Default settings of ``ρ`` and ``γ``.
    leak:
        ``α`` in (0, 1] (1: no leak).
    seed:
        Seeds ``W``, ``W_in`` and the noise generator.
    """

    differentiable = True

    def __init__(
        self,
        input_size: int = 1,
        size: int = 50,
        *,
        seq_len: int,
        spectral_radius: float = 0.9,
        input_scale: float = 0.5,
        leak: float = 1.0,
        seed: int = 0,
        **kwargs,
    ) -> None:
        if input_size < 1 or size < 1 or seq_len < 1:
            raise ConfigError(f"EchoStateNetwork needs input_size, size, seq_len >= 1, got {input_size}, {size}, {seq_len}")
        if not 0.0 < leak <= 1.0:
            raise ConfigError(f"leak must be in (0, 1], got {leak!r}")
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(size, size, generator=g, dtype=torch.float64)
        radius = float(torch.linalg.eigvals(w).abs().max())
        self._w = (w / radius).float()
        self._w_in = binary_mask(size, input_size, g)
        self.leak = float(leak)
        self.size = int(size)
        specs = [
            ParameterSpec("spectral_radius", (1,), 0.0, 1.5, default=spectral_radius),
            ParameterSpec("input_scale", (1,), 0.0, 2.0, default=input_scale),
        ]
        super().__init__((seq_len, input_size), (seq_len, size), specs, seed=seed + 1, **kwargs)

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        k, b, t, _ = inputs.shape
        drive = params["input_scale"].reshape(k, 1, 1, 1) * (inputs @ self._w_in.to(inputs.dtype).T)
        w = params["spectral_radius"].reshape(k, 1, 1) * self._w.to(inputs.dtype)  # [K, N, N]
        x = inputs.new_zeros(k, b, self.size)
        states = []
        for step in range(t):
            pre = x @ w.transpose(1, 2) + drive[:, :, step]
            x = (1 - self.leak) * x + self.leak * torch.tanh(pre)
            states.append(x)
        return torch.stack(states, dim=2)

    def __repr__(self) -> str:
        return f"EchoStateNetwork(size={self.size}, input_shape={self.input_shape}, leak={self.leak})"

