"""What HGE asks a device to play: waveform probes (one device, local), model probes (global), and both
with a calibration in front. Each has ``answer(system)``, ``count``, ``cost``, ``shard(n)`` and ``join``.

A *route* per channel says which transfer its modulation travels: an ``int`` (a calibrated device
channel: a control, or an input electrode), ``"inputs"`` (a digital parameter *upstream* of the
device: its modulation enters through the device's inputs) or ``None`` (a digital parameter
*downstream* of the device, or one the device never sees: no transfer, ``H = 1``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ...cost import Cost
from ...errors import ConfigError, RangeError
from ...models.physical_layer import physical_layers
from .calibration import CalibrationProbes
from .plan import FrequencyPlan

Route = int | str | None


def centre_and_amplitude(value, low, high, amp, at_bound: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and amplitude so that ``centre ± amp`` lies in ``[low, high]``.

    ``at_bound="shrink"``: shrink the amplitude to the room left, at most to half, then move the
    centre inward; ``"refuse"``: :class:`RangeError` when ``θ ± a`` would leave the range.
    """
    room = torch.minimum(value - low, high - value)
    if at_bound == "refuse":
        if (room < amp).any():
            worst = float((amp - room).max())
            raise RangeError(
                f"hge: a {what} modulation θ ± a would leave the safe range (by {worst:.4g}); refused, nothing sent. "
                "Use at_bound='shrink' or a smaller amplitude"
            )
        return value, amp
    a = torch.minimum(amp, torch.maximum(room, amp / 2))
    if (2 * a > high - low).any():
        raise RangeError(f"hge: modulation amplitude exceeds half the safe range of a {what}; choose a smaller amplitude")
    centre = torch.maximum(torch.minimum(value, high - a), low + a)
    return centre, a


def sines(plan: FrequencyPlan) -> torch.Tensor:
    """``[N, C]`` float64: each channel's unit modulation over the whole waveform (sequential: its own segment)."""
    n = plan.total_samples
    t = torch.arange(n, dtype=torch.float64) / plan.fs
    s = torch.sin(2 * math.pi * t.unsqueeze(1) * plan.channel_freqs())
    if plan.mode == "sequential":
        active = torch.zeros(n, len(plan.freqs), dtype=torch.float64)
        for c in range(len(plan.freqs)):
            active[c * plan.segment : (c + 1) * plan.segment, c] = 1.0
        s = s * active
    return s


@dataclass
class WaveformProbes:
    """Control waveforms ``[N, *shape]`` and inputs (held ``[B, *in]`` or waveforms ``[N, B, *in]``) for one device.

    One device query: the waveform is played once per data point (``B`` windows).
    """

    params: dict[str, torch.Tensor]
    inputs: torch.Tensor | None
    plan: FrequencyPlan
    amplitudes: torch.Tensor  # [P]
    input_amplitudes: torch.Tensor | None  # [B, n_in]
    routes: tuple[Route, ...]
    identity: str
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    clip: tuple[float, float] | None = None
    ramp_samples: int = 0
    #: batch sizes of the device calls a carrier split these probes into (set by :meth:`shard`; None: one call).
    #: Each call is a query of its own windows, so the count and cost follow the split.
    carried: tuple[int, ...] | None = None

    @property
    def count(self) -> int:
        return 1 if self.carried is None else len(self.carried)

    @property
    def window_samples(self) -> int:
        return self.plan.total_samples

    @property
    def batch(self) -> int:
        if self.inputs is None:
            return 1
        return self.inputs.shape[1] if self.input_amplitudes is not None else self.inputs.shape[0]

    @property
    def cost(self) -> Cost:
        """What the device counts: per device call 1 query, ``b`` windows, ``b·(N + ramp)/fs`` s (summed in call order)."""
        total = Cost()
        for c in self.part_costs():
            total = total + c
        return total

    def part_costs(self) -> list[Cost]:
        """The cost of each device call these probes were carried in, in order (one call unless split)."""
        return [Cost(1, b, b * (self.window_samples + self.ramp_samples) / self.plan.fs)
                for b in (self.carried or (self.batch,))]

    def answer(self, system) -> torch.Tensor:
        return system.measure_waveform(self.params, self.inputs)

    def shard(self, n: int) -> list["WaveformProbes"]:
        """Up to ``n`` parts along the data points (each part one query of its own windows).

        Records the split in ``carried``: a carrier that shards the probes answers them in that many
        device calls, and :attr:`count`/:attr:`cost` say so (what the devices count).
        """
        b = self.batch
        if n <= 1 or b <= 1 or self.inputs is None:
            self.carried = None
            return [self]
        bounds = [round(i * b / min(n, b)) for i in range(min(n, b) + 1)]
        parts = []
        for lo, hi in zip(bounds, bounds[1:]):
            if self.input_amplitudes is not None:
                parts.append(replace(self, inputs=self.inputs[:, lo:hi], input_amplitudes=self.input_amplitudes[lo:hi],
                                     input_shape=(hi - lo, *self.input_shape[1:]), carried=None))
            else:
                parts.append(replace(self, inputs=self.inputs[lo:hi], carried=None))
        self.carried = tuple(hi - lo for lo, hi in zip(bounds, bounds[1:]))
        return parts

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), dim=1)


@dataclass
class GlobalAnswers:
    """The model's output (or loss) signal and every device's own recorded samples."""

    signal: torch.Tensor
    device_signals: list[torch.Tensor]
    clips: list[tuple[float, float] | None]


@dataclass
class ModelProbes:
    """Global scope: every trainable parameter of ``model`` modulated; the whole network plays one waveform.

    Answering runs the model sample by sample (digital layers in software, each device in waveform
    mode: one query per device) and records each device's own samples for the rail check.
    """

    params: dict[str, torch.Tensor]  # {name: [N, *shape]} keyed like model.named_parameters()
    model: nn.Module
    x: torch.Tensor
    y: Any
    loss_fn: Callable | None  # set: the answer is the loss signal (in-materia variant)
    plan: FrequencyPlan
    amplitudes: torch.Tensor
    routes: tuple[Route, ...]
    identity: str
    devices: list = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calls: list[tuple[int, int]] = field(default_factory=list)  # (batch, DAC ramp samples) per device call

    clip = None

    input_amplitudes = None
    input_shape = None

    @property
    def count(self) -> int:
        return len(self.calls)

    @property
    def window_samples(self) -> int:
        return self.plan.total_samples

    @property
    def cost(self) -> Cost:
        return sum((Cost(1, b, b * (self.window_samples + r) / self.plan.fs) for b, r in self.calls), Cost())

    def answer(self, system=None) -> GlobalAnswers:
        """Play the network on ``system`` (``None`` or the model's own device: the model as it is).

        Any other ``system`` plays in place of the model's device: a carrier that takes these probes to
        another device of the same identity (a Ray farm's actor, which receives a *copy* of the model)
        must have that device measure and count, not the copy of the stand-in that travels inside the
        model.
        """
        model, x, y, loss_fn = self.model, self.x, self.y, self.loss_fn
        with self.played_on(system) as devices, contextlib.ExitStack() as stack, torch.no_grad():
            records = [stack.enter_context(d.recording()) for d in devices]
            for d in devices:
                stack.enter_context(d.waveform_mode())
            if loss_fn is not None:
                out = vmap(lambda p: loss_fn(functional_call(model, p, (x,)), y), randomness="same")(self.params)
            else:
                out = vmap(lambda p: functional_call(model, p, (x,)), randomness="same")(self.params)
        return GlobalAnswers(out, [torch.cat(r, dim=1) if r else torch.zeros(0) for r in records],
                             [d.clip for d in devices])

    @contextlib.contextmanager
    def played_on(self, system):
        """Inside: the model's physical layers hold ``system`` in place of the model's device; yields the devices."""
        if system is None or any(system is d for d in self.devices):
            yield list(self.devices)
            return
        if len(self.devices) != 1:
            raise ConfigError(
                f"hge: these global-scope probes play a network of {len(self.devices)} devices as one waveform; another "
                f"carrier's device ({type(system).__name__}) cannot stand in for all of them. Answer them in process, or "
                "use scope='local' (one device's probes at a time)"
            )
        if str(getattr(system, "identity", "")) != self.identity:
            raise ConfigError(
                f"hge: these probes were asked for device {self.identity!r} (its calibration, its routes); device "
                f"{getattr(system, 'identity', None)!r} cannot answer them"
            )
        stand_in = self.devices[0]
        layers = [layer for _, layer in physical_layers(self.model) if layer.system is stand_in]
        for layer in layers:
            layer.system = system
        try:
            yield [system]
        finally:
            for layer in layers:
                layer.system = stand_in

    def shard(self, n: int) -> list["ModelProbes"]:
        return [self]  # one network, one waveform

    def join(self, parts: Sequence[GlobalAnswers]) -> GlobalAnswers:
        return parts[0]


@dataclass
class CalibratedProbes:
    """A calibration in front of gradient probes (what ``ask`` returns when the state lacks one)."""

    calibration: CalibrationProbes
    gradient: WaveformProbes | ModelProbes

    @property
    def count(self) -> int:
        return self.calibration.count + self.gradient.count

    @property
    def identity(self) -> str:
        """The device these probes are for (its calibration is measured and used on that identity)."""
        return self.calibration.identity

    @property
    def cost(self) -> Cost:
        """The calibration's cost, then each device call of the gradient, summed in the order they are played."""
        total = self.calibration.cost
        for c in self.gradient.part_costs() if hasattr(self.gradient, "part_costs") else [self.gradient.cost]:
            total = total + c
        return total

    def answer(self, system) -> tuple:
        return self.calibration.answer(system), self.gradient.answer(system)

    def shard(self, n: int) -> list:
        return [self.calibration, *self.gradient.shard(max(1, n - 1))]

    def join(self, parts: Sequence) -> tuple:
        return parts[0], self.gradient.join(list(parts[1:]))

    def __getattr__(self, name: str):
        if name in ("params", "inputs"):
            raise ConfigError(
                "these HGE probes include the device's transfer calibration (a second waveform): play them with "
                "answers = probes.answer(system) (or a carrier), then method.tell(probes, answers, cotangent)"
            )
        raise AttributeError(name)
