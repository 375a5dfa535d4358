"""A digital twin of a device, learned from what the device answered (DESIGN.md, "A digital twin, learned").

A :class:`Twin` is a small multilayer perceptron ``f̂(θ, x) ≈ y`` fitted to the triples
(settings ``θ``, input sample ``x``, measured output ``y``) that a device has answered. It reads
only the device's *declarations* (parameter names, shapes and safe ranges, input and output
shapes); it never reads a simulator's weights, never calls ``simulate``. This is the surrogate-model
practice of the DNPU literature (Ruiz Euler et al., "A deep-learning approach to realizing
functionality in nanoelectronic devices", Nat. Nanotechnol. 2020) used *during* training, as in
physics-aware training (Wright et al., "Deep physical neural networks trained with
backpropagation", Nature 601, 2022) — but learned from the measurements training takes anyway.

Data
    A replay buffer of per-sample rows ``(θ, x, y)``. :meth:`Twin.observe` adds what a device
    measured (one query = one setting applied to a batch of ``B`` inputs = ``B`` rows); every twin
    method calls it for every measurement it takes. :meth:`Twin.sample` takes *dedicated*
    measurements: settings drawn uniformly within ``spread`` of the current setting (a fraction of
    each parameter's safe range, clamped into it), applied to recently seen inputs. They are real
    device queries and the device counts them. Each row is assigned to the held-out split with
    probability ``holdout`` when it enters (a stable split across refits). When the buffer is full,
    the oldest rows are dropped (the twin follows training into new regions).

Fit
    Adam on the mean squared error of the standardised outputs, mini-batches, early stopping on the
    held-out rows (patience in epochs), the best held-out state kept, warm-started from the last
    fit. Inputs are standardised: parameters by their safe range (centre and half-width), inputs and
    outputs by the buffer's mean and standard deviation at fit time.

Held-out error
    ``heldout_error = √(mean (f̂ − y)²) / √(mean (y − ȳ)²)`` on the held-out rows (0: perfect;
    1: no better than predicting the mean), recorded after every fit in ``history``.

Refit rule (:meth:`Twin.needs_fit`)
    A fit happens (1) when the twin has never been fitted; (2) when the buffer has grown by
    ``refit_growth`` × the number of rows at the last fit (new data, geometrically spaced fits);
    (3) when the twin's error on the newest *forward* measurements (checked for free before they
    enter the buffer; an exponential moving average with weight ``drift_weight``) exceeds
    ``refit_tolerance`` × its held-out error at the last fit, and at least ``min_new_rows`` new rows
    have come in since: training has moved the device into a region the twin does not know.
"""

from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ...errors import ConfigError, ShapeError
from ...systems.base import PhysicalSystem


class Twin:
    """A learned digital twin of one device (see the module docstring).

    Parameters
    ----------
    system:
        The device; only its declarations are read (parameter specs, input/output shapes).
    hidden:
        Widths of the hidden layers of the MLP (SiLU activations, plus a linear skip path).
    capacity:
        Rows kept in the replay buffer (oldest dropped first).
    holdout:
        Fraction of rows held out for early stopping and the reported error.
    lr, batch_size, max_epochs, patience, max_steps:
        Adam learning rate, mini-batch size, epoch cap, early-stopping patience (epochs without a
        better held-out error) and a cap on Adam steps per fit (CPU budget).
    refit_growth, refit_tolerance, drift_weight, min_new_rows:
        The refit rule of the module docstring.
    spread:
        Dedicated samples: settings uniform within ``±spread`` × half the safe range of the
        current setting (unbounded parameters: ``±spread·(|θ| + 1)``).
    seed:
        Seed of the twin's own generator (initial weights, splits, samples).
    """

    def __init__(
        self,
        system: PhysicalSystem,
        *,
        hidden: Sequence[int] = (256, 256),
        capacity: int = 20000,
        holdout: float = 0.2,
        lr: float = 3e-3,
        batch_size: int = 256,
        max_epochs: int = 60,
        patience: int = 6,
        max_steps: int = 400,
        refit_growth: float = 0.5,
        refit_tolerance: float = 2.0,
        drift_weight: float = 0.2,
        min_new_rows: int = 256,
        spread: float = 0.1,
        seed: int = 0,
    ) -> None:
        if not 0.0 < holdout < 1.0:
            raise ConfigError(f"holdout must be in (0, 1), got {holdout!r}")
        if capacity < 16:
            raise ConfigError(f"capacity must be >= 16 rows, got {capacity}")
        if not spread > 0:
            raise ConfigError(f"spread must be > 0, got {spread!r}")
        self.names = list(system.parameter_specs)
        self.shapes = {n: s.shape for n, s in system.parameter_specs.items()}
        self.input_shape = tuple(system.input_shape)
        self.output_shape = tuple(system.output_shape)
        self.d_theta = sum(math.prod(s) for s in self.shapes.values())
        self.d_in = math.prod(self.input_shape)
        self.d_out = math.prod(self.output_shape)
        lows, highs = [], []
        for n in self.names:
            lo, hi = system.parameter_specs[n].bounds(torch.float32)
            lows.append(lo.reshape(-1))
            highs.append(hi.reshape(-1))
        self.low = torch.cat(lows) if lows else torch.zeros(0)
        self.high = torch.cat(highs) if highs else torch.zeros(0)
        finite = torch.isfinite(self.low) & torch.isfinite(self.high)
        self._p_mid = torch.where(finite, (self.low + self.high) / 2, torch.zeros_like(self.low))
        self._p_half = torch.where(finite, ((self.high - self.low) / 2).clamp_min(1e-12), torch.ones_like(self.low))
        self.input_range = system.input_range
        self.hidden = tuple(int(h) for h in hidden)
        self.capacity = int(capacity)
        self.holdout = float(holdout)
        self.lr, self.batch_size = float(lr), int(batch_size)
        self.max_epochs, self.patience, self.max_steps = int(max_epochs), int(patience), int(max_steps)
        self.refit_growth, self.refit_tolerance = float(refit_growth), float(refit_tolerance)
        self.drift_weight, self.min_new_rows = float(drift_weight), int(min_new_rows)
        self.spread = float(spread)
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = _MLP(self.d_theta + self.d_in, self.hidden, self.d_out)
        # replay buffer (per-sample rows): a preallocated ring, ``_n`` rows filled, ``_next`` the slot to write
        self._theta = torch.zeros(self.capacity, self.d_theta)
        self._x = torch.zeros(self.capacity, self.d_in)
        self._y = torch.zeros(self.capacity, self.d_out)
        self._held = torch.zeros(self.capacity, dtype=torch.bool)
        self._n = 0
        self._next = 0
        self.rows_seen = 0
        self.sampled_queries = 0  # dedicated device queries spent on twin data
        self.fits = 0
        self.rows_at_fit = 0
        self.seen_at_fit = 0
        self.heldout_error = math.inf
        self.drift_error = math.nan
        self.history: list[dict] = []
        self._x_mean = torch.zeros(self.d_in)
        self._x_std = torch.ones(self.d_in)
        self._y_mean = torch.zeros(self.d_out)
        self._y_std = torch.ones(self.d_out)

    # ------------------------------------------------------------------ data
    def _flat_params(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: [*shape] or [K, *shape]}`` → ``[K, d_θ]`` (float32)."""
        if not self.names:
            return torch.zeros(1, 0)
        parts = []
        for n in self.names:
            v = torch.as_tensor(params[n]).detach().float()
            if tuple(v.shape) == self.shapes[n]:
                v = v.unsqueeze(0)
            parts.append(v.reshape(v.shape[0], -1))
        return torch.cat(parts, 1)

    def observe(
        self,
        params: Mapping[str, torch.Tensor],
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        *,
        forward: bool = False,
        split: torch.Tensor | None = None,
    ) -> None:
        """Add what a device answered: ``params`` ``[*shape]`` or ``[K, *shape]``, ``inputs`` ``[B, *in]``
        or ``[K, B, *in]``, ``outputs`` ``[K, B, *out]`` or ``[B, *out]``.

        ``forward=True`` marks the training forward pass: before it enters the buffer, the twin's
        error on it updates the drift monitor of the refit rule (free: the device already answered).
        ``split``: the rows' held-out flags drawn earlier by :meth:`draw_split` (``None``: drawn now).
        """
        theta, x, y = self._rows(params, inputs, outputs)
        n = x.shape[0]
        if forward and self.fits:
            self.drift_error = self._drift_after(theta, x, y)
        held = self.draw_split(n) if split is None else split
        if held.shape != (n,):
            raise ShapeError(f"twin.observe: a split of {tuple(held.shape)} flags for {n} rows")
        self.rows_seen += n
        if n > self.capacity:  # only the newest rows fit
            theta, x, y, held = theta[-self.capacity :], x[-self.capacity :], y[-self.capacity :], held[-self.capacity :]
            n = self.capacity
        slots = (self._next + torch.arange(n)) % self.capacity
        self._theta[slots], self._x[slots], self._y[slots], self._held[slots] = theta, x, y, held
        self._next = int((self._next + n) % self.capacity)
        self._n = min(self._n + n, self.capacity)

    def draw_split(self, rows: int) -> torch.Tensor:
        """Held-out flags for ``rows`` new rows (each held out with probability ``holdout``).

        A method draws them when it *asks* for a measurement, so the twin's generator runs in the
        order the measurements are planned, whatever order the answers are observed in.
        """
        return torch.rand(rows, generator=self.generator) < self.holdout

    def _rows(self, params, inputs, outputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample rows ``(θ [N, d_θ], x [N, d_in], y [N, d_out])`` of a measurement (shapes checked)."""
        theta = self._flat_params(params)
        k = theta.shape[0]
        x = torch.as_tensor(inputs).detach().float()
        y = torch.as_tensor(outputs).detach().float()
        if x.dim() == len(self.input_shape) + 1:
            x = x.unsqueeze(0).expand(k, *x.shape)
        if y.dim() == len(self.output_shape) + 1:
            y = y.unsqueeze(0)
        if y.shape[0] != k or x.shape[0] != k or x.shape[1] != y.shape[1]:
            raise ShapeError(f"twin.observe: {k} setting(s), inputs {tuple(x.shape)}, outputs {tuple(y.shape)} do not match")
        b = x.shape[1]
        x = x.reshape(k * b, self.d_in)
        y = y.reshape(k * b, self.d_out)
        theta = theta.unsqueeze(1).expand(k, b, self.d_theta).reshape(k * b, self.d_theta)
        return theta, x, y

    def _drift_after(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        """The drift monitor's value once the forward rows ``(θ, x, y)`` are seen (pure)."""
        with torch.no_grad():
            err = float(self._relative_error(self._predict_flat(theta, x), y))
        w = self.drift_weight
        return err if math.isnan(self.drift_error) else (1 - w) * self.drift_error + w * err

    @property
    def rows(self) -> int:
        """Rows in the replay buffer now."""
        return self._n

    def data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The buffer's rows ``(θ [N, d_θ], x [N, d_in], y [N, d_out], held_out [N])``, oldest first."""
        if self._n < self.capacity:
            idx = torch.arange(self._n)
        else:
            idx = (self._next + torch.arange(self.capacity)) % self.capacity
        return self._theta[idx], self._x[idx], self._y[idx], self._held[idx]

    def sample(self, system: PhysicalSystem, queries: int, center: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> int:
        """Take ``queries`` dedicated measurements around ``center`` (see the module docstring).

        One measurement per random setting, each on a random permutation of ``inputs`` ``[B, *in]``
        (recently seen inputs: the distribution training feeds the device). Returns the queries
        spent (the device counts them; they are also added to ``sampled_queries``).
        """
        if queries <= 0:
            return 0
        settings, xs = self.sample_plan(queries, center, inputs)
        self.observe_samples(settings, xs, system.measure(settings, xs))
        return queries

    def sample_plan(self, queries: int, center: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The settings ``{name: [Q, *shape]}`` and inputs ``[Q, B, *in]`` of ``queries`` dedicated samples (pure)."""
        c = self._flat_params(center)[0]
        u = torch.rand(queries, self.d_theta, generator=self.generator) * 2 - 1
        finite = torch.isfinite(self.low) & torch.isfinite(self.high)
        radius = torch.where(finite, self.spread * self._p_half, self.spread * (c.abs() + 1))
        theta = torch.maximum(torch.minimum(c + u * radius, self.high), self.low)
        x = torch.as_tensor(inputs).detach()
        b = x.shape[0]
        perms = torch.stack([torch.randperm(b, generator=self.generator) for _ in range(queries)])
        return self._unflatten(theta, dtype=x.dtype), x[perms]

    def observe_samples(self, settings: Mapping[str, torch.Tensor], inputs: torch.Tensor, outputs: torch.Tensor) -> None:
        """Add the answers to :meth:`sample_plan` 's settings (counted in ``sampled_queries``)."""
        self.observe(settings, inputs, outputs)
        self.sampled_queries += int(torch.as_tensor(outputs).shape[0])

    def _unflatten(self, theta: torch.Tensor, dtype=torch.float32) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for n in self.names:
            size = math.prod(self.shapes[n])
            out[n] = theta[:, offset : offset + size].reshape(theta.shape[0], *self.shapes[n]).to(dtype)
            offset += size
        return out

    # ------------------------------------------------------------------ the model
    def _predict_flat(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Twin output ``[N, d_out]`` in device units for flat rows (differentiable in ``theta`` and ``x``)."""
        tn = (theta - self._p_mid.to(theta.dtype)) / self._p_half.to(theta.dtype)
        xn = (x - self._x_mean.to(x.dtype)) / self._x_std.to(x.dtype)
        net = self.net if theta.dtype == torch.float32 else self._net_as(theta.dtype)
        z = net(torch.cat([tn, xn], 1))
        return z * self._y_std.to(z.dtype) + self._y_mean.to(z.dtype)

    def _net_as(self, dtype: torch.dtype) -> nn.Module:
        return copy.deepcopy(self.net).to(dtype)

    def predict(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """``f̂(θ, x)`` for one setting ``params`` and a batch ``inputs`` ``[B, *in]`` → ``[B, *out]``."""
        theta = self._flat_params(params)
        x = torch.as_tensor(inputs).float().reshape(-1, self.d_in)
        with torch.no_grad():
            out = self._predict_flat(theta.expand(x.shape[0], -1), x)
        return out.reshape(x.shape[0], *self.output_shape)

    def vjp(
        self,
        params: Mapping[str, torch.Tensor],
        inputs: torch.Tensor,
        cotangent: torch.Tensor,
        *,
        per_sample: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | torch.Tensor]:
        """The twin's vector–Jacobian product at the measured point: ``(vᵀ∂f̂/∂x, vᵀ∂f̂/∂θ)``.

        ``inputs`` ``[B, *in]``, ``cotangent`` ``[B, *out]``. Returns the input gradient ``[B, *in]`` and the
        parameter gradient summed over the batch as ``{name: [*shape]}`` — or, with ``per_sample=True``,
        each sample's parameter gradient as one flat ``[B, d_θ]`` tensor.
        """
        x = torch.as_tensor(inputs).detach().float().reshape(-1, self.d_in)
        b = x.shape[0]
        theta = self._flat_params(params).expand(b, -1).clone().requires_grad_(True)
        x = x.clone().requires_grad_(True)
        v = torch.as_tensor(cotangent).detach().float().reshape(b, self.d_out)
        with torch.enable_grad():
            out = self._predict_flat(theta, x)
            gt, gx = torch.autograd.grad((out * v).sum(), [theta, x], allow_unused=True)
        gt = torch.zeros_like(theta) if gt is None else gt
        gx = gx.reshape(b, *self.input_shape)
        if per_sample:
            return gx, gt
        return gx, {n: t[0] for n, t in self._unflatten(gt.sum(0, keepdim=True)).items()}

    # ------------------------------------------------------------------ fitting
    def needs_fit(self) -> bool:
        """The refit rule (module docstring)."""
        return self._needs_fit(self.rows, self.rows_seen, self.drift_error)

    def needs_fit_after(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor, outputs: torch.Tensor | None = None) -> bool:
        """:meth:`needs_fit` as it will be once the forward measurement of ``params`` on ``inputs`` is
        observed (pure: nothing is added). ``outputs=None`` (not measured yet): the new rows are
        counted but the drift monitor keeps its present value."""
        n = math.prod(torch.as_tensor(inputs).shape[: inputs.dim() - len(self.input_shape)])
        drift = self.drift_error
        if outputs is not None and self.fits:
            drift = self._drift_after(*self._rows(params, inputs, outputs))
        return self._needs_fit(min(self.rows + n, self.capacity), self.rows_seen + n, drift)

    def _needs_fit(self, rows: int, rows_seen: int, drift: float) -> bool:
        if rows == 0:
            return False
        if not self.fits:
            return True
        new = rows_seen - self.seen_at_fit
        if new >= self.refit_growth * max(self.rows_at_fit, 1):
            return True
        drifted = not math.isnan(drift) and drift > self.refit_tolerance * max(self.heldout_error, 0.02)
        return drifted and new >= self.min_new_rows

    @staticmethod
    def _relative_error(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        var = ((y - y.mean(0)) ** 2).mean()
        return ((pred - y) ** 2).mean().sqrt() / var.clamp_min(1e-12).sqrt()

    def fit(self) -> float:
        """Fit the twin to the replay buffer (Adam, early stopping on the held-out rows); the held-out error."""
        with torch.enable_grad():  # may be called from inside an autograd backward pass
            return self._fit()

    def _fit(self) -> float:
        if self.rows == 0:
            raise ConfigError("the twin has no data to fit: observe some measurements first")
        all_t, all_x, all_y, held = self.data()
        if held.all() or (~held).all():  # too few rows for a split: hold out every fifth row
            held = torch.zeros_like(held)
            held[::5] = True
            if self.rows < 2:
                held[:] = False
        tr = ~held
        t_tr, x_tr, y_tr = all_t[tr], all_x[tr], all_y[tr]
        t_ho, x_ho, y_ho = (all_t[held], all_x[held], all_y[held]) if held.any() else (t_tr, x_tr, y_tr)
        self._x_mean = x_tr.mean(0)
        self._x_std = x_tr.std(0, unbiased=False).clamp_min(1e-6)
        self._y_mean = y_tr.mean(0)
        self._y_std = y_tr.std(0, unbiased=False).clamp_min(1e-6)
        yn_tr = (y_tr - self._y_mean) / self._y_std
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)

        def heldout() -> float:
            with torch.no_grad():
                return float(self._relative_error(self._predict_flat(t_ho, x_ho), y_ho))

        best, best_state, bad, steps = heldout(), copy.deepcopy(self.net.state_dict()), 0, 0
        n = y_tr.shape[0]
        for _ in range(self.max_epochs):
            perm = torch.randperm(n, generator=self.generator)
            for i in range(0, n, self.batch_size):
                idx = perm[i : i + self.batch_size]
                tn = (t_tr[idx] - self._p_mid) / self._p_half
                xn = (x_tr[idx] - self._x_mean) / self._x_std
                loss = ((self.net(torch.cat([tn, xn], 1)) - yn_tr[idx]) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                if steps >= self.max_steps:
                    break
            err = heldout()
            if err < best - 1e-5:
                best, best_state, bad = err, copy.deepcopy(self.net.state_dict()), 0
            else:
                bad += 1
            if bad >= self.patience or steps >= self.max_steps:
                break
        self.net.load_state_dict(best_state)
        self.fits += 1
        self.rows_at_fit = self.rows
        self.seen_at_fit = self.rows_seen
        self.heldout_error = best
        self.drift_error = math.nan
        self.history.append({"fit": self.fits, "rows": self.rows, "rows_seen": self.rows_seen,
                             "sampled_queries": self.sampled_queries, "heldout_error": best, "adam_steps": steps})
        return best

    def error_on(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor, outputs: torch.Tensor) -> float:
        """The twin's relative error on fresh measurements (``outputs`` measured at ``params``, ``inputs``)."""
        pred = self.predict(params, inputs).reshape(-1, self.d_out)
        return float(self._relative_error(pred, torch.as_tensor(outputs).float().reshape(-1, self.d_out)))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """A snapshot (copies, not views) of the net, the buffer, the split and the refit bookkeeping."""
        return {
            "net": copy.deepcopy(self.net.state_dict()), "theta": self._theta.clone(), "x": self._x.clone(),
            "y": self._y.clone(), "held": self._held.clone(),
            "n": self._n, "next": self._next,
            "generator": self.generator.get_state(), "rows_seen": self.rows_seen, "sampled_queries": self.sampled_queries,
            "fits": self.fits, "rows_at_fit": self.rows_at_fit, "seen_at_fit": self.seen_at_fit,
            "heldout_error": self.heldout_error, "drift_error": self.drift_error, "history": list(self.history),
            "norm": tuple(t.clone() for t in (self._x_mean, self._x_std, self._y_mean, self._y_std)),
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self._theta, self._x, self._y, self._held = (state[k].clone() for k in ("theta", "x", "y", "held"))
        self._n, self._next = int(state["n"]), int(state["next"])
        self.generator.set_state(state["generator"])
        for key in ("rows_seen", "sampled_queries", "fits", "rows_at_fit", "seen_at_fit"):
            setattr(self, key, int(state[key]))
        self.heldout_error, self.drift_error = float(state["heldout_error"]), float(state["drift_error"])
        self.history = list(state["history"])
        self._x_mean, self._x_std, self._y_mean, self._y_std = state["norm"]

    def __repr__(self) -> str:
        return (f"Twin(hidden={self.hidden}, rows={self.rows}, fits={self.fits}, "
                f"heldout_error={self.heldout_error:.4g}, sampled_queries={self.sampled_queries})")


class _MLP(nn.Module):
    """``z ↦ W₃ σ(W₂ σ(W₁ z)) + A z`` (SiLU hidden layers plus a linear skip path)."""

    def __init__(self, d_in: int, hidden: Sequence[int], d_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = d_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, d_out))
        self.body = nn.Sequential(*layers)
        self.skip = nn.Linear(d_in, d_out, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z) + self.skip(z)
