"""physgrad's recommended defaults for the forward-only methods, and the rule that produced them.

Chosen on the validation suite's *tuning* tasks (``physgrad.data.suite.TUNING``: six tasks,
tabular/image/sequence, validation split of their training part) by queries-to-target, and checked
on the *held-out* tasks (``suite.HELD_OUT``) by ``python -m benchmarks.queries_to_target``; the
evidence is in docs/results/queries.md, "How the defaults were chosen". The owners of
``PGT``/``TrainConfig`` import this table at merge; nothing here changes their behaviour by itself.

The rules (theory first, the constant from validation):

* **δ = 1e-2** (both scopes). The antithetic difference has an O(δ²) bias and an
  O(ε·|L|/δ) float32 cancellation error (ε ≈ 6e-8); the two balance near δ ≈ ε^(1/3) ≈ 4e-3 of the
  parameter's scale, and measurement noise σ adds σ/δ, so the larger δ = 1e-2 (1 % of a unit-scale
  parameter, 0.25 % of the reservoir's ranges) is the robust choice. It also ends the disagreement
  between ``PGT`` (1e-3) and ``TrainConfig`` (1e-2).
* **local scope: K = 2, Adam, lr = 3e-2.** The local estimate is exact through every digital layer;
  only the device's vector–Jacobian product is estimated, and Adam's per-coordinate normalisation
  absorbs the estimate's scale. Cost per step is 2K + 1 queries and the variance of an average of K
  pairs falls like 1/K, so at a fixed query budget a small K buys proportionally more (noisier)
  steps. On the tuning tasks K = 2 had the lowest median and the smallest worst case of
  K ∈ {2, 4, 8, 16}; 3e-2 was the best rate at every K and the largest stable one on every task
  (1e-1 diverged on two).
* **global scope: SGD with momentum 0.9, lr = c · K / (D + K), c = 0.6, K = 4.** A K-pair
  random-direction estimate of a D-dimensional gradient has second moment ≈ ‖g‖²·(D + K)/K
  (Nesterov & Spokoiny 2017; Ghadimi & Lan 2013), so the stable step of zeroth-order SGD is the
  first-order one scaled by K/(D + K); ``c`` is the largest constant that never diverged on a
  tuning task (1.0 did). Adam is *not* the default here: its per-coordinate normalisation gives
  noise-dominated coordinates steps as large as the informative ones.
* **schedule: local constant; global a loss-rise back-off** (:class:`LossBackoff`). A
  constant step is right where it is stable (the budget of a lab run is not known in advance, and
  a decay only slows the runs that are fine). But momentum SGD on a quadratic of curvature λ is
  stable only while ``lr·λ < 2(1 + β)`` (Polyak 1964), the curvature of a network's loss grows as
  it fits (Cohen et al. 2021, "progressive sharpening"), and the zeroth-order estimate's noise
  (second moment ``(D + K)/K`` times the gradient's) random-walks ``θ`` to larger weights and larger
  curvature: at the constant rate the global scope climbed and then diverged to chance on two
  held-out tasks, and on the tuning tasks ``moons`` (one seed), ``blobs20`` and ``majority`` once
  run past the target. A *significant rise* of the training loss is the observable sign, and the
  global scope measures the loss at θ on every step anyway, so the back-off costs **no** device
  query: every ``window = 20`` steps, when the window's mean loss exceeds the best window mean by
  more than ``z = 2`` standard errors of the window's mean (the spread of its 20 batch losses), the
  rate is halved (each halving doubles the curvature it tolerates) and rises are measured from the
  new level; at most six halvings (``min_lr_fraction = 1/64``). PyTorch's plain plateau rule
  (``ReduceLROnPlateau``, ``z=None``) also stopped the collapse but halved on the slow, noisy last
  stretch of ``moons`` and cost 1.5× the queries there: a plateau is not a sign of instability.
  Validation on the tuning tasks only: docs/results/queries.md, "The back-off rule".
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

DEFAULTS: dict[str, dict] = {
    "global": {
        "num_pairs": 4,
        "delta": 1e-2,
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr_constant": 0.6,  # lr = lr_constant * K / (D + K)
        "schedule": "backoff",  # LossBackoff with BACKOFF's settings
    },
    "local": {
        "num_pairs": 2,
        "delta": 1e-2,
        "optimizer": "adam",
        "momentum": 0.0,
        "lr": 3e-2,
        "schedule": "constant",
    },
    "backprop": {"optimizer": "adam", "lr": 1e-2},
    "batch_size": 32,
}

# LossBackoff's settings for the global scope (docs/results/queries.md, "the back-off rule")
BACKOFF: dict = {"window": 20, "patience": 0, "factor": 0.5, "threshold": 1e-4, "z": 2.0, "min_lr_fraction": 1 / 64}
SCHEDULES = ("constant", "backoff")


def default_lr(scope: str, num_parameters: int | None = None, num_pairs: int | None = None) -> float:
    """The default learning rate of a scope; the global one needs the model's trainable parameter count ``D``."""
    if scope == "local":
        return float(DEFAULTS["local"]["lr"])
    if scope == "backprop":
        return float(DEFAULTS["backprop"]["lr"])
    if scope != "global":
        raise ValueError(f"scope must be 'global', 'local' or 'backprop', got {scope!r}")
    if not num_parameters or num_parameters < 1:
        raise ValueError("the global-scope learning rate needs the number of trainable parameters D >= 1")
    k = int(num_pairs or DEFAULTS["global"]["num_pairs"])
    return float(DEFAULTS["global"]["lr_constant"]) * k / (num_parameters + k)


def default_scope(method: str, scope: str | None) -> str:
    """The row of :data:`DEFAULTS` a method's settings come from: ``backprop`` for the oracle and for
    central finite differences (a deterministic estimate, exact to O(δ²): the first-order setting),
    else the forward-only scope (``global``/``local``)."""
    if method in ("backprop", "fd"):
        return "backprop"
    if scope not in ("global", "local"):
        raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")
    return scope


def scope_defaults(scope: str, *, num_pairs: int | None = None, delta: float | None = None) -> tuple[int, float]:
    """``(num_pairs, delta)`` with ``None`` replaced by the scope's default (what ``PGT()`` and the
    other perturbation methods use; an unknown scope takes the global row and is refused by the method)."""
    row = DEFAULTS["local" if scope == "local" else "global"]
    return (int(row["num_pairs"]) if num_pairs is None else num_pairs,
            float(row["delta"]) if delta is None else delta)


class LossBackoff(ReduceLROnPlateau):
    """Halve the learning rate when the windowed training loss rises significantly (or, with
    ``z=None``, PyTorch's ``ReduceLROnPlateau`` on the windowed loss, unchanged).

    Call ``step(loss)`` after every optimizer step with that step's loss (the loss at θ that the
    method measured anyway: no device query). Every ``window`` steps the mean of the window's
    finite losses is judged:

    * ``z`` a number (the default, 2): the window is *bad* when its mean exceeds the best window
      mean by more than ``z`` standard errors of the window's mean (the sample spread of its losses
      ÷ √n: a rise that the batch noise does not explain). A plateau is never bad. After a
      reduction the reference is the current window, so a loss that stays high after one back-off
      is not halved again unless it keeps rising.
    * ``z=None``: the window's mean goes to ``ReduceLROnPlateau.step`` (bad = not better than the
      best by the relative ``threshold``; a plateau counts).

    After ``patience + 1`` consecutive bad windows every parameter group's rate is multiplied by
    ``factor``, not below ``min_lr`` (``min_lr_fraction`` × the initial rate when ``min_lr`` is
    None). The reduction, ``min_lr``, ``cooldown`` and ``state_dict`` are PyTorch's.
    ``backoffs`` counts the reductions. The theory and the validation: this module's docstring.

    ``per_step = True`` tells :class:`~physgrad.training.Trainer` to call ``step(loss)`` after
    every training step instead of ``step()`` once an epoch.
    """

    per_step = True

    def __init__(self, optimizer: torch.optim.Optimizer, window: int = int(BACKOFF["window"]),
                 patience: int = int(BACKOFF["patience"]), factor: float = BACKOFF["factor"],
                 threshold: float = BACKOFF["threshold"], z: float | None = BACKOFF["z"],
                 min_lr: float | None = None, min_lr_fraction: float = BACKOFF["min_lr_fraction"],
                 cooldown: int = 0) -> None:
        if int(window) != window or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if z is not None and not (z >= 0 and math.isfinite(z)):
            raise ValueError(f"z must be None or a finite number >= 0, got {z!r}")
        if min_lr is None:
            min_lr = [float(g["lr"]) * min_lr_fraction for g in optimizer.param_groups]
        super().__init__(optimizer, mode="min", factor=factor, patience=int(patience), threshold=threshold,
                         threshold_mode="rel", cooldown=cooldown, min_lr=min_lr)
        self.window = int(window)
        self.z = None if z is None else float(z)
        self.backoffs = 0
        self._window_losses: list[float] = []

    def step(self, metrics, epoch=None) -> None:  # type: ignore[override]
        """Record one training step's loss; judge the window's mean when the window is full."""
        value = float(metrics)
        if math.isfinite(value):
            self._window_losses.append(value)
        if len(self._window_losses) < self.window:
            return
        losses, self._window_losses = self._window_losses, []
        current = sum(losses) / len(losses)
        before = [float(g["lr"]) for g in self.optimizer.param_groups]
        if self.z is None:
            super().step(current)  # PyTorch's plateau rule, unchanged
        else:
            spread = math.sqrt(sum((v - current) ** 2 for v in losses) / max(len(losses) - 1, 1))
            self._rise_step(current, spread / math.sqrt(len(losses)))
        if any(float(g["lr"]) < lr for g, lr in zip(self.optimizer.param_groups, before)):
            self.backoffs += 1

    def _rise_step(self, current: float, standard_error: float) -> None:
        """The rise rule: bad = more than ``z`` standard errors (of this window's mean) above the best
        window mean; after a back-off the reference is the current window (rises are measured from
        the level the back-off left)."""
        self.last_epoch += 1
        self.best = min(self.best, current)
        rose = current - self.best > self.z * standard_error
        self.num_bad_epochs = self.num_bad_epochs + 1 if rose else 0
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(self.last_epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
            self.best = current
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]


def default_schedule(optimizer: torch.optim.Optimizer, scope: str, schedule: str | None = None):
    """The scheduler of ``scope``'s default schedule (``None`` for ``constant``), on ``optimizer``."""
    schedule = schedule or DEFAULTS.get(scope, {}).get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return LossBackoff(optimizer) if schedule == "backoff" else None


def num_trainable(model: torch.nn.Module) -> int:
    """``D``: the number of trainable parameter entries (what the global rate's rule takes)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def default_optimizer(model: torch.nn.Module, scope: str, *, num_pairs: int | None = None,
                      optimizer: str | None = None, lr: float | None = None,
                      momentum: float | None = None) -> torch.optim.Optimizer:
    """The default optimizer of ``scope`` (``global``/``local``/``backprop``) for ``model``; any
    argument given overrides the table (``lr=None``: :func:`default_lr` with ``D`` of ``model``)."""
    row = DEFAULTS[scope]
    name = optimizer or row["optimizer"]
    if lr is None:
        lr = default_lr(scope, num_trainable(model), num_pairs) if scope == "global" else default_lr(scope)
    if name == "sgd":
        m = row.get("momentum", 0.0) if momentum is None else momentum
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=m)
    if momentum:
        raise ValueError(f"momentum applies to optimizer 'sgd' only, not {name!r}")
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](model.parameters(), lr=lr)


__all__ = ["BACKOFF", "DEFAULTS", "LossBackoff", "SCHEDULES", "default_lr", "default_optimizer",
           "default_schedule", "default_scope", "num_trainable", "scope_defaults"]
