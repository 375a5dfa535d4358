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
* **schedule: constant** (no decay): the budget of a lab run is not known in advance, and the
  queries-to-target criterion is met before any decay would matter on the tuning tasks.
"""

from __future__ import annotations

DEFAULTS: dict[str, dict] = {
    "global": {
        "num_pairs": 4,
        "delta": 1e-2,
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr_constant": 0.6,  # lr = lr_constant * K / (D + K)
        "schedule": "constant",
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


__all__ = ["DEFAULTS", "default_lr"]
