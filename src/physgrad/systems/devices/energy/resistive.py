"""A linear resistive network: a second, physically different energy-based device.

Node voltages settle where the dissipated power is smallest given the clamped voltages
(Kirchhoff's laws are the stationarity conditions of the co-content; Kendall et al. 2020,
arXiv 2006.01981; Scellier et al. 2022, arXiv 2205.15021, Sec. 2). Nodes form layers: layer 0
are voltage sources (the inputs ``x``, optionally their inverted copies ``−x``, and fixed
reference voltages), layers ``1 … L`` float, the last is read out. Every node of layer ``k − 1`` is
joined to every node of layer ``k`` by a resistor of conductance ``G_k[i, j]`` (the trainable
parameters, kept inside ``[g_min, g_max]`` > 0). The energy of one sample is half the power::

    E(G, v; x) = ½ Σ_k Σ_ij G_k[i, j] (v_{k−1,i} − v_{k,j})²,      C(v, y) = ½‖v_L − y‖²

(the nudging ``β C`` is a resistor ``β`` from each output to a source at the target voltage).
Quadratic in the voltages, so a relaxation is one exact linear solve: ``M v = r`` with ``M`` the
floating block of the weighted Laplacian (plus ``β`` on the outputs), shared by the batch and
factorised once (Cholesky). A nudging so negative that ``M`` loses positive definiteness has no
equilibrium: :class:`~physgrad.errors.MeasurementError`, never NaN.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ....errors import ConfigError, MeasurementError
from ...base import ParameterSpec
from .base import EnergyDevice, Params, RelaxationReport, States


class ResistiveNetwork(EnergyDevice):
    """Layered linear resistive network with conductances as parameters.

    Parameters
    ----------
    num_inputs:
        Number of input voltages ``x`` (``[B, num_inputs]``).
    layers:
        Sizes of the floating layers; the last one is the output.
    invert_inputs:
        Also apply ``−x`` (a second source per input), so that outputs can depend on inputs with
        either sign, as in Kendall et al.'s networks.
    references:
        Fixed source voltages added to layer 0 (e.g. ``(1.0, -1.0)`` for offsets).
    g_min, g_max:
        Safe range of every conductance (units of a reference conductance).
    seed:
        Seed of the initial conductances (and of the device's noise).
    options:
        ``tolerance`` (joint relaxations; default 1e-5), ``max_sweeps``, ``energy_gradient_readout``,
        ``on_nonconvergence``, ``guard``, ``noise``, ``seconds_per_sweep``: see
        :class:`~physgrad.systems.devices.energy.base.EnergyDevice`.
    """

    def __init__(
        self,
        num_inputs: int,
        layers: Sequence[int],
        *,
        invert_inputs: bool = True,
        references: Sequence[float] = (1.0, -1.0),
        g_min: float = 1e-2,
        g_max: float = 1.0,
        seed: int = 0,
        **options,
    ) -> None:
        layers = [int(n) for n in layers]
        if num_inputs < 1 or not layers or min(layers) < 1:
            raise ConfigError(f"need num_inputs >= 1 and at least one layer of size >= 1; got {num_inputs}, {layers}")
        if not (0 < g_min < g_max and math.isfinite(g_max)):
            raise ConfigError(f"need 0 < g_min < g_max < inf, got g_min={g_min}, g_max={g_max}")
        self.num_inputs = int(num_inputs)
        self.invert_inputs = bool(invert_inputs)
        self.references = tuple(float(r) for r in references)
        if not all(math.isfinite(r) for r in self.references):
            raise ConfigError(f"reference voltages must be finite, got {references}")
        self.layers = layers
        sources = self.num_inputs * (2 if self.invert_inputs else 1) + len(self.references)
        sizes = [sources, *layers]
        self.sizes = sizes
        g = torch.Generator().manual_seed(seed)
        specs = []
        for k in range(1, len(sizes)):
            init = g_min + (g_max - g_min) * (0.1 + 0.4 * torch.rand(sizes[k - 1], sizes[k], generator=g))
            specs.append(ParameterSpec(f"G{k}", (sizes[k - 1], sizes[k]), g_min, g_max, init, unit="G0"))
        super().__init__(
            (self.num_inputs,),
            (layers[-1],),
            specs,
            seed=seed,
            **options,
        )

    def _layer_sizes(self) -> list[int]:
        return list(self.layers)

    def sources(self, inputs: torch.Tensor) -> torch.Tensor:
        """Layer 0's voltages ``[K, B, n_0]``: ``x``, ``−x`` (optional), the references."""
        parts = [inputs]
        if self.invert_inputs:
            parts.append(-inputs)
        if self.references:
            ref = torch.tensor(self.references, dtype=inputs.dtype)
            parts.append(ref.expand(*inputs.shape[:2], len(self.references)))
        return torch.cat(parts, -1)

    def rest_states(self, params: Params, inputs: torch.Tensor) -> States:
        k, b = inputs.shape[:2]
        return [torch.zeros(k, b, n, dtype=inputs.dtype) for n in self.layers]

    def relax_states(
        self, params: Params, inputs: torch.Tensor, beta: float, target: torch.Tensor | None, states: States
    ) -> tuple[States, RelaxationReport]:
        k, b = inputs.shape[:2]
        gs = [params[f"G{i}"].expand(k, *params[f"G{i}"].shape[1:]) for i in range(1, len(self.sizes))]
        sizes = self.layers
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        nf = offsets[-1]
        m = torch.zeros(k, nf, nf, dtype=inputs.dtype)
        diag = torch.zeros(k, nf, dtype=inputs.dtype)
        for i, g in enumerate(gs):  # g joins layer i (0 = sources) to floating layer i+1 (index i)
            lo, hi = offsets[i], offsets[i + 1]
            diag[:, lo:hi] += g.sum(1)
            if i > 0:
                plo, phi = offsets[i - 1], offsets[i]
                diag[:, plo:phi] += g.sum(2)
                m[:, plo:phi, lo:hi] -= g
                m[:, lo:hi, plo:phi] -= g.transpose(1, 2)
        rhs = torch.zeros(k, b, nf, dtype=inputs.dtype)
        rhs[:, :, : sizes[0]] = torch.bmm(self.sources(inputs), gs[0])
        if beta != 0.0:
            if target is None:
                raise ConfigError("a non-zero nudging needs a target")
            diag[:, offsets[-2] :] += beta
            rhs[:, :, offsets[-2] :] += beta * target
        m = m + torch.diag_embed(diag)
        chol, info = torch.linalg.cholesky_ex(m)
        if bool((info > 0).any()):
            raise MeasurementError(
                f"ResistiveNetwork has no stable equilibrium at nudging β={beta:g} (the circuit matrix is not "
                "positive definite); use a smaller |β|"
            )
        v = torch.cholesky_solve(rhs.transpose(1, 2), chol).transpose(1, 2)
        new = [v[:, :, offsets[i] : offsets[i + 1]] for i in range(len(sizes))]
        change = max(float((a - s).abs().max()) for a, s in zip(new, states))
        return new, RelaxationReport(1, True, change)

    def energy(
        self, params: Params, inputs: torch.Tensor, states: States, beta: float = 0.0, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        prev = self.sources(inputs)
        e = 0.0
        for i, v in enumerate(states, start=1):
            g = params[f"G{i}"]
            diff = prev.unsqueeze(-1) - v.unsqueeze(-2)  # [K, B, n_prev, n]
            e = e + 0.5 * (g.unsqueeze(1) * diff.pow(2)).sum((-1, -2))
            prev = v
        return e + self.nudging_energy(states, beta, target)

    def energy_gradient(self, params: Params, inputs: torch.Tensor, states: States) -> Params:
        batch = inputs.shape[1]
        prev = self.sources(inputs)
        grads = {}
        for i, v in enumerate(states, start=1):
            sq_prev = prev.pow(2).mean(1).unsqueeze(-1)  # [K, n_prev, 1]
            sq = v.pow(2).mean(1).unsqueeze(-2)  # [K, 1, n]
            grads[f"G{i}"] = 0.5 * (sq_prev + sq) - torch.bmm(prev.transpose(1, 2), v) / batch
            prev = v
        return grads

    def output_of(self, states: States) -> torch.Tensor:
        return states[-1]

    def __repr__(self) -> str:
        return f"ResistiveNetwork(num_inputs={self.num_inputs}, layers={self.layers})"
