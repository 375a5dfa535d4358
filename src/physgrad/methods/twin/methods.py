"""Gradient methods that learn a digital twin of each device while they train it.

:class:`PAT`
    Physics-aware training (Wright et al., "Deep physical neural networks trained with
    backpropagation", Nature 601, 549–555, 2022): the forward pass is a measurement; the backward
    pass is the vector–Jacobian product of the twin *at the measured point* (the device's input
    and setting), with the cotangent computed from the *measured* output. One query per step (plus
    the twin's dedicated data). Biased whenever the twin's Jacobian differs from the device's.

:class:`TwinGuidedPGT`
    Perturbative estimation of the device's VJP that stays unbiased whatever the twin, with the
    twin used two ways (each a setting):

    * control variate: the same perturbation directions ``P_k`` are applied to the twin *exactly*
      (its directional derivative ``ŝ_k = ∇f̂ᵀP_k``, no extra query) and
      ``ĝ = c·ĝ_twin + (1/q)·Z·(1/K) Σ_k (s_k − c·ŝ_k) Σ⁻¹P_k`` with ``Z ~ Bernoulli(q)``;
      since ``E[ŝ_k Σ⁻¹P_k] = ĝ_twin`` and ``E[s_k Σ⁻¹P_k] = g``, ``E[ĝ] = g`` for every ``c`` and
      ``q`` (the variance is that of the *residual* ``g − c·ĝ_twin``: small when the twin is good);
    * guided directions (guided evolution strategies, Maheswaranathan, Metz, Tucker, Choi,
      Sohl-Dickstein, "Guided evolutionary strategies", ICML 2019): ``P = √α ξ + √((1−α) n) η u``
      with ``u`` the unit twin gradient of the block, ``ξ ~ N(0, I)``, ``η ~ N(0, 1)``, so
      ``Cov P = Σ = α I + (1−α) n u uᵀ`` (trace ``n``, as isotropic) and the estimate is normalised
      by ``Σ⁻¹ = (I − uuᵀ)/α + uuᵀ/(α + (1−α) n)`` — the normalisation that keeps it unbiased
      (the paper's ``1/(2σ²)`` scaling estimates ``Σ g``, a descent direction but not ``g``).

    The coefficient is one per block (``c_θ`` for the device parameters, ``c_x`` for its inputs;
    the blocks' directions are independent, so each block's estimate stays unbiased), either fixed or
    ``"auto"``: the least-squares regression of past measured ``s`` on the twin's ``(ŝ_θ, ŝ_x)``
    (exponential moving averages of the normal equations), clipped to ``[0, 1]`` — computed before
    this step's draws, so the estimate stays unbiased; with a wrong twin it falls towards 0 and the
    method becomes plain PGT.

Both work in the *local* scope: the physical layer's backward pass asks them for the device's VJP
(``PhysicalLayer`` in ``"estimate"`` mode) and autograd carries exact gradients through the digital
layers. Every measurement they take — the forward pass, the perturbation probes, the twin's
dedicated samples — is added to the twin's replay buffer, and every query is counted (the device
counts it; ``method.last_cost`` / ``total_cost`` include the twin's data).

The contract of issue 10 (``ask`` → carrier → ``tell``; ``backward`` is the base class's): ``ask``
plans one step without touching the device — the forward pass (unless the layer measured it
already), the twin's dedicated samples when the refit rule will call for a fit, the ± pairs — as
one :class:`TwinProbes` (one device call; shards never split a pair). ``tell`` feeds the answers to
the twin, refits it where planned (the twin lives in ``state_dict`` under ``system.identity``) and
makes the estimate, whose cost is the probes' queries: exactly what the device counted. The twin's
random draws are made in ``ask`` in the order the old single-call code made them, so a fixed seed
gives the same estimates as before (bit for bit for PAT and the control variate; guided directions
now use the twin as it stands at ``ask``, so a refit takes effect one step later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ...carriers.probes import Probes, split_points
from ...cost import Cost
from ...errors import ConfigError, RangeError, ShapeError, require_finite
from ...systems.base import PhysicalSystem
from ..base import Estimate, GradientMethod, check_ask_options, flat_bounds, scaled_cost
from ..defaults import scope_defaults
from .twin import Twin


@dataclass
class TwinProbes(Probes):
    """One step's device contacts of a twin method, answered in *one* device call.

    Rows (one row = one setting on a batch of ``B`` inputs = one query), in this order: the forward
    pass at the step's setting (only when its answer is not known already), the twin's dedicated
    samples (only on a step that refits the twin), and the ``K`` ± pairs of a perturbative
    correction, each pair as two adjacent rows (+, then −). ``params[name]`` is ``[M, *shape]``,
    ``inputs`` ``[M, B, *in]``; answers are ``[M, B, *out]``. ``units`` are the sizes of the parts
    a shard never splits (1: a forward or sample row; 2: a ± pair). ``plan`` is the method's record
    of what it asked (read back by ``tell``; ``None`` in a shard).
    """

    params: dict[str, torch.Tensor]
    inputs: torch.Tensor
    units: tuple[int, ...]
    output_shape: tuple[int, ...]
    plan: "TwinPlan | None" = None

    @property
    def count(self) -> int:
        return int(self.inputs.shape[0])

    def answer(self, system: Any) -> torch.Tensor:
        if self.count == 0:  # nothing to measure this step (PAT between refits): no device call
            return torch.zeros(0, *self.inputs.shape[1:2], *self.output_shape, dtype=self.inputs.dtype)
        return system.measure(self.params, self.inputs)

    def shard(self, n: int) -> list["TwinProbes"]:
        spans = split_points(len(self.units), n)
        if len(spans) <= 1:
            return [self]
        starts = [0]
        for u in self.units:
            starts.append(starts[-1] + u)
        return [
            TwinProbes({k: v[starts[a] : starts[b]] for k, v in self.params.items()}, self.inputs[starts[a] : starts[b]],
                       self.units[a:b], self.output_shape)
            for a, b in spans
        ]

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.as_tensor(p) for p in parts])


@dataclass
class TwinPlan:
    """What a twin method asked for at one measured point (kept in :class:`TwinProbes` for ``tell``)."""

    identity: str
    theta: dict[str, torch.Tensor]
    inputs: torch.Tensor                      # [B, *in], the measured point
    outputs: torch.Tensor | None              # the forward measurement when it was known at ask
    input_grad: bool
    split: torch.Tensor | None                # held-out flags of the forward rows (learning twins)
    fit: bool                                 # the twin is refitted in tell (the refit rule, as of ask)
    samples: tuple[dict[str, torch.Tensor], torch.Tensor] | None  # the dedicated samples (a refit step)
    per_query: Cost
    extra: dict[str, Any] = field(default_factory=dict)  # the subclass's record (directions, ...)

    @property
    def forward_rows(self) -> int:
        return 0 if self.outputs is not None else 1

    @property
    def sample_rows(self) -> int:
        return 0 if self.samples is None else int(self.samples[1].shape[0])


class TwinMethod(GradientMethod):
    """Shared base: one learned :class:`Twin` per device, its data and its refits, in ask/tell form.

    ``ask`` (pure: no device contact) plans one step at a measured point: the forward pass (unless
    its answer is known — in a network's backward pass the layer has measured it already), the
    twin's dedicated samples when the refit rule will call for a fit once the forward pass is seen,
    and what the subclass measures (:meth:`_ask_more`). ``tell`` feeds every answer to the twin
    (the forward rows, the samples, one probe of each ± pair), refits it when planned, and makes
    the estimate (:meth:`_estimate`). ``backward`` and ``vjp`` are the base class's.

    Parameters
    ----------
    twin:
        A ready :class:`Twin` to use for every device (e.g. one fitted earlier, or a deliberately
        wrong one in a test), or ``None`` to learn one per device from the measurements.
    twin_options:
        Keyword arguments of :class:`Twin` for the twins this method creates.
    warmup_queries:
        Dedicated device queries spent on twin data before the first fit (settings spread around
        the current one; inputs the current batch). Counted as device cost.
    refit_queries:
        Dedicated queries taken at every later refit, around the current setting.
    learn:
        ``False`` freezes the twin (no observation, no refit): the twin given is used as is.
    carrier:
        What carries the probes to a device (default in process).
    """

    def __init__(
        self,
        twin: Twin | None = None,
        *,
        twin_options: Mapping | None = None,
        warmup_queries: int = 16,
        refit_queries: int = 0,
        learn: bool = True,
        seed: int = 0,
        carrier=None,
    ) -> None:
        super().__init__("local", seed, carrier=carrier)
        if warmup_queries < 0 or refit_queries < 0:
            raise ConfigError("warmup_queries and refit_queries must be >= 0")
        self.fixed_twin = twin
        self.twin_options = dict(twin_options or {})
        self.warmup_queries = int(warmup_queries)
        self.refit_queries = int(refit_queries)
        self.learn = bool(learn)
        self.twins: dict[str, Twin] = {}
        self._layer_call: tuple[torch.Tensor, torch.Tensor] | None = None

    def twin_for(self, system: PhysicalSystem) -> Twin:
        """The twin of ``system`` (created from its declarations on first use)."""
        if self.fixed_twin is not None:
            return self.fixed_twin
        key = system.identity
        if key not in self.twins:
            pending = getattr(self, "_pending", {})
            if key in pending:  # resumed: restore the twin this device had (no fresh seed drawn)
                self.twins[key] = Twin(system, **({"seed": 0} | self.twin_options))
                self.twins[key].load_state_dict(pending.pop(key))
            else:
                opts = {"seed": int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))} | self.twin_options
                self.twins[key] = Twin(system, **opts)
        return self.twins[key]

    def _twin_of(self, identity: str) -> Twin:
        return self.fixed_twin if self.fixed_twin is not None else self.twins[identity]

    # ------------------------------------------------------------------ ask / tell
    def vjp(self, system, params, inputs, outputs, cotangent, need_input_grad: bool = True):
        """The base class's ask → carrier → tell, told what a layer's backward pass already knows: the
        forward measurement (the twin observes it; it is not measured twice) and the cotangent (the
        guide of guided directions)."""
        self._layer_call = (outputs.detach(), cotangent.detach())
        try:
            return super().vjp(system, params, inputs, outputs, cotangent, need_input_grad)
        finally:
            self._layer_call = None

    def ask(
        self,
        theta: Mapping[str, torch.Tensor],
        inputs: torch.Tensor | None = None,
        targets=None,
        *,
        outputs: torch.Tensor | None = None,
        cotangent: torch.Tensor | None = None,
        **options,
    ) -> TwinProbes:
        """The probes of one device VJP at ``(theta, inputs)`` (pure: the device is never measured).

        ``system`` (required) names the device whose twin is used; only its declarations are read.
        ``outputs``: the forward measurement at ``(theta, inputs)`` if already taken (then it is not
        asked again); ``cotangent``: the VJP's vector if known now (guided directions use it). Inside
        ``backward`` both come from the layer's backward pass. Contract keywords: ``bounds``,
        ``input_bounds``, ``input_grad``.
        """
        check_ask_options(self, options)
        system = options.get("system")
        if inputs is None or system is None:
            raise ConfigError(f"{type(self).__name__}.ask needs inputs= and system= (a twin models one device's "
                              "outputs; only the device's declarations are read)")
        if outputs is None and cotangent is None and self._layer_call is not None:
            outputs, cotangent = self._layer_call
        theta = {n: t.detach() for n, t in theta.items()}
        x = inputs.detach()
        input_grad = options.get("input_grad")
        input_grad = True if input_grad is None else bool(input_grad)
        twin = self.twin_for(system)
        split = samples = None
        fit = False
        if self.learn:
            split = twin.draw_split(x.shape[0])  # the forward rows' split, in the order measurements are planned
            fit = twin.needs_fit_after(theta, x, outputs)
            extra = self.warmup_queries if twin.fits == 0 else self.refit_queries
            if fit and extra > 0:
                samples = twin.sample_plan(extra, theta, x)
        elif twin.fits == 0 and self.needs_fitted_twin:
            raise ConfigError(f"{self.name}: the twin has not been fitted (fit a frozen twin before use, or let the method learn it)")
        plan = TwinPlan(system.identity, theta, x, None if outputs is None else outputs.detach(), input_grad, split,
                        fit, samples, Cost(1, int(x.shape[0]), float(getattr(system, "seconds_per_query", 0.0) or 0.0)))
        rows: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []
        units: list[int] = []
        if outputs is None:
            rows.append(({n: t.unsqueeze(0) for n, t in theta.items()}, x.unsqueeze(0)))
            units.append(1)
        if samples is not None:
            rows.append(samples)
            units += [1] * plan.sample_rows
        more = self._ask_more(plan, twin, system, cotangent, options)
        if more is not None:
            rows.append(more)
            units += [2] * (int(more[1].shape[0]) // 2)
        params = {n: torch.cat([r[0][n].to(theta[n].dtype) for r in rows]) if rows else theta[n].unsqueeze(0)[:0]
                  for n in theta}
        probe_inputs = torch.cat([r[1].to(x.dtype) for r in rows]) if rows else x.unsqueeze(0)[:0]
        return TwinProbes(params, probe_inputs, tuple(units), tuple(system.output_shape), plan)

    needs_fitted_twin = False  # PAT: True (it has nothing to estimate with otherwise)

    def _ask_more(self, plan: TwinPlan, twin: Twin, system, cotangent, options) -> tuple[dict, torch.Tensor] | None:
        """The subclass's own rows ``(settings [R, *shape], inputs [R, B, *in])`` (± pairs), or ``None``."""
        return None

    def carry(self, system: Any, probes: Probes) -> Any:
        """The base class's carrier, except that an empty set of probes reaches no device."""
        if probes.count == 0:
            return probes.answer(system)
        return super().carry(system, probes)

    def tell(self, probes: TwinProbes, answers: Any, cotangent: torch.Tensor | None = None) -> Estimate:
        """Feed the answers to the twin (and refit it where planned), then make the estimate.

        ``cotangent`` ``[B, *out]`` (the vector of the VJP) is required. ``Estimate.cost`` is the
        queries of these probes (forward pass, twin samples, ± pairs): what the device counted.
        """
        plan = getattr(probes, "plan", None)
        if plan is None:
            raise ConfigError(f"{self.name}.tell takes the probes its ask returned (not a shard of them)")
        if cotangent is None:
            raise ShapeError(f"{self.name}.tell needs the cotangent (the vector of the vector–Jacobian product)")
        answers = torch.as_tensor(answers)
        b = plan.inputs.shape[0]
        if tuple(answers.shape) != (probes.count, b, *probes.output_shape):
            raise ShapeError(f"{self.name}.tell expects answers of shape {(probes.count, b, *probes.output_shape)}, "
                             f"got {tuple(answers.shape)}")
        require_finite(self.name, "answers", answers)
        if tuple(cotangent.shape) != (b, *probes.output_shape):
            raise ShapeError(f"cotangent shape {tuple(cotangent.shape)} does not match the outputs {(b, *probes.output_shape)}")
        twin = self._twin_of(plan.identity)
        f, s = plan.forward_rows, plan.sample_rows
        if self.learn:
            forward = answers[0] if f else plan.outputs
            twin.observe(plan.theta, plan.inputs, forward, forward=True, split=plan.split)
            if plan.samples is not None:
                twin.observe_samples(*plan.samples, answers[f : f + s])
            if plan.fit:
                twin.fit()
        gx, grads = self._estimate(plan, twin, answers[f + s :], cotangent.detach())
        dtype = plan.inputs.dtype
        gx = gx.to(dtype).reshape(plan.inputs.shape) if plan.input_grad else None
        grads = {n: g.to(plan.theta[n].dtype).reshape(plan.theta[n].shape) for n, g in grads.items()}
        return Estimate(grads, gx, scaled_cost(probes.count, plan.per_query))

    def _estimate(self, plan: TwinPlan, twin: Twin, answers: torch.Tensor, cotangent: torch.Tensor):
        """``(input gradient, {name: gradient})`` from the (already updated) twin and the subclass's answers."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["twins"] = {k: t.state_dict() for k, t in self.twins.items()}
        if self.fixed_twin is not None:
            state["fixed_twin"] = self.fixed_twin.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key, ts in state.get("twins", {}).items():
            if key in self.twins:
                self.twins[key].load_state_dict(ts)
            else:
                self._pending = getattr(self, "_pending", {}) | {key: ts}
        if self.fixed_twin is not None and "fixed_twin" in state:
            self.fixed_twin.load_state_dict(state["fixed_twin"])

    @property
    def twin_queries(self) -> int:
        """Dedicated device queries spent on twin data so far (already inside ``total_cost``)."""
        twins = list(self.twins.values()) + ([self.fixed_twin] if self.fixed_twin is not None else [])
        return sum(t.sampled_queries for t in twins)


class PAT(TwinMethod):
    """Physics-aware training with a learned twin: device forward, twin backward.

    Wright et al., Nature 601 (2022), "physics-aware training": the loss and its cotangent come
    from the real (measured) output; the Jacobian is the twin's at the measured input and setting.
    Cost per step: the forward query, plus the twin's dedicated samples (``warmup_queries`` once,
    ``refit_queries`` per refit). Biased by ``(J_twin − J_device)ᵀ v``.

    ``PAT(twin=None, twin_options=None, warmup_queries=16, refit_queries=0, learn=True, seed=0)``;
    see :class:`TwinMethod`.
    """

    name = "pat"
    needs_fitted_twin = True

    def _estimate(self, plan: TwinPlan, twin: Twin, answers: torch.Tensor, cotangent: torch.Tensor):
        """The twin's VJP at the measured point (the forward measurement is the twin's data only)."""
        return twin.vjp(plan.theta, plan.inputs, cotangent)

    def __repr__(self) -> str:
        return f"PAT(warmup_queries={self.warmup_queries}, refit_queries={self.refit_queries}, learn={self.learn})"


class TwinGuidedPGT(TwinMethod):
    """Twin-guided perturbative VJP of each device: unbiased whatever the twin (module docstring).

    Parameters
    ----------
    num_pairs:
        ``K`` ± pairs per correction (``None``: the local scope's default, :mod:`physgrad.methods.defaults`).
    delta:
        Perturbation scale δ (parameter and input units; ``None``: the local scope's default).
    alpha:
        Isotropic share of the directions' covariance (guided ES); ``1`` = isotropic (no guidance).
    control_variate:
        Use the twin's exact directional derivatives as a control variate.
    coef:
        Control-variate coefficient ``c``: a number, or ``"auto"`` (regression of past corrections).
    correction_prob:
        ``q``: the perturbative correction is measured with probability ``q`` and weighted ``1/q``
        (unbiased for every ``q``; expected cost ``1 + 2Kq`` queries per step). ``q = 1``: every step.
    twin, twin_options, warmup_queries, refit_queries, learn, seed:
        See :class:`TwinMethod`.
    """

    name = "twin_pgt"

    def __init__(
        self,
        num_pairs: int | None = 4,
        delta: float | None = 1e-2,
        *,
        alpha: float = 1.0,
        control_variate: bool = True,
        coef: float | str = "auto",
        correction_prob: float = 1.0,
        coef_decay: float = 0.9,
        twin: Twin | None = None,
        twin_options: Mapping | None = None,
        warmup_queries: int = 16,
        refit_queries: int = 0,
        learn: bool = True,
        seed: int = 0,
        carrier=None,
    ) -> None:
        super().__init__(twin, twin_options=twin_options, warmup_queries=warmup_queries,
                         refit_queries=refit_queries, learn=learn, seed=seed, carrier=carrier)
        num_pairs, delta = scope_defaults("local", num_pairs=num_pairs, delta=delta)
        if num_pairs < 1:
            raise ConfigError(f"num_pairs must be >= 1, got {num_pairs}")
        if not (delta > 0 and math.isfinite(delta)):
            raise ConfigError(f"delta must be a finite number > 0, got {delta!r}")
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {alpha!r}")
        if not 0.0 < correction_prob <= 1.0:
            raise ConfigError(f"correction_prob must be in (0, 1], got {correction_prob!r}")
        if coef != "auto" and not isinstance(coef, (int, float)):
            raise ConfigError(f"coef must be a number or 'auto', got {coef!r}")
        self.num_pairs = int(num_pairs)
        self.delta = float(delta)
        self.alpha = float(alpha)
        self.control_variate = bool(control_variate)
        self.coef = coef
        self.correction_prob = float(correction_prob)
        self.coef_decay = float(coef_decay)
        self._cov: dict[str, list[float]] = {}  # per device: EMA of Σ s·ŝ and Σ ŝ²
        self.last_coef = (1.0, 1.0) if coef == "auto" else (float(coef), float(coef))

    # ------------------------------------------------------------------ directions
    def _guided(self, k: int, u: torch.Tensor | None, n: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` directions in blocks of size ``n`` (``u``: ``[n]`` or ``[B, n]`` unit guides, or None).

        Returns ``(P, Σ⁻¹P)``, shapes ``[k, n]`` or ``[k, B, n]``.
        """
        g = self.generator
        shape = (k, n) if u is None or u.dim() == 1 else (k, u.shape[0], n)
        xi = torch.randn(shape, generator=g, dtype=torch.float64)
        if u is None or self.alpha >= 1.0:
            return xi.to(dtype), xi.to(dtype)
        a = self.alpha
        u = u.to(torch.float64)
        eta = torch.randn(shape[:-1], generator=g, dtype=torch.float64)
        p = math.sqrt(a) * xi + math.sqrt((1 - a) * n) * eta.unsqueeze(-1) * u
        proj = (p * u).sum(-1, keepdim=True) * u
        inv = (p - proj) / a + proj / (a + (1 - a) * n)
        return p.to(dtype), inv.to(dtype)

    @staticmethod
    def _unit(v: torch.Tensor) -> torch.Tensor | None:
        norm = v.norm(dim=-1, keepdim=True)
        if (norm == 0).all():
            return None
        return torch.where(norm > 0, v / norm.clamp_min(1e-30), torch.zeros_like(v))

    # ------------------------------------------------------------------ ask / tell
    def _ask_more(self, plan: TwinPlan, twin: Twin, system, cotangent, options):
        """The ± pairs of the perturbative correction (on a random fraction ``q`` of the steps).

        Directions: isotropic Gaussian, or guided by the twin's VJP as it stands now (``alpha < 1``,
        when the cotangent is known at ask and the twin has been fitted). The stencil is shifted
        inward at a bound, as PGT's (the device's declared safe ranges, or ``bounds=``).
        """
        q = self.correction_prob
        measure = q >= 1.0 or float(torch.rand((), generator=self.generator)) < q
        plan.extra["measure"] = measure
        if not measure:
            return None
        x, dtype, b, names, shapes, d_theta, d_in = _sizes(plan)
        k = self.num_pairs
        u_t = u_x = None
        if self.alpha < 1.0 and cotangent is not None and twin.fits:
            tgx, tgt = twin.vjp(plan.theta, x, cotangent, per_sample=True)
            u_t = self._unit(tgt.to(dtype).sum(0)) if d_theta else None
            u_x = self._unit(tgx.to(dtype).reshape(b, d_in)) if plan.input_grad else None
        pt, it = self._guided(k, u_t, d_theta, dtype)                      # [k, d_θ]
        if not plan.input_grad:
            px = ix = torch.zeros(k, b, d_in, dtype=dtype)
        elif u_x is None:  # isotropic, independent per sample
            px = ix = torch.randn(k, b, d_in, generator=self.generator, dtype=torch.float64).to(dtype)
        else:
            px, ix = self._guided(k, u_x, d_in, dtype)
        plan.extra.update(pt=pt, it=it, px=px, ix=ix)
        theta = torch.cat([plan.theta[n].reshape(-1) for n in names]).to(dtype) if names else torch.zeros(0, dtype=dtype)
        low, high = flat_bounds(shapes, options.get("bounds") or system.parameter_bounds(dtype), dtype)
        plus, minus = _stencil(theta.expand(k, -1), pt, self.delta, low, high, "parameter")
        xk = x.reshape(1, b, -1).expand(k, b, -1)
        lo_x, hi_x = options.get("input_bounds") or system.input_range or (-math.inf, math.inf)
        xp, xm = _stencil(xk, px, self.delta, torch.full_like(xk, lo_x), torch.full_like(xk, hi_x), "input")
        both = torch.stack([plus, minus], 1).reshape(2 * k, d_theta)            # rows: +₀, −₀, +₁, −₁, ...
        settings, offset = {}, 0
        for n in names:
            size = math.prod(shapes[n])
            settings[n] = both[:, offset : offset + size].reshape(2 * k, *shapes[n]).to(plan.theta[n].dtype)
            offset += size
        probe_inputs = torch.stack([xp, xm], 1).reshape(2 * k, b, *x.shape[1:]).to(dtype)
        plan.extra["plus"] = ({n: t[0::2] for n, t in settings.items()}, probe_inputs[0::2])
        return settings, probe_inputs

    def _estimate(self, plan: TwinPlan, twin: Twin, answers: torch.Tensor, cotangent: torch.Tensor):
        """``ĝ = c·ĝ_twin + (Z/q)(1/K) Σ_k r_k Σ⁻¹P_k`` per block (module docstring), from the updated twin."""
        x, dtype, b, names, shapes, d_theta, d_in = _sizes(plan)
        v = cotangent.to(dtype).reshape(b, -1)
        if twin.fits:  # the twin's per-sample gradients at the measured point (free: no query)
            tgx, tgt = twin.vjp(plan.theta, x, cotangent, per_sample=True)
            tgx, tgt = tgx.to(dtype).reshape(b, d_in), tgt.to(dtype)
        else:
            tgx, tgt = torch.zeros(b, d_in, dtype=dtype), torch.zeros(b, d_theta, dtype=dtype)
        c_t, c_x = self._coefficients(plan.identity) if (self.control_variate and twin.fits) else (0.0, 0.0)
        self.last_coef = (c_t, c_x)
        gx = c_x * tgx
        gt = c_t * tgt.sum(0)
        if plan.extra["measure"]:
            k, q = self.num_pairs, self.correction_prob
            pt, it, px, ix = (plan.extra[key] for key in ("pt", "it", "px", "ix"))
            plus, minus = answers[0::2], answers[1::2]
            if self.learn:  # one probe of each pair: new data, not near-duplicates
                twin.observe(*plan.extra["plus"], plus)
            diff = (plus - minus).to(dtype).reshape(k, b, -1) / (2 * self.delta)
            s_dev = (diff * v.unsqueeze(0)).sum(-1)                # [k, b]: measured directional derivatives
            s_tw_t = pt @ tgt.T                                    # [k, b]: the twin's exact ones, parameter part
            s_tw_x = torch.einsum("kbn,bn->kb", px, tgx)           # and input part
            if self.control_variate and self.coef == "auto" and twin.fits:
                self._record(plan.identity, s_dev, s_tw_t, s_tw_x)
            r = (s_dev - c_t * s_tw_t - c_x * s_tw_x) / (k * q)
            gt = gt + r.sum(1) @ it
            if plan.input_grad:
                gx = gx + torch.einsum("kb,kbn->bn", r, ix)
        grads, offset = {}, 0
        for n in names:
            size = math.prod(shapes[n])
            grads[n] = gt[offset : offset + size].reshape(shapes[n])
            offset += size
        return gx, grads

    def _coefficients(self, identity: str) -> tuple[float, float]:
        """``(c_θ, c_x)``: fixed, or the least-squares regression of past ``s`` on the twin's ``(ŝ_θ, ŝ_x)``.

        Separate coefficients for the parameter block and the input block keep the estimate unbiased
        (the blocks' directions are independent) and let a twin whose input Jacobian is good but whose
        parameter Jacobian is poor be used where it helps. Clipped to ``[0, 1]``.
        """
        if self.coef != "auto":
            return float(self.coef), float(self.coef)
        stats = self._cov.get(identity)
        if stats is None:
            return 1.0, 1.0
        a_tt, a_tx, a_xx, b_t, b_x = stats
        det = a_tt * a_xx - a_tx * a_tx
        if det <= 1e-12 * max(a_tt * a_xx, 1e-300):
            c_t = b_t / a_tt if a_tt > 0 else 0.0
            c_x = b_x / a_xx if a_xx > 0 else 0.0
        else:
            c_t = (a_xx * b_t - a_tx * b_x) / det
            c_x = (a_tt * b_x - a_tx * b_t) / det
        clip = lambda c: float(min(max(c, 0.0), 1.0))  # noqa: E731
        return clip(c_t), clip(c_x)

    def _record(self, key: str, s_dev: torch.Tensor, s_t: torch.Tensor, s_x: torch.Tensor) -> None:
        new = [float((s_t * s_t).mean()), float((s_t * s_x).mean()), float((s_x * s_x).mean()),
               float((s_dev * s_t).mean()), float((s_dev * s_x).mean())]
        if key not in self._cov:
            self._cov[key] = new
        else:
            w = self.coef_decay
            self._cov[key] = [w * o + (1 - w) * n for o, n in zip(self._cov[key], new)]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["cov"] = {k: list(v) for k, v in self._cov.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._cov = {k: list(v) for k, v in state.get("cov", {}).items()}

    def __repr__(self) -> str:
        return (f"TwinGuidedPGT(num_pairs={self.num_pairs}, delta={self.delta}, alpha={self.alpha}, "
                f"control_variate={self.control_variate}, coef={self.coef!r}, correction_prob={self.correction_prob})")


def _sizes(plan: "TwinPlan"):
    """``(inputs, dtype, batch, parameter names, shapes, d_θ, d_x)`` of a plan's device call."""
    x = plan.inputs
    names = list(plan.theta)
    shapes = {n: tuple(plan.theta[n].shape) for n in names}
    return x, x.dtype, x.shape[0], names, shapes, sum(math.prod(sh) for sh in shapes.values()), math.prod(x.shape[1:])


def _stencil(center: torch.Tensor, directions: torch.Tensor, delta: float, low, high, what: str):
    """``center ± δP``, the centre shifted inward so both stay in the safe range (as PGT's engine does)."""
    half = delta * directions.abs()
    lo, hi = low + half, high - half
    if (lo > hi).any():
        raise RangeError(f"perturbation δ·|P| = {float(half.max()):.4g} exceeds half the safe range of a {what}; "
                         "choose a smaller delta")
    c = torch.maximum(torch.minimum(center, hi), lo)
    plus = torch.maximum(torch.minimum(c + delta * directions, high), low)
    minus = torch.maximum(torch.minimum(c - delta * directions, high), low)
    return plus, minus



# The registry's settings (``physgrad train --method pat|twin_cv|twin_guided``): the device-query
# settings of benchmarks.twin, with a small twin (one hidden layer of 128, at most 150 Adam steps per
# fit) so that a first run is quick on a CPU; pass twin_options for another (the benchmark: (256, 256)).
QUICK_TWIN = {"hidden": (128,), "capacity": 4000, "max_steps": 150}


def pat(
    *,
    warmup_queries: int = 32,
    refit_queries: int = 8,
    twin_options: Mapping | None = None,
    seed: int = 0,
    carrier=None,
) -> PAT:
    """Physics-aware training with a learned twin (:class:`PAT`), the setting of benchmarks.twin
    (32 warm-up and 8 refit queries); ``twin_options=None``: :data:`QUICK_TWIN`."""
    return PAT(twin_options=QUICK_TWIN if twin_options is None else twin_options, warmup_queries=warmup_queries,
               refit_queries=refit_queries, seed=seed, carrier=carrier)


def twin_cv(
    num_pairs: int | None = None,
    delta: float | None = None,
    *,
    correction_prob: float = 0.25,
    coef: float | str = "auto",
    warmup_queries: int = 32,
    refit_queries: int = 8,
    twin_options: Mapping | None = None,
    seed: int = 0,
    carrier=None,
) -> TwinGuidedPGT:
    """The twin as a control variate of PGT-local's VJP (unbiased; expected ``1 + 2Kq`` queries per
    step plus twin data): :class:`TwinGuidedPGT` with isotropic directions, the setting of
    benchmarks.twin (``K = 2`` and δ = 1e-2, the local scope's defaults, ``q = 0.25``, 32 warm-up and 8 refit queries); ``twin_options=None``:
    :data:`QUICK_TWIN`."""
    twin_options = QUICK_TWIN if twin_options is None else twin_options
    method = TwinGuidedPGT(num_pairs, delta, coef=coef, correction_prob=correction_prob, twin_options=twin_options,
                           warmup_queries=warmup_queries, refit_queries=refit_queries, seed=seed, carrier=carrier)
    method.name = "twin_cv"
    return method


def twin_guided(
    num_pairs: int | None = None,
    delta: float | None = None,
    *,
    alpha: float = 0.5,
    warmup_queries: int = 32,
    refit_queries: int = 8,
    twin_options: Mapping | None = None,
    seed: int = 0,
    carrier=None,
) -> TwinGuidedPGT:
    """Guided evolution strategies (Maheswaranathan et al. 2019) with the learned twin's VJP as the
    guide, normalised by ``Σ⁻¹`` so it stays unbiased (no control variate): :class:`TwinGuidedPGT`
    with ``alpha = 0.5``, ``K = 2``, every step; ``twin_options=None``: :data:`QUICK_TWIN`."""
    twin_options = QUICK_TWIN if twin_options is None else twin_options
    method = TwinGuidedPGT(num_pairs, delta, alpha=alpha, control_variate=False, twin_options=twin_options,
                           warmup_queries=warmup_queries, refit_queries=refit_queries, seed=seed, carrier=carrier)
    method.name = "twin_guided"
    return method
