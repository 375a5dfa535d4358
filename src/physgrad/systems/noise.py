"""Measurement noise that any simulated device can switch on.

Real read-outs are noisy: an amplifier adds white noise (``additive``, in output units), gain
fluctuations scale the signal (``multiplicative``, relative), and an ADC rounds to its step
(``quantization``, in output units). The model is applied after the noiseless response::

    y_measured = Q( y · (1 + m·n₁) + a·n₂ ),   n₁, n₂ ~ N(0, 1),   Q(v) = q·round(v / q)

Noise draws come from the device's own ``torch.Generator`` so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MeasurementNoise:
    """Additive and multiplicative Gaussian noise plus ADC quantisation (all off by default)."""

    additive: float = 0.0
    multiplicative: float = 0.0
    quantization: float = 0.0

    def __post_init__(self) -> None:
        for name in ("additive", "multiplicative", "quantization"):
            value = getattr(self, name)
            if not (value >= 0.0 and value < float("inf")):
                raise ValueError(f"MeasurementNoise.{name} must be a finite number >= 0, got {value!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.additive or self.multiplicative or self.quantization)

    def apply(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return ``y`` as the instrument would report it."""
        if self.multiplicative:
            y = y * (1.0 + self.multiplicative * _randn_like(y, generator))
        if self.additive:
            y = y + self.additive * _randn_like(y, generator)
        if self.quantization:
            y = torch.round(y / self.quantization) * self.quantization
        return y


def _randn_like(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
