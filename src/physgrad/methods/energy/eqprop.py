"""Equilibrium Propagation (EqProp) and the phase protocol shared with Aeqprop.

EqProp (Scellier & Bengio 2017, Front. Comput. Neurosci. 11:24, Eq. 10; symmetric nudging:
Laborieux et al. 2021, Front. Neurosci. 15:633674, Eq. 4) estimates the gradient of the cost
``C`` at the free equilibrium from two nudged equilibria ``s^β₁``, ``s^β₂`` of an energy-based
device, with the parameters held::

    ĝ = [∂E/∂θ(θ, s^β₂) − ∂E/∂θ(θ, s^β₁)] / (β₂ − β₁)   →   ∇_θ C(s*(θ))   as β → 0

Variants (``nudging_pair``): ``optimistic``/``positive`` ``(0, β)`` and ``pessimistic``/``negative``
``(−β, 0)`` have an O(β) bias; ``centered`` ``(−β/2, +β/2)`` an O(β²) bias (Laborieux et al.'s
``±β`` is ``centered`` with ``2β``). EqProp needs the device to *measure and store* ``∂E/∂θ`` at
both equilibria (``EnergyDevice.measure_energy_gradient``); a device that cannot do that needs
Aeqprop instead.

ask/tell: :meth:`EnergyMethod.ask` returns :class:`EnergyProbes` — the list of :class:`Phase` s
(nudging, parameters held or released, what to read); an energy device answers them
(``probes.answer(device)`` is :func:`run_phases`, what the default carrier calls; a lab may run its
own rig instead); :meth:`tell` turns the read-outs into an :class:`~physgrad.methods.base.Estimate`.
The phases of one sample are never split: ``shard`` splits the batch (every part plays all the
phases; with θ held the samples relax independently), except when a phase releases θ (Aeqprop's
clamped phase), which relaxes against the whole batch.

Cost: one query per relaxation (2 one-sided, 3 centered, counting the free phase that gives the
prediction and the loss); each phase's answer carries what the device counted for it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ...carriers.probes import Probes, split_points
from ...cost import Cost
from ...errors import ConfigError, ShapeError, number_in
from ...models.energy_model import EnergyModel, energy_model_of
from ...systems.devices.energy.base import EnergyDevice, RelaxationReport
from ..base import Estimate, check_ask_options, GradientMethod, LossFn, accumulate_grads, require_finite

VARIANTS = ("centered", "optimistic", "pessimistic", "positive", "negative")
READS = ("output", "energy_gradient", "parameters")


def nudging_pair(variant: str, beta: float) -> tuple[float, float]:
    """``(β₁, β₂)`` of a variant: centered ``(−β/2, β/2)``, optimistic/positive ``(0, β)``,
    pessimistic/negative ``(−β, 0)``."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
    beta = number_in("beta", beta, 0.0, 1.0, what=" (a small nudging)")
    if variant == "centered":
        return -beta / 2.0, beta / 2.0
    if variant in ("optimistic", "positive"):
        return 0.0, beta
    return -beta, 0.0


@dataclass
class Phase:
    """One relaxation of the protocol: its nudging, whether θ is held, what is read afterwards."""

    name: str
    beta: float
    parameters: str = "held"  # "held" (controllers on) or "released" (knobs frozen, θ floats)
    read: tuple[str, ...] = ()
    parameter_updates: int | None = None  # released θ: None = exact joint relaxation, 1 = first-order

    def __post_init__(self) -> None:
        if self.parameters not in ("held", "released"):
            raise ConfigError(f"phase {self.name!r}: parameters must be 'held' or 'released', got {self.parameters!r}")
        bad = set(self.read) - set(READS)
        if bad:
            raise ConfigError(f"phase {self.name!r}: unknown read-out(s) {sorted(bad)}; choose from {READS}")


@dataclass
class EnergyProbes(Probes):
    """What to do to the device for one gradient: program θ (and ε), clamp, then the phases.

    ``answer(device)`` plays them (:func:`run_phases`): one dict of read-outs per phase.
    """

    phases: list[Phase]
    params: dict[str, torch.Tensor]
    inputs: torch.Tensor
    targets: torch.Tensor
    betas: tuple[float, float]
    epsilon: dict[str, float] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.phases)

    def answer(self, system: Any) -> list[dict]:
        if not isinstance(system, EnergyDevice):
            raise ConfigError(f"energy-phase probes need an energy-based device, got {type(system).__name__}")
        return run_phases(system, self)

    def shard(self, n: int) -> list["EnergyProbes"]:
        """Parts along the samples, every part with all the phases; whole when a phase releases θ.

        With θ held the samples relax independently (the energy is a sum over samples), so a part of
        the batch reaches the same equilibria; a released θ relaxes against the whole batch, so an
        Aeqprop protocol is never split. Each part costs ``count`` queries of its own.
        """
        spans = split_points(int(self.inputs.shape[0]), n)
        if len(spans) == 1 or any(p.parameters == "released" for p in self.phases):
            return [self]
        return [replace(self, inputs=self.inputs[a:b], targets=self.targets[a:b]) for a, b in spans]

    def join(self, parts: Sequence[list[dict]]) -> list[dict]:
        """Per phase: outputs concatenated, batch-mean read-outs averaged by part size, costs added."""
        if len(parts) == 1:
            return parts[0]
        sizes = torch.tensor([float(_batch_of(p)) for p in parts])
        weights = sizes / sizes.sum()
        joined = []
        for i in range(len(self.phases)):
            answers = [p[i] for p in parts]
            one: dict = {}
            for key in answers[0]:
                values = [a[key] for a in answers]
                if key == "output":
                    one[key] = torch.cat(values)
                elif key == "report":
                    one[key] = RelaxationReport(sum(r.sweeps for r in values), all(r.converged for r in values),
                                                max(r.residual for r in values))
                elif key == "cost":
                    one[key] = sum(values, Cost())
                elif isinstance(values[0], Mapping):
                    one[key] = {n: sum(w * v[n] for w, v in zip(weights.tolist(), values)) for n in values[0]}
                else:
                    raise ShapeError(f"cannot join the read-out {key!r} of split energy probes")
            joined.append(one)
        return joined


def _batch_of(answers: list[dict]) -> int:
    for a in answers:
        if "output" in a:
            return int(a["output"].shape[0])
    raise ShapeError("the answers of a split energy protocol need the free phase's output (its batch size)")


def run_phases(device: EnergyDevice, probes: EnergyProbes) -> list[dict]:
    """Play ``probes`` on ``device``; one dict of read-outs (plus ``"report"`` and ``"cost"``) per phase.

    Each phase starts from where the previous one left the states (a nudging is switched, the
    device settles again), as a physical device would. ``"cost"`` is what the device counted for
    the phase (the first includes programming θ, the last switching the nudging off), so the
    costs of a protocol's answers add up to exactly what the device counted.
    """
    mark = device.cost
    device.hold_parameters()
    device.set_parameters(probes.params)
    if probes.epsilon is not None:
        device.set_coupling(probes.epsilon)
    device.clamp_inputs(probes.inputs)
    device.set_target(probes.targets)
    readers = {
        "output": device.read_output,
        "energy_gradient": device.measure_energy_gradient,
        "parameters": device.read_parameters,
    }
    answers = []
    for phase in probes.phases:
        device.set_nudging(phase.beta)
        if phase.parameters == "held":
            device.hold_parameters()
        else:
            device.release_parameters()
        answer: dict = {"report": device.relax(phase.parameter_updates) if phase.parameters == "released" else device.relax()}
        for what in phase.read:
            answer[what] = readers[what]()
        answer["cost"], mark = device.cost - mark, device.cost
        answers.append(answer)
    device.set_nudging(0.0)
    device.hold_parameters()
    if answers:
        answers[-1]["cost"] = answers[-1]["cost"] + (device.cost - mark)
    return answers


class EnergyMethod(GradientMethod):
    """Shared part of EqProp and Aeqprop: nudging variants, the protocol, ``backward``."""

    name = "energy-method"
    kind = "energy"

    def __init__(self, beta: float = 0.2, variant: str = "centered", seed: int = 0, *, carrier=None) -> None:
        super().__init__("global", seed, carrier=carrier)
        self.betas = nudging_pair(variant, beta)
        self.beta = float(beta)
        self.variant = variant
        self.last_reports: list[RelaxationReport] = []

    @abc.abstractmethod
    def phases(self) -> list[Phase]:
        """The relaxations of one gradient, in order."""

    def epsilon_for(self, names: list[str]) -> dict[str, float] | None:
        return None

    def ask(self, theta: Mapping[str, torch.Tensor], inputs: torch.Tensor | None = None,
            targets: torch.Tensor | None = None, **unused: Any) -> EnergyProbes:
        """The protocol for one gradient at ``theta`` on a batch ``(inputs, targets)`` (pure).

        The other keywords of the contract (``bounds``, ``input_bounds``, ``system``, ``input_grad``)
        are accepted and unused: the device's own controllers keep its parameters in range.
        """
        check_ask_options(self, unused)
        if inputs is None or targets is None:
            raise ShapeError(f"{self.name}.ask needs the batch: ask(theta, inputs, targets)")
        if inputs.shape[0] != targets.shape[0]:
            raise ShapeError(f"inputs carry {inputs.shape[0]} samples but targets {targets.shape[0]}")
        params = {n: t.detach() for n, t in theta.items()}
        return EnergyProbes(self.phases(), params, inputs.detach(), targets.detach(), self.betas, self.epsilon_for(list(params)))

    def _answer(self, probes: EnergyProbes, answers: list[dict], what: str, beta: float) -> dict[str, torch.Tensor]:
        for phase, answer in zip(probes.phases, answers):
            if phase.beta == beta and what in answer:
                return answer[what]
        raise ShapeError(f"{self.name}: the answers hold no {what!r} read at nudging β={beta:g}")

    def _check_answers(self, probes: EnergyProbes, answers: list[dict]) -> int:
        """The batch size, after checking one answer per phase and that every read-out is finite."""
        if len(answers) != len(probes.phases):
            raise ShapeError(f"{self.name}: tell expects {len(probes.phases)} answers (one per phase), got {len(answers)}")
        for phase, answer in zip(probes.phases, answers):
            for what in phase.read:
                value = answer.get(what)
                if value is None:
                    raise ShapeError(f"{self.name}: phase {phase.name!r} answered no {what!r} read-out")
                for v in value.values() if isinstance(value, Mapping) else (value,):
                    require_finite(self.name, f"{what!r} read in phase {phase.name!r}", torch.as_tensor(v))
        return probes.inputs.shape[0]

    def answers_cost(self, probes: EnergyProbes, answers: list[dict]) -> Cost:
        """What the device counted for ``answers`` (their ``"cost"``), or one query of the batch per phase
        when a rig's answers carry none."""
        if all("cost" in a for a in answers):
            return sum((a["cost"] for a in answers), Cost())
        return Cost(len(answers), len(answers) * probes.inputs.shape[0])

    def free_output(self, probes: EnergyProbes, answers: list[dict]) -> torch.Tensor:
        """The output read at the free equilibrium (the prediction)."""
        return self._answer(probes, answers, "output", 0.0)

    @abc.abstractmethod
    def tell(self, probes: EnergyProbes, answers: list[dict], cotangent: torch.Tensor | None = None) -> Estimate:
        """Turn the read-outs into a gradient estimate."""

    def exchange(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """ask → carrier → tell on the model's energy device: ``(layer, probes, answers, estimate)``."""
        layer = energy_model_of(model)
        probes = self.ask({n: p.detach() for n, p in layer.parameter_dict().items()}, x, y, system=layer.device)
        answers = self.carrier(layer.device, probes)  # the next protocol or forward pass reprograms θ
        self.last_reports = [a["report"] for a in answers]
        return layer, probes, answers, self.tell(probes, answers)

    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        layer, probes, answers, estimate = self.exchange(model, x, y)
        with torch.no_grad():
            loss = loss_fn(self.free_output(probes, answers), y)
        accumulate_grads(layer.parameter_dict(), estimate.grads)
        return loss

    @property
    def last_sweeps(self) -> int:
        """Relaxation sweeps of the last gradient (all phases)."""
        return sum(r.sweeps for r in self.last_reports)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta}, variant={self.variant!r})"


class EqProp(EnergyMethod):
    """Equilibrium Propagation: differences of measured ``∂E/∂θ`` between two nudged equilibria.

    Parameters
    ----------
    beta:
        Nudging strength in ``(0, 1]``.
    variant:
        ``"centered"`` (default; O(β²) bias), ``"positive"``/``"optimistic"`` or
        ``"negative"``/``"pessimistic"`` (O(β) bias).
    """

    name = "eqprop"

    def phases(self) -> list[Phase]:
        b1, b2 = self.betas
        free_reads = ("output", "energy_gradient") if 0.0 in (b1, b2) else ("output",)
        out = [Phase("free", 0.0, "held", free_reads)]
        for i, b in enumerate((b1, b2), start=1):
            if b != 0.0:
                out.append(Phase(f"nudged{i}", b, "held", ("energy_gradient",)))
        return out

    def tell(self, probes: EnergyProbes, answers: list[dict], cotangent: torch.Tensor | None = None) -> Estimate:
        """``ĝ = [∂E/∂θ(s^β₂) − ∂E/∂θ(s^β₁)] / (β₂ − β₁)``."""
        self._check_answers(probes, answers)
        b1, b2 = probes.betas
        g1 = self._answer(probes, answers, "energy_gradient", b1)
        g2 = self._answer(probes, answers, "energy_gradient", b2)
        grads = {n: (g2[n] - g1[n]) / (b2 - b1) for n in probes.params}
        return Estimate(grads, None, self.answers_cost(probes, answers))


__all__ = ["EnergyMethod", "EnergyProbes", "EqProp", "Phase", "VARIANTS", "nudging_pair", "run_phases", "EnergyModel"]
