"""Agnostic Equilibrium Propagation (Aeqprop): learning by knobs, nudging and relaxation only.

Scellier, Mishra, Bengio, Ollivier 2022, "Agnostic Physics-Driven Deep Learning" (arXiv
2205.15021), Sec. 3. The parameters θ are physical degrees of freedom tied by springs of
softness ε to control knobs u; the device relaxes to a minimum of
``E(θ, s; x) + β C(s, y) + ‖u − θ‖²/(2ε)``. One training step is three relaxations:

1. **free phase** (β = 0, θ held): the prediction and the loss;
2. **homeostatic phase** (β = β₁, θ held at its value by a feedback loop acting on u): the knobs
   settle at ``u = θ + ε ∂E/∂θ(θ, s^β₁)`` — nobody computes this, the controller finds it
   (merged with phase 1 when β₁ = 0);
3. **clamped phase** (knobs frozen, β = β₂): states *and parameters* relax together and the
   parameters end at ``θ_new = u − ε ∂E/∂θ(θ_new, s^β₂)`` (paper Eq. 10–12), i.e.::

       Δθ = −ε [∂E/∂θ(s^β₂) − ∂E/∂θ(s^β₁)] ≈ −ε (β₂ − β₁) ∇_θ C         (Theorem 1)

   an EqProp step with learning rate ε(β₂ − β₁); for finite ε the joint relaxation makes it a
   preconditioned implicit step (the device here performs the *exact* joint relaxation).

The method never reads ∂E/∂θ, never reads the knobs; it only sets nudgings, switches the
controllers and reads θ. Two ways to use it:

* ``backward(model, loss_fn, x, y)`` fills ``p.grad`` with the *equivalent gradient*
  ``−Δθ / (ε (β₂ − β₁))`` (= the EqProp estimate up to O(ε)) and leaves θ where it was, so any
  ``torch.optim`` optimizer can take the step;
* ``step(model, loss_fn, x, y)`` is the physical update: θ stays where the physics moved it
  (copied into the model's parameters; ``p.grad`` still receives the equivalent gradient for
  logging — do not also call ``optimizer.step()``).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ...errors import ConfigError, MeasurementError, number_in
from ...systems.devices.energy.base import check_epsilon
from ..base import Estimate, LossFn, accumulate_grads
from .eqprop import EnergyMethod, EnergyProbes, Phase

RELAXATIONS = ("exact", "first-order")


class Aeqprop(EnergyMethod):
    """Agnostic Equilibrium Propagation.

    Parameters
    ----------
    beta:
        Nudging strength in ``(0, 1]``.
    variant:
        ``"centered"`` ``(−β/2, β/2)`` (default, O(β²) bias), ``"optimistic"`` ``(0, β)`` or
        ``"pessimistic"`` ``(−β, 0)`` (O(β) bias).
    epsilon:
        Spring softness ε (one number, or one per device parameter name). In ``step`` it sets the
        learning rate ε(β₂ − β₁); in ``backward`` it only sets how far θ moves during the
        measurement (the equivalent gradient departs from EqProp's by O(ε)).
    relaxation:
        ``"exact"`` (states and parameters relax jointly to the minimum; needs a convex joint
        energy, roughly ε·λ_max(E[xxᵀ]) < 1) or ``"first-order"`` (states settle, then the
        parameters relax once against the frozen knobs: paper Eq. 12, the reference code's
        procedure, valid for any ε).
    """

    name = "aeqprop"

    def __init__(
        self,
        beta: float = 0.2,
        variant: str = "centered",
        epsilon: float | Mapping[str, float] = 1e-3,
        relaxation: str = "exact",
        seed: int = 0,
        *,
        carrier=None,
    ) -> None:
        if relaxation not in RELAXATIONS:
            raise ConfigError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
        self.relaxation = relaxation
        if variant in ("positive", "negative"):
            raise ConfigError(f"Aeqprop's variants are 'centered', 'optimistic' and 'pessimistic', got {variant!r}")
        super().__init__(beta, variant, seed, carrier=carrier)
        if isinstance(epsilon, Mapping):
            self.epsilon: float | dict[str, float] = {n: check_epsilon(e, f"epsilon[{n!r}]") for n, e in epsilon.items()}
        else:
            self.epsilon = check_epsilon(epsilon)

    def epsilon_for(self, names: list[str]) -> dict[str, float]:
        if isinstance(self.epsilon, dict):
            missing = set(names) - set(self.epsilon)
            if missing:
                raise ConfigError(f"Aeqprop: epsilon missing for parameter(s) {sorted(missing)}")
            return {n: self.epsilon[n] for n in names}
        return {n: self.epsilon for n in names}

    def phases(self) -> list[Phase]:
        b1, b2 = self.betas
        out = [Phase("free", 0.0, "held", ("output",))]
        if b1 != 0.0:
            out.append(Phase("homeostatic", b1, "held"))
        updates = None if self.relaxation == "exact" else 1
        out.append(Phase("clamped", b2, "released", ("parameters",), updates))
        return out

    def tell(self, probes: EnergyProbes, answers: list[dict], cotangent: torch.Tensor | None = None) -> Estimate:
        """Equivalent gradient ``−(θ_new − θ) / (ε (β₂ − β₁))`` from the parameters read at the end."""
        self._check_answers(probes, answers)
        b1, b2 = probes.betas
        clamped = answers[-1]["report"]
        if not clamped.converged:
            raise MeasurementError(
                f"Aeqprop: the clamped phase did not reach equilibrium within {clamped.sweeps} sweeps (last change "
                f"{clamped.residual:.3g}); the joint energy may not be convex at this epsilon, or max_sweeps is too "
                "small — use a smaller epsilon, relaxation='first-order' or more sweeps; no gradient was made"
            )
        new = self.new_parameters(probes, answers)
        eps = probes.epsilon or self.epsilon_for(list(probes.params))
        grads = {n: -(new[n] - probes.params[n]) / (eps[n] * (b2 - b1)) for n in probes.params}
        return Estimate(grads, None, self.answers_cost(probes, answers))

    def new_parameters(self, probes: EnergyProbes, answers: list[dict]) -> dict[str, torch.Tensor]:
        """θ where the physics moved it: the parameters read at the end of the clamped phase."""
        return self._answer(probes, answers, "parameters", probes.betas[1])

    def step(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The physical update: one Aeqprop step moves θ by ``Δθ`` (written into the model).

        ``p.grad`` receives the equivalent gradient too (for logging); do not also call
        ``optimizer.step()``. Built on ask → carrier → tell like :meth:`backward`, behind the same
        NaN barrier and cost accounting.
        """

        def fill() -> torch.Tensor:
            layer, probes, answers, estimate = self.exchange(model, x, y)
            with torch.no_grad():
                loss = loss_fn(self.free_output(probes, answers), y)
            params = layer.parameter_dict()
            accumulate_grads(params, estimate.grads)
            new = self.new_parameters(probes, answers)
            with torch.no_grad():
                for name, p in params.items():
                    if p.requires_grad:
                        p.copy_(new[name].to(p.dtype))
            return loss

        return self.guarded(model, fill)

    def __repr__(self) -> str:
        return f"Aeqprop(beta={self.beta}, variant={self.variant!r}, epsilon={self.epsilon}, relaxation={self.relaxation!r})"


def equivalent_learning_rate(method: Aeqprop, name: str | None = None) -> float:
    """ε(β₂ − β₁): the SGD learning rate that the physical Aeqprop step corresponds to."""
    b1, b2 = method.betas
    eps = method.epsilon if not isinstance(method.epsilon, dict) else method.epsilon[name]
    return number_in("epsilon", eps, 0.0, 1e3) * (b2 - b1)
