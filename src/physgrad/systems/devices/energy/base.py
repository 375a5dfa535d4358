"""Energy-based devices: systems that relax to a minimum of an energy (DESIGN.md, "energy-based").

An energy-based device holds floating *states* ``s`` (neuron activities, node voltages) that
settle, for clamped inputs ``x``, at a minimum of a total energy. With the trainable parameters
``θ`` tied by springs of stiffness ``1/ε`` to control knobs ``u`` and a nudging ``β`` towards a
target ``y``, the total energy of a batch of ``B`` samples sharing one set of parameters is
(Scellier, Mishra, Bengio, Ollivier 2022, arXiv 2205.15021, Eq. 4 and Sec. 3)::

    F(θ, s; u, β) = (1/B) Σ_b [E(θ, s_b; x_b) + β C(s_b, y_b)] + Σ_p ‖u_p − θ_p‖² / (2 ε_p)

What a lab can do to such a device is exactly the stateful interface of :class:`EnergyDevice`:

=====================================  ======================================================
``clamp_inputs(x)``                    apply an input batch (states restart from rest)
``set_target(y)``, ``set_nudging(β)``  the target and the strength of the nudging force
``hold_parameters()``                  a feedback controller holds θ where it is by moving the
                                       knobs; at equilibrium ``u = θ + ε ∂E/∂θ`` (nobody
                                       computes this: the controller finds it)
``release_parameters()``               the controller stops, knobs stay frozen; θ floats and
                                       relaxes together with the states
``set_knobs(u)``, ``read_knobs()``     write / read the control knobs
``set_coupling(ε)``                    the spring constant ``1/ε`` of every parameter
``set_parameters(θ)``                  program the parameters (through the range guard)
``relax()``                            let the device settle; returns a :class:`RelaxationReport`
``read_output()``, ``read_parameters()``  what an instrument reads
``measure_energy_gradient()``          optional read-out of ∂E/∂θ (EqProp needs it); a device may
                                       refuse (``energy_gradient_readout=False``)
=====================================  ======================================================

A device is also a :class:`~physgrad.systems.base.PhysicalSystem`: ``measure(params, inputs)`` is
the free equilibrium's output (``β = 0``, parameters held), so forward-only methods (PGT, SPSA,
finite differences) can train an energy device too, and ``simulate`` is the same output with
exact gradients by implicit differentiation of the equilibrium (the backpropagation oracle).

Cost: each relaxation of a batch is one query (``B`` samples); ``sweeps`` counts the relaxation
sweeps (block-coordinate passes or linear solves), ``device_seconds`` adds ``seconds_per_sweep``
per sweep. Non-convergence within ``max_sweeps`` is reported (``RelaxationReport.converged``,
``nonconverged`` counter, a warning, or :class:`MeasurementError` with ``on_nonconvergence="raise"``);
states are box-constrained or solved exactly, so nothing becomes NaN.
"""

from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ....errors import ConfigError, MeasurementError, RangeError, ShapeError, number_in, require_finite
from ...base import ParameterSpec, PhysicalSystem
from ...noise import MeasurementNoise

log = logging.getLogger(__name__)

States = list[torch.Tensor]  # one [K, B, n_k] tensor per floating layer
Params = dict[str, torch.Tensor]  # name -> [K, *shape]


@dataclass(frozen=True)
class RelaxationReport:
    """How one relaxation went: sweeps used, whether the criterion was met, the last change."""

    sweeps: int
    converged: bool
    residual: float

    def __add__(self, other: "RelaxationReport") -> "RelaxationReport":
        return RelaxationReport(self.sweeps + other.sweeps, other.converged, other.residual)


def check_epsilon(epsilon: float, what: str = "epsilon") -> float:
    """A spring softness ``ε`` must be a finite number in (0, 1e3]."""
    return number_in(what, epsilon, 0.0, 1e3)


class EnergyDevice(PhysicalSystem):
    """Base of every energy-based device (see the module docstring for the lab interface).

    Subclasses implement the physics as pure, batched functions of ``params`` (``[K, *shape]``)
    and ``inputs`` (``[K, B, *input_shape]``): :meth:`rest_states`, :meth:`relax_states`,
    :meth:`energy`, :meth:`energy_gradient`, :meth:`output_of`, :meth:`state_bounds`.
    The base class supplies the stateful lab protocol, the homeostatic controller, the joint
    state–parameter relaxation with frozen knobs, cost counters and implicit differentiation.

    Parameters
    ----------
    tolerance:
        Convergence criterion: a relaxation stops when no state (and, in a joint relaxation, no
        parameter) moved by more than this in the last sweep.
    max_sweeps:
        Iteration cap of one relaxation.
    min_nudging:
        The most negative nudging ``β`` the device accepts (an energy that stays bounded below).
    energy_gradient_readout:
        Whether the device offers :meth:`measure_energy_gradient` (EqProp needs it; Aeqprop not).
    on_nonconvergence:
        ``"warn"`` (log and count) or ``"raise"`` (:class:`MeasurementError`).
    seconds_per_sweep:
        Device time of one sweep, for cost accounting.
    """

    differentiable = True  # simulate() exists (implicit differentiation), for the oracle only

    def __init__(
        self,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        parameters: Sequence[ParameterSpec],
        *,
        tolerance: float = 1e-5,
        max_sweeps: int = 200,
        min_nudging: float = -math.inf,
        energy_gradient_readout: bool = True,
        on_nonconvergence: str = "warn",
        input_range: tuple[float, float] | None = None,
        guard: str = "clip",
        noise: MeasurementNoise | None = None,
        seconds_per_sweep: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            input_shape, output_shape, parameters, input_range=input_range, guard=guard, noise=noise, seed=seed
        )
        number_in("tolerance", tolerance)
        if int(max_sweeps) < 1:
            raise ConfigError(f"max_sweeps must be >= 1, got {max_sweeps!r}")
        if on_nonconvergence not in ("warn", "raise"):
            raise ConfigError(f"on_nonconvergence must be 'warn' or 'raise', got {on_nonconvergence!r}")
        self.tolerance = float(tolerance)
        self.max_sweeps = int(max_sweeps)
        self.min_nudging = float(min_nudging)
        self.energy_gradient_readout = bool(energy_gradient_readout)
        self.on_nonconvergence = on_nonconvergence
        self.seconds_per_sweep = float(seconds_per_sweep)
        self.sweeps = 0
        self.nonconverged = 0
        self.energy_gradient_reads = 0
        # the stateful lab set-up (one probe: K = 1)
        self._theta: Params = {n: v.unsqueeze(0) for n, v in self.initial_parameters().items()}
        self._knobs: Params = {n: v.clone() for n, v in self._theta.items()}
        self._knobs_pending: tuple | None = None  # (inputs, states) the controllers settled at
        self._epsilon: dict[str, float] = {n: 1.0 for n in self.parameter_specs}
        self._held = True
        self._inputs: torch.Tensor | None = None
        self._target: torch.Tensor | None = None
        self._beta = 0.0
        self._states: States | None = None

    # ======================================================================= the physics
    @abc.abstractmethod
    def rest_states(self, params: Params, inputs: torch.Tensor) -> States:
        """The states a relaxation starts from after new inputs are clamped."""

    @abc.abstractmethod
    def relax_states(
        self, params: Params, inputs: torch.Tensor, beta: float, target: torch.Tensor | None, states: States
    ) -> tuple[States, RelaxationReport]:
        """Minimise the energy over the states only (parameters held), from ``states``."""

    @abc.abstractmethod
    def energy(
        self, params: Params, inputs: torch.Tensor, states: States, beta: float = 0.0, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``E(θ, s; x) + β C(s, y)`` per sample, ``[K, B]``, differentiable (autograd)."""

    @abc.abstractmethod
    def energy_gradient(self, params: Params, inputs: torch.Tensor, states: States) -> Params:
        """``∂E/∂θ`` averaged over the batch, ``{name: [K, *shape]}`` (the physics' own force)."""

    @abc.abstractmethod
    def output_of(self, states: States) -> torch.Tensor:
        """The output nodes' state, ``[K, B, *output_shape]``."""

    def state_bounds(self) -> list[tuple[float, float]]:
        """Box constraint ``(low, high)`` of each floating layer (default: unbounded)."""
        return [(-math.inf, math.inf)] * len(self._layer_sizes())

    @abc.abstractmethod
    def _layer_sizes(self) -> list[int]:
        """Number of units of each floating layer."""

    def nudging_energy(self, states: States, beta: float, target: torch.Tensor | None) -> torch.Tensor | float:
        """``β C(s, y) = β ½‖s_out − y‖²`` per sample (``[K, B]``), the nudging term of the energy."""
        if beta == 0.0:
            return 0.0
        out = self.output_of(states)
        return beta * 0.5 * (out - target).pow(2).flatten(2).sum(-1)

    def nudging_cost(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The nudging cost ``C = ½‖s_out − y‖²`` averaged over the batch (also a loss_fn)."""
        target = self.encode_target(target, output.shape[: output.dim() - len(self.output_shape)])
        return 0.5 * (output - target.to(output.dtype)).pow(2).flatten(output.dim() - len(self.output_shape)).sum(-1).mean()

    def encode_target(self, y: torch.Tensor, batch_shape: Sequence[int] | None = None) -> torch.Tensor:
        """Class labels (integers) become one-hot vectors; real targets pass unchanged."""
        y = torch.as_tensor(y)
        if not y.is_floating_point():
            if len(self.output_shape) != 1:
                raise ShapeError(f"integer labels need a vector output, the device has output shape {self.output_shape}")
            n = self.output_shape[0]
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n):
                raise ShapeError(f"class labels must lie in [0, {n}), got range [{int(y.min())}, {int(y.max())}]")
            y = torch.nn.functional.one_hot(y.long(), n).to(torch.float32)
        if batch_shape is not None and tuple(y.shape) != (*batch_shape, *self.output_shape):
            raise ShapeError(f"target shape {tuple(y.shape)} does not match outputs {(*batch_shape, *self.output_shape)}")
        if not torch.isfinite(y).all():
            raise RangeError("target: non-finite value(s) (NaN/inf) refused")
        return y

    # ======================================================================= PhysicalSystem
    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Output at the free equilibrium (``β = 0``, parameters held): one relaxation per probe."""
        states, _ = self._free_equilibrium(params, inputs)
        return self.output_of(states)

    def simulate(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The free equilibrium's output with exact gradients by implicit differentiation.

        At a constrained minimum ``s*`` the units strictly inside their box satisfy
        ``∂E/∂s_f = 0``; the implicit-function theorem gives the vector–Jacobian product
        ``v ↦ −λᵀ ∂²E/∂s_f∂(θ, x)`` with ``H_ff λ = v_f`` (solved by conjugate gradients with
        Hessian–vector products from autograd). Only the backpropagation oracle calls this.
        """
        params, inputs, k, b = self._checked(params, inputs)
        self._count(k, b)
        names = list(self.parameter_specs)
        return _Equilibrium.apply(self, names, inputs, *[params[n] for n in names])

    def _free_equilibrium(self, params: Params, inputs: torch.Tensor) -> tuple[States, RelaxationReport]:
        with torch.no_grad():
            states, report = self.relax_states(params, inputs, 0.0, None, self.rest_states(params, inputs))
        self._record(report, count_query=False)
        return states, report

    # ======================================================================= the lab protocol
    def clamp_inputs(self, x: torch.Tensor) -> None:
        """Apply a batch of inputs ``[B, *input_shape]``; the states restart from rest."""
        x = torch.as_tensor(x)
        n = len(self.input_shape)
        if x.dim() != n + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"{type(self).__name__} expects inputs [B, *{self.input_shape}], got {tuple(x.shape)}")
        self._inputs = self.guard_inputs(x).unsqueeze(0)
        self._target = None
        self.reset_states()

    def set_target(self, y: torch.Tensor) -> None:
        """The target the nudging pulls the outputs towards (labels or ``[B, *output_shape]``)."""
        inputs = self._require_inputs()
        self._target = self.encode_target(y, (inputs.shape[1],)).to(inputs.dtype).unsqueeze(0)

    def set_nudging(self, beta: float) -> None:
        """Strength ``β`` of the nudging force (``0``: free; ``< 0``: pushed away from the target)."""
        beta = float(beta)
        if not math.isfinite(beta):
            raise RangeError(f"nudging β must be finite, got {beta}")
        if beta <= self.min_nudging:
            raise RangeError(
                f"nudging β={beta:g} is outside the device's range (β > {self.min_nudging:g} keeps the energy bounded below)"
            )
        if beta != 0.0 and self._target is None:
            raise ConfigError("set_target(y) before a non-zero nudging: the nudging needs a target")
        self._beta = beta

    def set_coupling(self, epsilon: float | Mapping[str, float]) -> None:
        """Softness ``ε`` of the spring between each parameter and its knob (stiffness ``1/ε``)."""
        self._sync_knobs()
        if isinstance(epsilon, Mapping):
            unknown = set(epsilon) - set(self.parameter_specs)
            if unknown:
                raise ConfigError(f"epsilon given for unknown parameter(s) {sorted(unknown)}; the device has {list(self.parameter_specs)}")
            values = {n: check_epsilon(epsilon.get(n, self._epsilon[n]), f"epsilon[{n!r}]") for n in self.parameter_specs}
        else:
            value = check_epsilon(epsilon)
            values = {n: value for n in self.parameter_specs}
        self._epsilon = values

    def set_parameters(self, values: Mapping[str, torch.Tensor]) -> None:
        """Program the parameters (each through the range guard); knobs follow when held."""
        checked = self._guarded(values, "parameter")
        self._theta.update(checked)
        if self._held:  # the controllers hold the new values: no force needed until the next relaxation
            self._knobs_pending = None
            self._knobs.update({n: v.clone() for n, v in checked.items()})

    def read_parameters(self) -> dict[str, torch.Tensor]:
        """The parameters' present values (unbatched shapes)."""
        return {n: v[0].clone() for n, v in self._theta.items()}

    def _sync_knobs(self) -> None:
        """Materialise the controllers' knob values (computed lazily: only when observed or used)."""
        if self._knobs_pending is not None:
            inputs, states = self._knobs_pending
            self._knobs_pending = None
            grad = self.energy_gradient(self._theta, inputs, states)
            self._knobs = {n: self._theta[n] + self._epsilon[n] * grad[n] for n in self._theta}

    def hold_parameters(self) -> None:
        """Switch the homeostatic controllers on: θ stays where it is, the knobs do the work."""
        self._held = True

    def release_parameters(self) -> None:
        """Switch the controllers off: the knobs freeze where they are and θ floats."""
        self._sync_knobs()
        self._held = False

    @property
    def parameters_held(self) -> bool:
        return self._held

    def set_knobs(self, values: Mapping[str, torch.Tensor]) -> None:
        """Set the control knobs by hand (the controllers are switched off)."""
        self._sync_knobs()
        self._held = False
        for name, value in values.items():
            if name not in self.parameter_specs:
                raise ShapeError(f"{type(self).__name__} has no knob {name!r}; it has {list(self.parameter_specs)}")
            value = torch.as_tensor(value, dtype=self._theta[name].dtype)
            if tuple(value.shape) != self.parameter_specs[name].shape:
                raise ShapeError(f"knob {name!r}: expected shape {self.parameter_specs[name].shape}, got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise RangeError(f"knob {name!r}: non-finite value(s) (NaN/inf) refused")
            self._knobs[name] = value.unsqueeze(0).clone()

    def read_knobs(self) -> dict[str, torch.Tensor]:
        self._sync_knobs()
        return {n: v[0].clone() for n, v in self._knobs.items()}

    def reset_states(self) -> None:
        """Let the states return to rest (as after a fresh input)."""
        inputs = self._require_inputs()
        self._states = self.rest_states(self._theta, inputs)

    def relax(self, parameter_updates: int | None = None) -> RelaxationReport:
        """Let the device settle at the present inputs, nudging, knobs and controller setting.

        Parameters held: the states relax, then the controllers' knobs settle at
        ``u = θ + ε ∂E/∂θ(θ, s)`` (the force each spring must supply). Parameters released:
        states and parameters relax together with the knobs frozen — exact block-coordinate
        minimisation of the total energy, each parameter block's minimiser in closed form, until
        neither moves (``parameter_updates=None``), or the states settle and the parameters then
        relax ``parameter_updates`` times (``1``: the first-order form, paper Eq. 12, the reference
        code's single parameter relaxation; the slow-parameter limit).

        The exact joint minimum exists only while the joint energy is convex: for a Hopfield layer
        fed by inputs ``x`` this needs roughly ``ε · λ_max(E[x xᵀ]) < 1``; beyond it θ runs to its
        safe-range bounds and the relaxation is reported as not converged.
        """
        inputs = self._require_inputs()
        target = self._target
        with torch.no_grad():
            if self._held:
                self._states, report = self.relax_states(self._theta, inputs, self._beta, target, self._states)
                self._knobs_pending = (inputs, self._states)
            else:
                self._states, self._theta, report = self._joint_relaxation(inputs, target, parameter_updates)
        self._record(report, count_query=True, batch=inputs.shape[1])
        return report

    def read_output(self) -> torch.Tensor:
        """The output nodes' state, ``[B, *output_shape]`` (with the device's measurement noise)."""
        if self._states is None:
            raise ConfigError("clamp_inputs(x) and relax() before reading the output")
        out = self.output_of(self._states)[0]
        if self.noise.enabled:
            out = self.noise.apply(out, self.generator)
        return require_finite(type(self).__name__, "output", out).clone()

    def measure_energy_gradient(self) -> dict[str, torch.Tensor]:
        """``∂E/∂θ`` at the present state (batch mean), for EqProp. Devices may refuse."""
        if not self.energy_gradient_readout:
            raise MeasurementError(
                f"{type(self).__name__} offers no read-out of dE/dtheta (energy_gradient_readout=False); "
                "use Aeqprop, which needs only knobs, nudging and relaxation"
            )
        if self._states is None:
            raise ConfigError("clamp_inputs(x) and relax() before measuring dE/dtheta")
        self.energy_gradient_reads += 1
        grad = self.energy_gradient(self._theta, self._require_inputs(), self._states)
        return {n: g[0].clone() for n, g in grad.items()}

    def reset_counters(self) -> None:
        super().reset_counters()
        self.sweeps = 0
        self.nonconverged = 0
        self.energy_gradient_reads = 0

    # ======================================================================= internals
    def minimise_parameters(self, inputs: torch.Tensor, states: States) -> Params:
        """θ's exact minimiser of the total energy given the states, knobs frozen.

        For an energy linear in θ (both built-in devices) ``θ = u − ε ∂E/∂θ(s)``, clipped into the
        safe range; a device whose energy is not linear in θ overrides this.
        """
        grad = self.energy_gradient(self._theta, inputs, states)
        out = {}
        for name, spec in self.parameter_specs.items():
            low, high = spec.bounds(self._theta[name].dtype)
            value = self._knobs[name] - self._epsilon[name] * grad[name]
            out[name] = torch.maximum(torch.minimum(value, high), low)
        return out

    def _joint_relaxation(
        self, inputs: torch.Tensor, target: torch.Tensor | None, parameter_updates: int | None = None
    ) -> tuple[States, Params, RelaxationReport]:
        if parameter_updates is not None and int(parameter_updates) < 1:
            raise ConfigError(f"parameter_updates must be None (exact) or >= 1, got {parameter_updates!r}")
        states, theta = self._states, self._theta
        total = RelaxationReport(0, False, math.inf)
        updates = 0
        while True:
            states, report = self.relax_states(theta, inputs, self._beta, target, states)
            self._theta = theta
            new_theta = self.minimise_parameters(inputs, states)
            change = max(float((new_theta[n] - theta[n]).abs().max()) for n in theta) if theta else 0.0
            theta = new_theta
            updates += 1
            residual = max(change, report.residual)
            total = RelaxationReport(total.sweeps + report.sweeps, False, residual)
            if parameter_updates is not None and updates >= int(parameter_updates):
                return states, theta, RelaxationReport(total.sweeps, report.converged, report.residual)
            if (change <= self.tolerance and report.converged) or total.sweeps >= self.max_sweeps:
                break
        if change > self.tolerance:  # the parameters just moved: let the states follow once more
            states, report = self.relax_states(theta, inputs, self._beta, target, states)
            total = RelaxationReport(total.sweeps + report.sweeps, False, max(change, report.residual))
        converged = change <= self.tolerance and report.converged
        return states, theta, RelaxationReport(total.sweeps, converged, total.residual)

    def _record(self, report: RelaxationReport, count_query: bool, batch: int = 0) -> None:
        self.sweeps += report.sweeps
        self.device_seconds += report.sweeps * self.seconds_per_sweep
        if count_query:
            self.queries += 1
            self.samples += batch
        if not report.converged:
            self.nonconverged += 1
            message = (
                f"{type(self).__name__}: relaxation did not converge within {self.max_sweeps} sweeps "
                f"(last change {report.residual:.3g} > tolerance {self.tolerance:g}); raise max_sweeps, "
                "loosen the tolerance or reduce the nudging"
            )
            if self.on_nonconvergence == "raise":
                raise MeasurementError(message)
            log.warning(message)

    def _require_inputs(self) -> torch.Tensor:
        if self._inputs is None:
            raise ConfigError("no inputs clamped: call clamp_inputs(x) first")
        return self._inputs

    def _guarded(self, values: Mapping[str, torch.Tensor], what: str) -> Params:
        out = {}
        for name, value in values.items():
            if name not in self.parameter_specs:
                raise ShapeError(f"{type(self).__name__} has no parameter {name!r}; it has {list(self.parameter_specs)}")
            spec = self.parameter_specs[name]
            value = torch.as_tensor(value).detach()
            if tuple(value.shape) != spec.shape:
                raise ShapeError(f"{what} {name!r}: expected shape {spec.shape}, got {tuple(value.shape)}")
            low, high = spec.bounds(value.dtype)
            out[name] = self.guard(f"{what} {name!r}", value, low, high).unsqueeze(0).clone()
        return out

    # ----------------------------------------------------------------- implicit differentiation
    def free_units(self, states: States, slack: float = 1e-7) -> States:
        """1 where a unit lies strictly inside its box (it moves with θ), 0 where it is pinned."""
        masks = []
        for s, (low, high) in zip(states, self.state_bounds()):
            masks.append(((s > low + slack) & (s < high - slack)).to(s.dtype))
        return masks

    def hessian_product(self, params: Params, inputs: torch.Tensor, states: States):
        """A function ``v ↦ (∂²E/∂s²) v`` at ``states`` (autograd; devices may supply a closed form)."""
        s = [t.detach().requires_grad_(True) for t in states]
        with torch.enable_grad():
            e = self.energy({n: p.detach() for n, p in params.items()}, inputs.detach(), s).sum()
            grads = torch.autograd.grad(e, s, create_graph=True)

        def product(v: States) -> States:
            return list(torch.autograd.grad(grads, s, grad_outputs=v, retain_graph=True))

        return product

    def adjoint(
        self, params: Params, inputs: torch.Tensor, states: States, cotangent: States, *, tol: float | None = None,
        max_iter: int = 500,
    ) -> States:
        """Solve ``H_ff λ = v_f`` per sample (conjugate gradients, Hessian–vector products by autograd).

        ``tol`` is the relative residual (default: 1e-10 in float64, 1e-5 in float32). In exact
        arithmetic CG needs at most as many iterations as there are units; the cap is twice that
        (rounding in float32 can stall the residual above ``tol``).
        """
        max_iter = min(max_iter, 2 * sum(s[0, 0].numel() for s in states) + 10)
        if tol is None:
            tol = 1e-10 if states[0].dtype == torch.float64 else 1e-5
        masks = self.free_units(states)
        hessian = self.hessian_product(params, inputs, states)

        def hvp(v: States) -> States:
            out = hessian([vi * m for vi, m in zip(v, masks)])
            return [o * m for o, m in zip(out, masks)]

        def dot(a: States, b: States) -> torch.Tensor:  # per sample [K, B]
            return sum((x * y).flatten(2).sum(-1) for x, y in zip(a, b))

        rhs = [v * m for v, m in zip(cotangent, masks)]
        lam = [torch.zeros_like(v) for v in rhs]
        r = [v.clone() for v in rhs]
        p = [v.clone() for v in rhs]
        rr = dot(r, r)
        scale = rr.max().clamp_min(1e-300)
        for _ in range(max_iter):
            if float(rr.max()) <= tol * tol * scale:
                break
            hp = hvp(p)
            php = dot(p, hp)
            alpha = torch.where(php > 0, rr / php.clamp_min(1e-300), torch.zeros_like(rr))
            lam = [li + alpha[..., None] * pi for li, pi in zip(lam, p)]
            r = [ri - alpha[..., None] * hi for ri, hi in zip(r, hp)]
            rr_new = dot(r, r)
            beta = torch.where(rr > 0, rr_new / rr.clamp_min(1e-300), torch.zeros_like(rr))
            p = [ri + beta[..., None] * pi for ri, pi in zip(r, p)]
            rr = rr_new
        return [li.detach() for li in lam]


class _Equilibrium(torch.autograd.Function):
    """Free equilibrium output; backward by implicit differentiation (see ``EnergyDevice.simulate``)."""

    @staticmethod
    def forward(ctx, device: EnergyDevice, names: list[str], inputs: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (v.detach() for v in values)))
        states, _ = device._free_equilibrium(params, inputs.detach())
        ctx.device, ctx.names = device, names
        ctx.save_for_backward(inputs, *values, *states)
        ctx.num_values = len(values)
        return device.output_of(states).clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        device: EnergyDevice = ctx.device
        inputs, *rest = ctx.saved_tensors
        values, states = rest[: ctx.num_values], list(rest[ctx.num_values :])
        params = dict(zip(ctx.names, values))
        # cotangent on the states: only the output nodes receive it
        s = [t.detach().requires_grad_(True) for t in states]
        with torch.enable_grad():
            out = device.output_of(s)
            cot = torch.autograd.grad(out, s, grad_outputs=grad_out, allow_unused=True)
        cot = [torch.zeros_like(t) if c is None else c for c, t in zip(cot, states)]
        lam = device.adjoint(params, inputs, states, cot)
        masks = device.free_units(states)
        want_x = ctx.needs_input_grad[2]
        leaves = [v.detach().requires_grad_(True) for v in values]
        x = inputs.detach().requires_grad_(want_x)
        s = [t.detach().requires_grad_(True) for t in states]
        with torch.enable_grad():
            e = device.energy(dict(zip(ctx.names, leaves)), x, s).sum()
            gs = torch.autograd.grad(e, s, create_graph=True)
            inner = sum((g * l * m).sum() for g, l, m in zip(gs, lam, masks))
            targets = leaves + ([x] if want_x else [])
            grads = torch.autograd.grad(-inner, targets, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, targets)]
        grad_x = grads[-1] if want_x else None
        return (None, None, grad_x, *grads[: len(leaves)])
