"""Black-box baselines: CMA-ES (pycma) and nevergrad's optimisers through physgrad's ask/tell contract.

These are the optimisers a lab would otherwise pick for a device it cannot differentiate: they
never estimate a gradient, they search. Each wraps its field's own library and re-implements
nothing of it:

* :class:`CMAES` — ``cma.CMAEvolutionStrategy`` (Hansen's pycma; Hansen & Ostermeier 2001,
  Hansen 2016 "The CMA Evolution Strategy: A Tutorial", arXiv 1604.00772). Safe ranges go to
  pycma's own ``bounds`` option (its default ``BoundTransform``: every candidate it returns from
  ``ask`` lies inside the box).
* :class:`Nevergrad` — any optimiser of ``nevergrad.optimizers.registry`` (Rapin & Teytaud 2018),
  default ``"NGOpt"`` (nevergrad's own algorithm selector). Safe ranges go to
  ``ng.p.Array.set_bounds`` (nevergrad's bounds handling).

The contract (issue 10)::

    probes  = method.ask(theta, bounds=...)       # n candidate settings of ALL parameters, in range
    answers = carrier(system, probes)             # one loss per candidate  (a [n] tensor)
    est     = method.tell(probes, answers)        # the library's tell; Estimate with the displacement

What is honest about ``backward`` and ``step``
-----------------------------------------------
A search method has no gradient. After ``tell`` the library recommends a new point ``θ_new``
(CMA-ES: the distribution mean ``xfavorite``; nevergrad: ``provide_recommendation()``). We offer:

* :meth:`BlackBoxMethod.step` (**the honest form**, recommended): measures the candidates' losses,
  tells the library, and writes ``θ_new`` into the model's parameters. Use it *instead of* an
  optimizer step.
* :meth:`BlackBoxMethod.backward` (so the :class:`~physgrad.training.Trainer` and any
  ``backward(); optimizer.step()`` loop run unchanged): fills ``p.grad`` with the displacement
  ``θ − θ_new`` — **not a gradient**. ``torch.optim.SGD(params, lr=1.0)`` (no momentum, no weight
  decay) then lands exactly on ``θ_new``; any other optimizer or learning rate distorts the
  library's search, and ``Estimate.grads`` carries the same displacement.

The library keeps the search state (mean, step size, covariance, population). The model's
parameters are read once, as the starting point, on the first ``ask``; afterwards the library's
own mean is the truth, so a change made to the model between steps by anything else is ignored.

Cost: one device query per candidate (``n`` = the library's population per ``ask``), counted like
every method; the loss returned by ``step``/``backward`` is the best candidate's, no extra query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..carriers import InProcess
from ..cost import Cost
from ..errors import ConfigError, MeasurementError, ShapeError
from ..models.physical_layer import gradient_path, parameter_bounds
from .base import Estimate, GradientMethod, LossFn, NetworkLoss, accumulate_grads, flatten_with_bounds, unflatten

Bounds = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Candidates:
    """``n`` candidate settings of every parameter: ``params[name]`` is ``[n, *shape]``, all in range.

    Answered like the global scope's probes: by the network (a
    :class:`~physgrad.methods.base.NetworkLoss`, one loss per candidate), whose device contact is
    the physical layers' through the method's carrier. A lab that scores candidates itself passes
    the ``[n]`` losses to ``tell``.
    """

    params: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    tokens: list[Any]  # the library's own candidate objects, handed back at tell
    generation: int
    inputs: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.tokens)

    def answer(self, system=None) -> torch.Tensor:
        if not isinstance(system, NetworkLoss):
            raise ConfigError(
                "black-box candidates are answered with one loss per candidate: measure each setting, "
                "compute its loss and pass the [n] losses to tell()"
            )
        return system.measure(self.params)

    def shard(self, n: int) -> list["Candidates"]:
        n = max(1, min(int(n), self.count))
        bounds = np.linspace(0, self.count, n + 1).round().astype(int)
        parts = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                parts.append(
                    Candidates({k: v[a:b] for k, v in self.params.items()}, self.shapes, self.tokens[a:b],
                               self.generation, self.inputs)
                )
        return parts

    def join(self, parts_answers) -> torch.Tensor:
        return torch.cat([torch.as_tensor(a).reshape(-1) for a in parts_answers])


class BlackBoxMethod(GradientMethod):
    """Base of the search baselines: flattening, bounds, the candidate evaluation, step/backward.

    ``owns_update = True``: the :class:`~physgrad.training.Trainer` calls :meth:`step` (the
    library's own update) instead of ``backward(); optimizer.step()``.
    """

    name = "blackbox"
    owns_update = True

    def __init__(self, *, sigma0: float = 0.1, popsize: int | None = None, seed: int = 0) -> None:
        super().__init__("global", seed)
        if not (sigma0 > 0 and math.isfinite(sigma0)):
            raise ConfigError(f"sigma0 must be a finite number > 0, got {sigma0!r}")
        if popsize is not None and popsize < 1:
            raise ConfigError(f"popsize must be >= 1, got {popsize}")
        self.sigma0 = float(sigma0)
        self.popsize = popsize
        self.seed = int(seed)
        self._opt = None
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._dtype = torch.float32
        self._low: np.ndarray | None = None
        self._high: np.ndarray | None = None
        self.generation = 0

    # ------------------------------------------------------------------ library hooks
    def _create(self, x0: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ask(self) -> tuple[np.ndarray, list[Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tell(self, tokens: list[Any], losses: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def recommendation(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ ask / tell
    def ask(
        self,
        theta: Mapping[str, torch.Tensor],
        inputs: torch.Tensor | None = None,
        bounds: Bounds | None = None,
        input_bounds=None,
        *,
        targets=None,
        system=None,
    ) -> Candidates:
        """Candidate settings of all of ``theta``'s parameters, inside ``bounds`` (pure: measures nothing).

        On the first call the library starts at ``theta``; later calls continue its search.
        """
        if self._opt is None:
            flat, low, high, shapes = flatten_with_bounds(dict(theta), bounds)
            if flat.numel() == 0:
                raise ConfigError(f"{self.name}: nothing to optimise (no parameters)")
            self._shapes, self._dtype = shapes, flat.dtype
            lo, hi = low.double().numpy(), high.double().numpy()
            if ((hi - lo) <= 0).any():
                raise ConfigError(f"{self.name}: a safe range is empty")
            x0 = np.clip(flat.double().numpy(), lo, hi)
            self._low, self._high = lo, hi
            self._create(x0, lo, hi)
        elif set(theta) != set(self._shapes):
            raise ShapeError(f"{self.name}: ask got parameters {sorted(theta)}, the search has {sorted(self._shapes)}")
        rows, tokens = self._ask()
        # The libraries' bounds handling keeps candidates inside; this only absorbs float64 -> float32 rounding.
        rows = np.clip(rows, self._low, self._high)
        t = torch.as_tensor(rows, dtype=self._dtype)
        # rounding to float32 can step an ulp past a bound: clamp in the parameter dtype too
        t = torch.maximum(torch.minimum(t, torch.as_tensor(self._high, dtype=self._dtype)), torch.as_tensor(self._low, dtype=self._dtype))
        return Candidates(unflatten(t, self._shapes), dict(self._shapes), tokens, self.generation, inputs=inputs)

    def tell(self, probes: Candidates, answers, cotangent=None) -> Estimate:
        """Hand the ``[n]`` losses to the library; the estimate's ``grads`` are ``θ − θ_new`` (a displacement)."""
        if cotangent is not None:
            raise ConfigError(f"{self.name} searches the whole network (global scope); it takes no cotangent")
        if probes.generation != self.generation:
            raise ConfigError(f"{self.name}: these candidates are from generation {probes.generation}, "
                              f"the search is at {self.generation} (tell each ask once, in order)")
        losses = torch.as_tensor(answers).detach().reshape(-1)
        if losses.numel() != probes.count:
            raise ShapeError(f"{self.name}: tell expects {probes.count} losses (one per candidate), got {losses.numel()}")
        if not torch.isfinite(losses).all():
            raise MeasurementError(f"{self.name}: {int((~torch.isfinite(losses)).sum())} non-finite loss(es); not told")
        before = self.recommendation()
        self._tell(probes.tokens, losses.double().numpy())
        self.generation += 1
        after = self.recommendation()
        grads = {n: before[n] - after[n] for n in before}
        b = 1 if probes.inputs is None else int(probes.inputs.shape[0])
        return Estimate(grads, None, Cost(probes.count, probes.count * b))

    # ------------------------------------------------------------------ the torch forms
    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Score the candidates with the network (its devices reached through :attr:`carrier`, as in
        the global scope), tell the library, fill ``p.grad`` with the displacement ``θ − θ_new``."""
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        current = {n: p.detach() for n, p in trainable}
        probes = self.ask(current, x, parameter_bounds(model))
        network = NetworkLoss(model, loss_fn, x, y)
        with gradient_path(model, "measure", None, self.carrier):
            losses = InProcess()(network, probes)
        self.tell(probes, losses)
        target = self.recommendation()
        accumulate_grads(model, {n: current[n] - target[n].to(current[n].dtype) for n in current})
        return losses.min()

    def step(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One generation: measure the candidates on ``(x, y)``, tell, write ``θ_new`` into ``model``.

        Returns the best candidate's loss (no extra query). Cost in ``last_cost``/``total_cost``.
        """
        saved = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = None
        try:
            loss = self.backward(model, loss_fn, x, y)
            self.load_to(model)  # θ_new itself (θ − (θ − θ_new) can differ from it in the last bit)
        finally:
            for n, p in model.named_parameters():
                p.grad = saved[n]
        return loss

    def load_to(self, model: nn.Module) -> None:
        """Write the library's current recommendation into ``model``'s parameters."""
        rec = self.recommendation()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in rec:
                    p.copy_(rec[n].to(p.dtype))

    def _as_params(self, vec: np.ndarray) -> dict[str, torch.Tensor]:
        vec = np.clip(np.asarray(vec, dtype=np.float64), self._low, self._high)
        t = torch.as_tensor(vec, dtype=self._dtype).unsqueeze(0)
        return {n: v[0] for n, v in unflatten(t, self._shapes).items()}

    def state_dict(self) -> dict:
        """The cost and generation (what a checkpoint records); the library's search state itself is
        not checkpointed (it is a pickled object, and checkpoints load with ``weights_only=True``)."""
        return {**super().state_dict(), "generation": self.generation, "library_state": None}

    def load_state_dict(self, state: dict) -> None:
        raise ConfigError(f"{self.name}: a run cannot resume, the library's search state (mean, step size, "
                          "covariance) is not in the checkpoint; start afresh (physgrad train --no-resume)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma0={self.sigma0}, popsize={self.popsize})"


class CMAES(BlackBoxMethod):
    """CMA-ES from pycma (``cma.CMAEvolutionStrategy``), bounds by pycma's ``BoundTransform``.

    Parameters
    ----------
    sigma0:
        Initial step size (pycma requires one; 0.1 ≈ the scale of a freshly initialised layer's weights).
    popsize:
        Candidates per generation; ``None``: pycma's default ``4 + ⌊3 ln D⌋``.
    options:
        Any further pycma options (``cma.CMAOptions``), passed through unchanged.
    """

    name = "cma"

    def __init__(self, *, sigma0: float = 0.1, popsize: int | None = None, seed: int = 0, options: dict | None = None) -> None:
        super().__init__(sigma0=sigma0, popsize=popsize, seed=seed)
        self.options = dict(options or {})

    def _create(self, x0, low, high) -> None:
        import cma

        opts = {"bounds": [list(low), list(high)], "verbose": -9, "seed": self.seed + 1, "maxfevals": np.inf}
        if self.popsize:
            opts["popsize"] = self.popsize
        opts.update(self.options)
        self._opt = cma.CMAEvolutionStrategy(x0, self.sigma0, opts)

    def _ask(self):
        xs = self._opt.ask()
        return np.asarray(xs, dtype=np.float64), list(xs)

    def _tell(self, tokens, losses) -> None:
        self._opt.tell(tokens, [float(v) for v in losses])

    def recommendation(self) -> dict[str, torch.Tensor]:
        return self._as_params(self._opt.result.xfavorite)


class Nevergrad(BlackBoxMethod):
    """Any nevergrad optimiser (``nevergrad.optimizers.registry[optimizer]``), bounds by ``set_bounds``.

    Parameters
    ----------
    optimizer:
        Registry name (default ``"NGOpt"``, nevergrad's own algorithm selector; ``"TBPSA"`` is its
        choice for noisy objectives, ``"DiagonalCMA"``, ``"TwoPointsDE"``, ``"PSO"`` ...).
    budget:
        The evaluation budget the optimiser is told (some, like NGOpt, choose their algorithm by it).
    sigma0:
        Initial mutation scale (``Array.set_mutation(sigma=...)``).
    popsize:
        Candidates per ``ask`` batch (nevergrad's ``num_workers``); ``None``: 1, nevergrad's sequential
        default. (A batch changes which algorithm NGOpt picks, and at D ≈ 700 NGOpt's batched CMA
        variant asks pycma for more samples than one generation holds and fails; sequential is
        what nevergrad recommends when evaluations are not parallel.)
    """

    name = "nevergrad"

    def __init__(
        self, optimizer: str = "NGOpt", *, budget: int = 100_000, sigma0: float = 0.1, popsize: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(sigma0=sigma0, popsize=popsize, seed=seed)
        import nevergrad as ng

        if optimizer not in ng.optimizers.registry:
            raise ConfigError(f"unknown nevergrad optimizer {optimizer!r}")
        if budget < 1:
            raise ConfigError(f"budget must be >= 1, got {budget}")
        self.optimizer = optimizer
        self.budget = int(budget)
        self.name = f"nevergrad-{optimizer}"

    def _create(self, x0, low, high) -> None:
        import nevergrad as ng

        self._n = self.popsize or 1
        boxed = np.isfinite(low) & np.isfinite(high)
        free = np.isneginf(low) & np.isposinf(high)
        if not (boxed | free).all():
            raise ConfigError(f"{self.name}: nevergrad needs each parameter bounded on both sides or on neither")
        self._boxed, self._free = np.flatnonzero(boxed), np.flatnonzero(free)
        parts = {}
        if self._free.size:
            parts["free"] = ng.p.Array(init=x0[self._free]).set_mutation(sigma=self.sigma0)
        if self._boxed.size:
            parts["boxed"] = (
                ng.p.Array(init=x0[self._boxed]).set_mutation(sigma=self.sigma0)
                .set_bounds(low[self._boxed], high[self._boxed], method="bouncing")
            )
        param = ng.p.Dict(**parts)
        param.random_state = np.random.RandomState(self.seed + 1)
        self._size = x0.size
        self._opt = ng.optimizers.registry[self.optimizer](parametrization=param, budget=self.budget, num_workers=self._n)

    def _flat(self, value: dict) -> np.ndarray:
        out = np.empty(self._size)
        if self._free.size:
            out[self._free] = value["free"]
        if self._boxed.size:
            out[self._boxed] = value["boxed"]
        return out

    def _ask(self):
        cands = [self._opt.ask() for _ in range(self._n)]
        return np.stack([self._flat(c.value) for c in cands]), cands

    def _tell(self, tokens, losses) -> None:
        for c, v in zip(tokens, losses):
            self._opt.tell(c, float(v))

    def recommendation(self) -> dict[str, torch.Tensor]:
        return self._as_params(self._flat(self._opt.provide_recommendation().value))

    def __repr__(self) -> str:
        return f"Nevergrad({self.optimizer!r}, sigma0={self.sigma0}, popsize={self.popsize}, budget={self.budget})"


__all__ = ["BlackBoxMethod", "CMAES", "Candidates", "Nevergrad"]
