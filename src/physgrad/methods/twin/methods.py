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
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from ...cost import Cost
from ...errors import ConfigError, MeasurementError, RangeError
from ...models.physical_layer import gradient_path
from ...systems.base import PhysicalSystem
from ..base import GradientMethod, LossFn
from .twin import Twin


class TwinMethod(GradientMethod):
    """Shared base: one learned :class:`Twin` per device, its data and its refits.

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
    ) -> None:
        super().__init__("local", seed)
        if warmup_queries < 0 or refit_queries < 0:
            raise ConfigError("warmup_queries and refit_queries must be >= 0")
        self.fixed_twin = twin
        self.twin_options = dict(twin_options or {})
        self.warmup_queries = int(warmup_queries)
        self.refit_queries = int(refit_queries)
        self.learn = bool(learn)
        self.twins: dict[str, Twin] = {}

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

    def ask(self, theta, inputs=None, targets=None, **options):
        """Not yet in the ask/tell form: these methods run through ``backward`` (the local scope's VJP
        hook), where the twin of each device is found from the device itself."""
        raise NotImplementedError(self._no_ask_tell())

    def tell(self, probes, answers, cotangent=None):
        raise NotImplementedError(self._no_ask_tell())

    def _no_ask_tell(self) -> str:
        return (f"{type(self).__name__} has no ask/tell form yet: train it with method.backward(model, loss_fn, x, y); "
                "its device contacts are the forward measurement, the perturbation probes and the twin's samples")

    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with gradient_path(model, "estimate", self):
            loss = loss_fn(model(x), y)
            loss.backward()
        return loss

    def _update_twin(self, system: PhysicalSystem, params: dict[str, torch.Tensor], inputs: torch.Tensor, outputs: torch.Tensor) -> Twin:
        """Observe the forward measurement, take dedicated samples and refit by the stated rule."""
        twin = self.twin_for(system)
        if not self.learn:
            return twin
        twin.observe(params, inputs, outputs, forward=True)
        if twin.needs_fit():
            extra = self.warmup_queries if twin.fits == 0 else self.refit_queries
            twin.sample(system, extra, params, inputs)
            twin.fit()
        return twin

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

    def vjp(self, system, params, inputs, outputs, cotangent, need_input_grad: bool = True):
        twin = self._update_twin(system, params, inputs, outputs)
        if twin.fits == 0:
            raise ConfigError("PAT: the twin has not been fitted (fit a frozen twin before use, or let the method learn it)")
        gx, grads = twin.vjp(params, inputs, cotangent)
        dtype = inputs.dtype
        return (gx.to(dtype) if need_input_grad else None), {n: g.to(params[n].dtype) for n, g in grads.items()}

    def __repr__(self) -> str:
        return f"PAT(warmup_queries={self.warmup_queries}, refit_queries={self.refit_queries}, learn={self.learn})"


class TwinGuidedPGT(TwinMethod):
    """Twin-guided perturbative VJP of each device: unbiased whatever the twin (module docstring).

    Parameters
    ----------
    num_pairs:
        ``K`` ± pairs per correction.
    delta:
        Perturbation scale δ (parameter and input units).
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
        num_pairs: int = 4,
        delta: float = 1e-2,
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
    ) -> None:
        super().__init__(twin, twin_options=twin_options, warmup_queries=warmup_queries,
                         refit_queries=refit_queries, learn=learn, seed=seed)
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

    # ------------------------------------------------------------------ the VJP
    def vjp(self, system, params, inputs, outputs, cotangent, need_input_grad: bool = True):
        twin = self._update_twin(system, params, inputs, outputs)
        dtype = inputs.dtype
        b = inputs.shape[0]
        names = list(params)
        shapes = {n: tuple(params[n].shape) for n in names}
        d_theta = sum(math.prod(s) for s in shapes.values())
        d_in = math.prod(inputs.shape[1:])
        theta = torch.cat([params[n].detach().reshape(-1) for n in names]).to(dtype) if names else torch.zeros(0, dtype=dtype)
        v = cotangent.detach().to(dtype).reshape(b, -1)
        # the twin's per-sample gradients at the measured point (free: no query)
        if twin.fits:
            tgx, tgt = twin.vjp(params, inputs, cotangent, per_sample=True)
            tgx, tgt = tgx.to(dtype).reshape(b, d_in), tgt.to(dtype)
        else:
            tgx, tgt = torch.zeros(b, d_in, dtype=dtype), torch.zeros(b, d_theta, dtype=dtype)
        c_t, c_x = self._coefficients(system) if (self.control_variate and twin.fits) else (0.0, 0.0)
        self.last_coef = (c_t, c_x)
        gx = c_x * tgx
        gt = c_t * tgt.sum(0)
        q = self.correction_prob
        measure = q >= 1.0 or float(torch.rand((), generator=self.generator)) < q
        if measure:
            k = self.num_pairs
            u_t = self._unit(tgt.sum(0)) if (twin.fits and d_theta) else None
            u_x = self._unit(tgx) if (twin.fits and need_input_grad) else None
            pt, it = self._guided(k, u_t, d_theta, dtype)                      # [k, d_θ]
            if need_input_grad:
                px, ix = self._guided(k, u_x if u_x is not None else None, d_in, dtype)
                if px.dim() == 2:  # no guide: independent per sample
                    px = torch.randn(k, b, d_in, generator=self.generator, dtype=torch.float64).to(dtype)
                    ix = px
            else:
                px = ix = torch.zeros(k, b, d_in, dtype=dtype)
            s_dev = self._measure_directional(system, params, names, shapes, theta, inputs, pt, px, v)  # [k, b]
            s_tw_t = pt @ tgt.T                                  # [k, b]: the twin's exact directional derivatives,
            s_tw_x = torch.einsum("kbn,bn->kb", px, tgx)         # parameter part and input part
            if self.control_variate and self.coef == "auto" and twin.fits:
                self._record(system, s_dev, s_tw_t, s_tw_x)
            r = (s_dev - c_t * s_tw_t - c_x * s_tw_x) / (k * q)
            gt = gt + r.sum(1) @ it
            if need_input_grad:
                gx = gx + torch.einsum("kb,kbn->bn", r, ix)
        grads, offset = {}, 0
        for n in names:
            size = math.prod(shapes[n])
            grads[n] = gt[offset : offset + size].reshape(shapes[n]).to(params[n].dtype)
            offset += size
        return (gx.reshape(inputs.shape) if need_input_grad else None), grads

    def _coefficients(self, system: PhysicalSystem) -> tuple[float, float]:
        """``(c_θ, c_x)``: fixed, or the least-squares regression of past ``s`` on the twin's ``(ŝ_θ, ŝ_x)``.

        Separate coefficients for the parameter block and the input block keep the estimate unbiased
        (the blocks' directions are independent) and let a twin whose input Jacobian is good but whose
        parameter Jacobian is poor be used where it helps. Clipped to ``[0, 1]``.
        """
        if self.coef != "auto":
            return float(self.coef), float(self.coef)
        stats = self._cov.get(system.identity)
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

    def _record(self, system: PhysicalSystem, s_dev: torch.Tensor, s_t: torch.Tensor, s_x: torch.Tensor) -> None:
        key = system.identity
        new = [float((s_t * s_t).mean()), float((s_t * s_x).mean()), float((s_x * s_x).mean()),
               float((s_dev * s_t).mean()), float((s_dev * s_x).mean())]
        if key not in self._cov:
            self._cov[key] = new
        else:
            w = self.coef_decay
            self._cov[key] = [w * o + (1 - w) * n for o, n in zip(self._cov[key], new)]

    def _measure_directional(self, system, params, names, shapes, theta, inputs, pt, px, v) -> torch.Tensor:
        """``s_{k,b} = v_b · (y(x_b + δP^in, θ + δP) − y(x_b − δP^in, θ − δP)) / (2δ)``: ``2K`` queries, one call."""
        k, b = pt.shape[0], inputs.shape[0]
        dt = theta.dtype
        low, high = [], []
        for n in names:
            lo, hi = system.parameter_specs[n].bounds(dt)
            low.append(lo.reshape(-1))
            high.append(hi.reshape(-1))
        low = torch.cat(low) if low else torch.zeros(0, dtype=dt)
        high = torch.cat(high) if high else torch.zeros(0, dtype=dt)
        plus, minus = _stencil(theta.expand(k, -1), pt, self.delta, low, high, "parameter")
        x = inputs.reshape(1, b, -1).expand(k, b, -1)
        lo_x, hi_x = system.input_range if system.input_range is not None else (-math.inf, math.inf)
        xp, xm = _stencil(x, px, self.delta, torch.full_like(x, lo_x), torch.full_like(x, hi_x), "input")
        settings, offset = {}, 0
        both = torch.cat([plus, minus])
        for n in names:
            size = math.prod(shapes[n])
            settings[n] = both[:, offset : offset + size].reshape(2 * k, *shapes[n]).to(params[n].dtype)
            offset += size
        probe_inputs = torch.cat([xp, xm]).reshape(2 * k, b, *inputs.shape[1:]).to(inputs.dtype)
        answers = system.measure(settings, probe_inputs)
        if not torch.isfinite(answers).all():
            raise MeasurementError(f"{self.name}: non-finite answer(s); no estimate made")
        if self.learn:
            twin = self.twin_for(system)
            half = {n: s[:k] for n, s in settings.items()}
            twin.observe(half, probe_inputs[:k], answers[:k])  # one probe of each pair: new data, not duplicates
        diff = (answers[:k] - answers[k:]).to(v.dtype).reshape(k, b, -1) / (2 * self.delta)
        return (diff * v.unsqueeze(0)).sum(-1)

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
