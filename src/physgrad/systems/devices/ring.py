"""A magnonic auto-oscillation ring as a time-multiplexed delay reservoir.

The hardware reservoir of the PGT paper (Abbott, Elo, Bozhko 2025, arXiv 2506.04523) is an
*active ring*: a spin-wave delay line (a YIG film between two antennas) closed into a loop through
a microwave amplifier, read out by a microwave diode (Watt & Kostylev, "Reservoir computing using
a spin-wave delay-line active-ring resonator", arXiv 1912.05119, Phys. Rev. Applied 13, 034057
(2020); time-multiplexed version: Watt, Kostylev, Ustinov, arXiv 2104.07879). One physical
nonlinear node and a long delay make a *delay reservoir* (Appeltant et al., Nat. Commun. 2, 468
(2011)): ``N`` "virtual nodes" are time slots of width ``θ_s = τ/N`` along one round trip ``τ``.

Model (dimensionless amplitudes; 1 = the amplitude at which the loop's saturation halves the
small-signal gain of the amplitude by ``1/√2``)
-----------------------------------------------------------------------------------------------
Input sample ``u(n) ∈ R^d`` is held for one round trip and multiplied by a fixed mask ``M``
(``N × d``, random ±1/√d, Appeltant's binary mask). The circulating (in-phase) envelope of slot
``i`` after round trip ``n`` obeys ::

    z_i(n) = g · x_{i−s}(n−1) + γ · (M u(n))_i + b_i                   (loop drive)
    F(z)   = z / √(1 + z²)                                             (saturable gain/loss)
    x_i(n) = a · x_{i−1}(n) + (1 − a) · F(z_i(n)),  x_{−1}(n) = x_{N−1}(n−1),  a = e^{−θ}  (1)
    y_i(n) = (x_i(n) + ρ)²                                             (square-law detector)

(negative slot indices wrap into the round trip before). The loop delay is ``(N + s)·θ_s``, ``s``
slots longer than the input clock (``desync``, default 1; Paquot et al., Sci. Rep. 2, 287
(2012)), so the virtual nodes form one long cycle rather than ``N`` separate self-loops with one
shared memory kernel. (1) is Appeltant's discretisation of the delay differential equation ``T_r ẋ = −x + F(...)``
(first-order low-pass with response time ``T_r``, node spacing ``θ = θ_s / T_r``): the low-pass
couples each virtual node to its neighbour. ``F`` is the smooth saturation of a loop whose
power-dependent loss limits the amplitude (the spin-wave nonlinear damping and amplifier
compression of the active ring). The detector sees the ring output mixed with a reference line of
amplitude ``ρ`` (Watt, Kostylev, Ustinov 2021): ``ρ = 0`` is the pure diode (``x²``, sign lost),
``ρ ≠ 0`` adds the linear term ``2ρx``.

Regimes: ``F'(0) = 1`` and (1) is a convex mixture, so the loop's small-signal round-trip gain is
``g``. For ``g < 1`` the empty ring relaxes to ``x = 0`` (fading memory, ~``1/(1 − g)`` round
trips); ``g = 1`` is the auto-oscillation threshold; above it the free-running ring oscillates at
``|x| = √(g² − 1)/g`` (solve ``F(g x) = x``) and keeps no fading memory of the input. Because
``|F| < 1`` and (1) is a convex mixture, ``|x| < 1`` always: the model cannot produce NaN or inf.

Controllable parameters and safe ranges
---------------------------------------
=============== ======= ==================================== =========================
name            shape   meaning                              safe range
=============== ======= ==================================== =========================
``feedback``    (1,)    loop gain ``g`` (amplifier setting)  [0, 0.99]; [0, 1.5] with
                                                             ``allow_self_oscillation``
``input_scale`` (1,)    ``γ``, modulator depth               [0, 2]
``bias``        (N,)    ``b_i``, per-slot offset of the      [−1, 1]
                        arbitrary waveform generator
``reference``   (1,)    ``ρ``, reference-line amplitude      [−1, 1]
=============== ======= ==================================== =========================

Modes (what one input sample is)
--------------------------------
``"sequence"``  ``[T, d]`` → ``[T, N]``: one token per round trip, the ring emptied before each
                sample; detector reading of every virtual node after every round trip.
``"static"``    ``[d]`` → ``[N]``: one vector held for ``hold`` round trips (from an empty
                ring), the reading after the last one. A flat-vector device for
                :class:`~physgrad.models.ReservoirNet` or a per-token layer.
``"time"``      ``[L]`` → ``[L]``: time-domain device. The input is the modulator waveform
                sampled at ``1/θ_s`` (already masked; the device applies ``γ`` and the per-slot
                bias ``b_{t mod N}``), the output the detector voltage at the same rate.

Units and defaults: ``round_trip = 500 ns`` (a few-mm YIG delay line plus cables is a few hundred
ns; representative, not a measured value), ``θ = 2`` (temporally separated pulses as in Watt,
Kostylev, Ustinov 2021: weak neighbour coupling ``e^{−2}``; Appeltant's electronic ``θ = 0.2``
smears neighbours together here, see docs/results/ring.md), ``g = 0.9`` (within 10 % of
threshold: memory of ~10 round trips), ``γ = 0.5``, ``b = 0``, ``ρ = 0.5``. Device time is
counted honestly: every sample occupies the ring for its whole signal time, so one query costs
``B × (signal length) × τ`` seconds.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

from ...errors import ConfigError, RangeError, ShapeError
from ..base import ParameterSpec, PhysicalSystem

log = logging.getLogger(__name__)

MODES = ("sequence", "static", "time")
THRESHOLD = 1.0  # small-signal round-trip gain at which the ring starts to auto-oscillate
FADING_GAIN_MAX = 0.99
OSCILLATING_GAIN_MAX = 1.5


def saturation(z: torch.Tensor) -> torch.Tensor:
    """The loop's saturable response ``F(z) = z / √(1 + z²)`` (odd, ``F'(0) = 1``, ``|F| ≤ 1``)."""
    z = z.clamp(-1e6, 1e6)  # F(±1e6) = ±(1 − 5e-13); keeps z² finite in float32
    return z * torch.rsqrt(1.0 + z * z)


def free_running_amplitude(gain: float) -> float:
    """Amplitude of the empty ring's auto-oscillation at loop gain ``g``: ``√(g² − 1)/g``, 0 below threshold."""
    return math.sqrt(max(gain * gain - 1.0, 0.0)) / gain if gain > 0 else 0.0


def binary_mask(nodes: int, input_size: int, generator: torch.Generator) -> torch.Tensor:
    """Appeltant's random binary input mask, entries ±1/√d (unit gain for a unit-variance input vector)."""
    signs = torch.randint(0, 2, (nodes, input_size), generator=generator).float() * 2 - 1
    return signs / math.sqrt(input_size)


class AutoOscillationRing(PhysicalSystem):
    """Spin-wave active-ring delay reservoir with ``nodes`` virtual nodes (see the module docstring).

    Parameters
    ----------
    input_size:
        ``d``, the dimension of one input token (1 for a scalar time series).
    nodes:
        ``N``, the number of virtual nodes per round trip (the literature uses 50–400).
    mode:
        ``"sequence"``, ``"static"`` or ``"time"``.
    seq_len:
        ``T`` tokens per sample (``"sequence"`` mode) or ``L`` samples of waveform (``"time"``).
    desync:
        ``s``: the loop delay is ``(N + s)·θ_s``, ``s`` slots longer than the input clock
        (Paquot et al., Sci. Rep. 2, 287 (2012)): slot ``i`` is fed back onto slot ``i + s``, so
        the virtual nodes form one long cycle instead of ``N`` separate self-loops.
    hold:
        Round trips one vector is held for in ``"static"`` mode (>= 1; with 1 the feedback gain
        has no effect because the ring starts empty).
    mask:
        ``[N]`` or ``[N, d]`` input mask; default a seeded random binary mask.
    theta:
        Node spacing in units of the loop's response time (``a = e^{−θ}``).
    round_trip:
        ``τ`` in seconds (cost accounting only).
    feedback, input_scale, bias, reference:
        Default (initial) settings of the controllable parameters.
    allow_self_oscillation:
        Extend the safe range of ``feedback`` to [0, 1.5]. Off by default: a task that needs
        fading memory is ruined above threshold, so the guard keeps every method below it.
    input_range:
        Range of the modulator input (values outside are clipped or refused by the guard).
    seed:
        Seeds the mask and the device's noise generator.
    noise, guard, ...:
        Passed to :class:`~physgrad.systems.base.PhysicalSystem`.
    """

    differentiable = True

    def __init__(
        self,
        input_size: int = 1,
        nodes: int = 50,
        *,
        mode: str = "sequence",
        seq_len: int | None = None,
        hold: int = 3,
        desync: int = 1,
        mask: torch.Tensor | None = None,
        theta: float = 2.0,
        round_trip: float = 500e-9,
        feedback: float = 0.9,
        input_scale: float = 0.5,
        bias: float = 0.0,
        reference: float = 0.5,
        allow_self_oscillation: bool = False,
        input_range: tuple[float, float] | None = (-3.0, 3.0),
        seed: int = 0,
        **kwargs,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"AutoOscillationRing mode must be one of {MODES}, got {mode!r}")
        if input_size < 1 or nodes < 2:
            raise ConfigError(f"AutoOscillationRing needs input_size >= 1 and nodes >= 2, got {input_size}, {nodes}")
        if mode in ("sequence", "time") and (seq_len is None or seq_len < 1):
            raise ConfigError(f"mode {mode!r} needs seq_len >= 1 (tokens or waveform samples per input), got {seq_len!r}")
        if mode == "time" and input_size != 1:
            raise ConfigError("mode 'time' takes one already-masked waveform: input_size must be 1")
        if hold < 1:
            raise ConfigError(f"hold must be >= 1 round trip, got {hold}")
        if int(desync) != desync or not 0 <= desync < nodes:
            raise ConfigError(f"desync must be an integer in [0, nodes) slots, got {desync!r}")
        if not (theta > 0 and math.isfinite(theta)):
            raise ConfigError(f"theta (node spacing / response time) must be a finite number > 0, got {theta!r}")
        gain_max = OSCILLATING_GAIN_MAX if allow_self_oscillation else FADING_GAIN_MAX
        if feedback >= THRESHOLD and not allow_self_oscillation:
            raise ConfigError(
                f"feedback gain {feedback} is at or above the auto-oscillation threshold ({THRESHOLD}): the ring "
                "self-oscillates and keeps no fading memory of its input. Use a gain below "
                f"{FADING_GAIN_MAX}, or pass allow_self_oscillation=True if that is what you want."
            )
        if not 0.0 <= feedback <= gain_max:
            raise RangeError(f"feedback gain {feedback} is outside the safe range [0, {gain_max}]")
        if allow_self_oscillation:
            log.warning("AutoOscillationRing: feedback may reach %.2f, above the auto-oscillation threshold", gain_max)
        self.mode = mode
        self.nodes = int(nodes)
        self.input_size = int(input_size)
        self.seq_len = None if seq_len is None else int(seq_len)
        self.hold = int(hold)
        self.desync = int(desync)
        self.theta = float(theta)
        self.round_trip = float(round_trip)
        self.allow_self_oscillation = bool(allow_self_oscillation)
        g = torch.Generator().manual_seed(seed)
        self.mask = self._checked_mask(mask, g)
        a = math.exp(-self.theta)
        i = torch.arange(self.nodes)
        lag = (i[:, None] - i[None, :]).clamp(min=0).double()
        # x(n) = f(n) @ chainᵀ + x_{N−1}(n−1) · carry : equation (1) solved along one round trip.
        self._chain = ((1 - a) * a**lag * (i[:, None] >= i[None, :])).float()
        self._carry = (a ** (i + 1).double()).float()
        specs = [
            ParameterSpec("feedback", (1,), 0.0, gain_max, default=feedback, unit="round-trip amplitude gain"),
            ParameterSpec("input_scale", (1,), 0.0, 2.0, default=input_scale, unit="modulator depth"),
            ParameterSpec("bias", (self.nodes,), -1.0, 1.0, default=bias, unit="amplitude (AWG offset)"),
            ParameterSpec("reference", (1,), -1.0, 1.0, default=reference, unit="amplitude (reference line)"),
        ]
        if mode == "sequence":
            shapes = (self.seq_len, self.input_size), (self.seq_len, self.nodes)
        elif mode == "static":
            shapes = (self.input_size,), (self.nodes,)
        else:
            shapes = (self.seq_len,), (self.seq_len,)
        super().__init__(*shapes, specs, input_range=input_range, seed=seed + 1, **kwargs)

    # ----------------------------------------------------------------------------- declared
    @property
    def sample_period(self) -> float:
        """``θ_s = τ / N``: seconds per virtual node (the waveform sample period in ``"time"`` mode)."""
        return self.round_trip / self.nodes

    @property
    def signal_seconds(self) -> float:
        """Seconds of ring time one input sample occupies."""
        if self.mode == "sequence":
            return self.seq_len * self.round_trip
        if self.mode == "static":
            return self.hold * self.round_trip
        return self.seq_len * self.sample_period

    def _count(self, k: int, b: int) -> None:
        super()._count(k, b)
        self.device_seconds += k * b * self.signal_seconds

    def _checked_mask(self, mask: torch.Tensor | None, g: torch.Generator) -> torch.Tensor:
        if mask is None:
            return binary_mask(self.nodes, self.input_size, g)
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.dim() == 1:
            mask = mask.unsqueeze(1)
        if tuple(mask.shape) != (self.nodes, self.input_size):
            raise ShapeError(
                f"mask must have shape [{self.nodes}] or [{self.nodes}, {self.input_size}] "
                f"(nodes × input_size), got {tuple(torch.as_tensor(mask).shape)}"
            )
        if not torch.isfinite(mask).all():
            raise RangeError("mask contains NaN or inf")
        return mask

    # ----------------------------------------------------------------------------- physics
    def circulate(self, drive: torch.Tensor, feedback: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Run equation (1) over ``T`` round trips from an empty ring.

        ``drive`` is ``[K, B, T, N]`` (``γ · M u(n)`` per slot), ``feedback`` ``[K, 1]``, ``bias``
        ``[K, N]``; returns the envelopes ``x`` ``[K, B, T, N]``. Vectorised over probes, batch
        and nodes; the only loop is over round trips (the physics is causal in them).
        """
        k, b, t, n = drive.shape
        chain = self._chain.to(drive.dtype)
        carry = self._carry.to(drive.dtype)
        g = feedback.reshape(k, 1, 1)
        offset = bias.reshape(k, 1, n)
        s = self.desync
        x = drive.new_zeros(k, b, n)  # round n − 1
        older = drive.new_zeros(k, b, n)  # round n − 2
        states = []
        for step in range(t):
            # the loop delay is N + s slots: slot i hears slot i − s of the previous round trip
            delayed = torch.cat([older[..., n - s :], x[..., : n - s]], dim=-1) if s else x
            f = saturation(g * delayed + drive[:, :, step] + offset)
            older, x = x, f @ chain.T + x[..., -1:] * carry
            states.append(x)
        return torch.stack(states, dim=2)

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        k, b = inputs.shape[:2]
        gamma = params["input_scale"].reshape(k, 1, 1, 1)
        mask = self.mask.to(inputs.dtype)
        if self.mode == "time":
            length = self.seq_len
            rounds = -(-length // self.nodes)
            padded = torch.nn.functional.pad(inputs, (0, rounds * self.nodes - length))
            drive = gamma * padded.reshape(k, b, rounds, self.nodes)
        elif self.mode == "static":
            drive = gamma * (inputs @ mask.T).unsqueeze(2).expand(k, b, self.hold, self.nodes)
        else:
            drive = gamma * (inputs @ mask.T)
        x = self.circulate(drive, params["feedback"], params["bias"])
        reading = (x + params["reference"].reshape(k, 1, 1, 1)) ** 2
        if self.mode == "time":
            return reading.reshape(k, b, -1)[..., : self.seq_len]
        if self.mode == "static":
            return reading[:, :, -1]
        return reading

    def __repr__(self) -> str:
        return (
            f"AutoOscillationRing(mode={self.mode!r}, nodes={self.nodes}, input_size={self.input_size}, "
            f"seq_len={self.seq_len}, hold={self.hold}, theta={self.theta})"
        )


__all__: Sequence[str] = [
    "AutoOscillationRing", "THRESHOLD", "binary_mask", "free_running_amplitude", "saturation",
]
