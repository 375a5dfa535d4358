"""A layered Hopfield-like network: the energy-based device of the Aeqprop paper's experiments.

Layers ``s_0 = x`` (clamped input), ``s_1 … s_L`` (floating; ``s_L`` is the output), weights
``W_k`` (``[n_{k-1}, n_k]``) and biases ``b_k``; the energy of one sample (Scellier, Mishra,
Bengio, Ollivier 2022, arXiv 2205.15021, Sec. 4 and the reference code's ``Network``)::

    E(θ, s; x) = Σ_k ½‖s_k‖² − Σ_k b_kᵀ s_k − Σ_k s_{k−1}ᵀ W_k s_k,     C(s, y) = ½‖s_L − y‖²

with states in boxes (hidden units in ``[0, 1]``, output units in ``[−1, 2]`` by default).

Relaxation is *exact block-coordinate minimisation*: the energy is quadratic with unit curvature
in each layer, so the minimiser of one layer given its neighbours is a clipped linear map::

    s_k ← clip(b_k + s_{k−1} W_k + s_{k+1} W_{k+1}ᵀ)                      (hidden layer)
    s_L ← clip((b_L + s_{L−1} W_L + β y) / (1 + β))                       (output layer)

Layers of equal parity do not interact, so all odd layers are updated at once, then all even
layers ("red–black" order): each half-sweep is exact, the energy never increases, and the box
keeps every state bounded (never NaN). The input drive ``x W_1 + b_1`` is computed once per
relaxation (the input is clamped and θ held), not once per sweep. Everything is batched over
probes ``K`` and samples ``B`` (``bmm``). A relaxation stops when no unit moved by more than
``tolerance`` in a sweep, or at ``max_sweeps`` (then reported as not converged).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ....errors import ConfigError
from ...base import ParameterSpec
from .base import EnergyDevice, Params, RelaxationReport, States


def half_xavier_uniform(fan_in: int, fan_out: int, gain: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform in ``±gain · ½ · sqrt(6 / (fan_in + fan_out))`` (the reference code's initialisation)."""
    scale = gain * 0.5 * math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(fan_in, fan_out, generator=generator) * 2.0 - 1.0) * scale


class HopfieldNetwork(EnergyDevice):
    """Layered Hopfield-like network with box-constrained states.

    Parameters
    ----------
    sizes:
        ``[n_0, n_1, …, n_L]``: input size, hidden sizes, output size (at least one floating layer).
    gains:
        Initial weight scale of each layer (half Xavier-uniform times the gain; default 1).
    hidden_range, output_range:
        The boxes of hidden and output states.
    weight_bound, bias_bound:
        Safe range ``[−bound, bound]`` of every weight / bias.
    seed:
        Seed of the initial weights (and of the device's noise).
    options:
        ``tolerance`` (default 1e-5), ``max_sweeps`` (200), ``energy_gradient_readout``,
        ``on_nonconvergence``, ``guard``, ``noise``, ``seconds_per_sweep``: see
        :class:`~physgrad.systems.devices.energy.base.EnergyDevice`.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        gains: Sequence[float] | None = None,
        hidden_range: tuple[float, float] = (0.0, 1.0),
        output_range: tuple[float, float] = (-1.0, 2.0),
        weight_bound: float = 1.0,
        bias_bound: float = 2.0,
        seed: int = 0,
        **options,
    ) -> None:
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ConfigError(f"sizes must list an input size and at least one layer, all >= 1; got {sizes}")
        layers = len(sizes) - 1
        gains = [1.0] * layers if gains is None else [float(g) for g in gains]
        if len(gains) != layers or not all(math.isfinite(g) and g >= 0 for g in gains):
            raise ConfigError(f"gains must be {layers} finite numbers >= 0, got {gains}")
        for name, (lo, hi) in (("hidden_range", hidden_range), ("output_range", output_range)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"{name} must be a finite (low, high) with low < high, got {(lo, hi)}")
        if not (weight_bound > 0 and bias_bound > 0):
            raise ConfigError("weight_bound and bias_bound must be > 0")
        self.sizes = sizes
        self.hidden_range = (float(hidden_range[0]), float(hidden_range[1]))
        self.output_range = (float(output_range[0]), float(output_range[1]))
        g = torch.Generator().manual_seed(seed)
        specs = []
        for k in range(1, layers + 1):
            w = half_xavier_uniform(sizes[k - 1], sizes[k], gains[k - 1], g).clamp(-weight_bound, weight_bound)
            specs.append(ParameterSpec(f"W{k}", (sizes[k - 1], sizes[k]), -weight_bound, weight_bound, w))
        for k in range(1, layers + 1):
            specs.append(ParameterSpec(f"b{k}", (sizes[k],), -bias_bound, bias_bound, 0.0))
        super().__init__(
            (sizes[0],),
            (sizes[-1],),
            specs,
            min_nudging=-1.0,  # the output's curvature 1 + β must stay > 0
            seed=seed,
            **options,
        )
        self._drive_cache: tuple | None = None

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    def _layer_sizes(self) -> list[int]:
        return self.sizes[1:]

    def state_bounds(self) -> list[tuple[float, float]]:
        return [self.hidden_range] * (self.num_layers - 1) + [self.output_range]

    def _unpack(self, params: Params) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n = self.num_layers
        return [params[f"W{k}"] for k in range(1, n + 1)], [params[f"b{k}"] for k in range(1, n + 1)]

    # ------------------------------------------------------------------ physics
    def rest_states(self, params: Params, inputs: torch.Tensor) -> States:
        k, b = inputs.shape[0], inputs.shape[1]
        states = []
        for n, (lo, hi) in zip(self.sizes[1:], self.state_bounds()):
            states.append(torch.zeros(k, b, n, dtype=inputs.dtype).clamp_(lo, hi))
        return states

    def input_drive(self, params: Params, inputs: torch.Tensor) -> torch.Tensor:
        """``x W_1 + b_1`` (``[K, B, n_1]``), cached while the same θ and inputs stay applied."""
        w1, b1 = params["W1"], params["b1"]
        cache = self._drive_cache
        if cache is not None and cache[0] is w1 and cache[1] is b1 and cache[2] is inputs:
            return cache[3]
        drive = torch.baddbmm(b1.unsqueeze(1), inputs, w1.expand(inputs.shape[0], *w1.shape[1:]))
        self._drive_cache = (w1, b1, inputs, drive)
        return drive

    def relax_states(
        self, params: Params, inputs: torch.Tensor, beta: float, target: torch.Tensor | None, states: States
    ) -> tuple[States, RelaxationReport]:
        ws, bs = self._unpack(params)
        n = self.num_layers
        k = inputs.shape[0]
        ws = [w.expand(k, *w.shape[1:]) for w in ws]
        bs = [b.expand(k, *b.shape[1:]).unsqueeze(1) for b in bs]
        bounds = self.state_bounds()
        drive = self.input_drive(params, inputs)
        nudge = None
        if beta != 0.0:
            if target is None:
                raise ConfigError("a non-zero nudging needs a target")
            nudge = beta * target
        transposed = [w.transpose(1, 2) for w in ws]
        groups = [range(0, n, 2), range(1, n, 2)]
        s = list(states)
        residual = math.inf
        for sweep in range(1, self.max_sweeps + 1):
            changes = []
            for group in groups:
                for i in group:
                    pre = drive if i == 0 else torch.baddbmm(bs[i], s[i - 1], ws[i])
                    if i < n - 1:
                        pre = torch.baddbmm(pre, s[i + 1], transposed[i + 1])
                    elif nudge is not None:
                        pre = (pre + nudge) / (1.0 + beta)
                    new = pre.clamp_(*bounds[i]) if pre is not drive else pre.clamp(*bounds[i])
                    changes.append((new - s[i]).abs().max())
                    s[i] = new
            residual = float(torch.stack(changes).max())
            if residual <= self.tolerance:
                return s, RelaxationReport(sweep, True, residual)
        return s, RelaxationReport(self.max_sweeps, False, residual)

    def energy(
        self, params: Params, inputs: torch.Tensor, states: States, beta: float = 0.0, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        ws, bs = self._unpack(params)
        e = 0.0
        prev = inputs
        for w, b, s in zip(ws, bs, states):
            e = e + 0.5 * s.pow(2).sum(-1) - (s * b.unsqueeze(1)).sum(-1) - (torch.matmul(prev, w) * s).sum(-1)
            prev = s
        return e + self.nudging_energy(states, beta, target)

    def energy_gradient(self, params: Params, inputs: torch.Tensor, states: States) -> Params:
        batch = inputs.shape[1]
        grads = {}
        prev = inputs
        for k, s in enumerate(states, start=1):
            grads[f"W{k}"] = -torch.bmm(prev.transpose(1, 2), s) / batch
            grads[f"b{k}"] = -s.mean(1)
            prev = s
        return grads

    def hessian_product(self, params: Params, inputs: torch.Tensor, states: States):
        """Closed form: ``(Hv)_k = v_k − v_{k−1} W_k − v_{k+1} W_{k+1}ᵀ`` (free phase, β = 0)."""
        ws, _ = self._unpack(params)

        def product(v: States) -> States:
            out = []
            for i, vi in enumerate(v):
                o = vi.clone()
                if i > 0:
                    o = o - torch.matmul(v[i - 1], ws[i])
                if i + 1 < len(v):
                    o = o - torch.matmul(v[i + 1], ws[i + 1].transpose(-1, -2))
                out.append(o)
            return out

        return product

    def output_of(self, states: States) -> torch.Tensor:
        return states[-1]

    def __repr__(self) -> str:
        return f"HopfieldNetwork(sizes={self.sizes})"

