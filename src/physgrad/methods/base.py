"""The contract every gradient method keeps (DESIGN.md, "The one idea"; issue 10).

Three verbs, and ``backward`` on top, written once here::

    probes   = method.ask(theta, inputs=None, targets=None, *, bounds=None, input_bounds=None, system=None)
    answers  = method.carrier(system, probes)     # the ONLY contact with a device
    estimate = method.tell(probes, answers, cotangent=None)   # -> Estimate(grads, input_grad, cost)

    loss = method.backward(model, loss_fn, x, y)  # fills p.grad for every trainable p
    optimizer.step()

* ``ask`` is pure: it reads a device's declarations (parameter specs, input shape, sample rate)
  from ``system`` but never measures it.
* Probes (:class:`Probes`) know how an in-process device answers them (``answer``), what they cost
  (``count``), and how to split and reassemble themselves (``shard``/``join``) for a carrier that
  spreads them over several devices or calls.
* The carrier (``method.carrier``, default :class:`~physgrad.carriers.InProcess`) is settable:
  a device server's client, a pool of workers or a lab instrument replace it without touching a
  method.

``backward`` has two scopes (DESIGN.md, "local variant"):

``global``
    ``ask`` for settings of *every* trainable parameter of the model; each probe is answered by
    the whole network's loss (:class:`NetworkLoss`), its physical layers measuring through the
    method's carrier; ``tell`` makes the estimate.
``local``
    autograd carries exact gradients through the digital layers; each physical layer's backward
    calls :meth:`GradientMethod.vjp`: ``ask`` at that device's parameters and inputs, the carrier,
    ``tell`` with the cotangent.

:meth:`GradientMethod.backward` guarantees that a non-finite estimate never reaches ``p.grad``:
the gradients are restored to what they were and :class:`NonFiniteGradientError` is raised.
Every failed or non-finite measurement is a :class:`~physgrad.errors.MeasurementError`
(:func:`~physgrad.errors.require_finite`), whatever the method.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..carriers import InProcess, carry
from ..carriers.probes import Probes
from ..cost import Cost
from ..errors import ConfigError, NonFiniteGradientError, require_finite
from ..models.physical_layer import clamp_to_safe_range_, gradient_path, parameter_bounds, systems_of

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Bounds = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
SCOPES = ("global", "local")


@dataclass
class Estimate:
    """A gradient estimate: per-parameter gradients, the input gradient (local scope), its cost."""

    grads: dict[str, torch.Tensor]
    input_grad: torch.Tensor | None
    cost: Cost

    def __add__(self, other: "Estimate") -> "Estimate":
        grads = {n: self.grads[n] + other.grads[n] for n in self.grads}
        if self.input_grad is None:
            input_grad = other.input_grad
        elif other.input_grad is None:
            input_grad = self.input_grad
        else:
            input_grad = self.input_grad + other.input_grad
        return Estimate(grads, input_grad, self.cost + other.cost)


def scaled_cost(count: int, per_query: Cost) -> Cost:
    """The cost of ``count`` queries of ``per_query`` each."""
    return Cost(count * per_query.queries, count * per_query.samples, count * per_query.device_seconds)


ASK_OPTIONS = ("bounds", "input_bounds", "system", "input_grad")


def check_ask_options(method: Any, options: Mapping[str, Any]) -> None:
    """Refuse keywords of ``ask`` that are not the contract's (a typo must not pass silently)."""
    unknown = sorted(set(options) - set(ASK_OPTIONS))
    if unknown:
        raise TypeError(f"{type(method).__name__}.ask got unknown keyword(s) {unknown}; the contract's are {list(ASK_OPTIONS)}")


class NetworkLoss:
    """The whole network as the thing global-scope probes are answered by: settings → losses.

    ``measure(params)`` evaluates ``loss_fn(model(x; params), y)`` for every setting ``params[name][k]``
    in one ``torch.func.vmap`` over ``functional_call`` (``vectorize=False``: one by one). The
    device contact inside it is the physical layers', through the method's carrier (set by
    :func:`~physgrad.models.physical_layer.gradient_path`). Not a device: a carrier always answers
    it in this process.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, vectorize: bool = True):
        self.model, self.loss_fn, self.x, self.y, self.vectorize = model, loss_fn, x, y, vectorize

    def _one(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(functional_call(self.model, params, (self.x,)), self.y)

    def measure(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            if self.vectorize:
                return vmap(self._one, randomness="same")(dict(params))
            m = next(iter(params.values())).shape[0]
            return torch.stack([self._one({n: v[i] for n, v in params.items()}) for i in range(m)])

    def loss(self) -> torch.Tensor:
        """The loss at the model's own parameters (one forward pass)."""
        with torch.no_grad():
            return self.loss_fn(self.model(self.x), self.y)


class GradientMethod(abc.ABC):
    """Base of every method: the three verbs, ``backward`` and ``vjp`` on top of them, cost
    bookkeeping, the NaN barrier, reproducible randomness.

    Subclasses implement :meth:`ask` and :meth:`tell` (and may say in :meth:`parts` into how many
    device calls their probes are split). ``kind`` names the devices a method needs:
    ``"static"`` (``measure``), ``"waveform"`` (time-domain), ``"energy"`` (relaxation) or
    ``"oracle"`` (a differentiable simulator).
    """

    name = "method"
    kind = "static"

    def __init__(self, scope: str = "global", seed: int = 0, *, carrier: Callable | None = None) -> None:
        if scope not in SCOPES:
            raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        self.generator = torch.Generator().manual_seed(seed)
        self.total_cost = Cost()
        self.last_cost = Cost()
        self.carrier = carrier

    @property
    def carrier(self) -> Callable:
        """What carries probes to a device: ``carrier(system, probes) -> answers`` (settable)."""
        return self._carrier

    @carrier.setter
    def carrier(self, value: Callable | None) -> None:
        if value is not None and not callable(value):
            raise ConfigError(f"a carrier must be callable as carrier(system, probes), got {type(value).__name__}")
        self._carrier = InProcess() if value is None else value

    # ------------------------------------------------------------------ the three verbs
    @abc.abstractmethod
    def ask(
        self,
        theta: Mapping[str, torch.Tensor],
        inputs: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        bounds: Bounds | None = None,
        input_bounds: tuple[float, float] | None = None,
        system: Any = None,
        input_grad: bool | None = None,
    ) -> Probes:
        """The probes of one gradient at ``theta`` (pure: never touches a device)."""

    @abc.abstractmethod
    def tell(self, probes: Probes, answers: Any, cotangent: torch.Tensor | None = None) -> Estimate:
        """Turn the answers to ``probes`` into an :class:`Estimate` (with its cost)."""

    def parts(self, probes: Probes) -> int:
        """Into how many device calls :meth:`carry` splits ``probes`` (a memory bound; default one)."""
        return 1

    def carry(self, system: Any, probes: Probes) -> Any:
        """``probes`` to ``system`` and back through :attr:`carrier`, in :meth:`parts` calls."""
        return carry(self.carrier, system, probes, self.parts(probes))

    # ------------------------------------------------------------------ backward
    def backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Estimate d loss_fn(model(x), y) / d p for every trainable ``p`` and add it to ``p.grad``.

        Returns the loss at the current parameters (detached). The cost of this call is in
        ``self.last_cost``; the running total in ``self.total_cost``. Device parameters that an
        optimizer step moved out of their safe ranges are first projected back into them (in place),
        so the model always describes what the device receives.
        """
        return self.guarded(model, lambda: self._backward(model, loss_fn, x, y))

    def guarded(self, model: nn.Module, fill: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``fill`` (which adds to ``p.grad`` and returns the loss) behind the NaN barrier, counting its cost."""
        clamp_to_safe_range_(model)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        saved = {n: (None if p.grad is None else p.grad.clone()) for n, p in trainable}
        systems = systems_of(model)
        before = sum((s.cost for s in systems), Cost())
        try:
            loss = fill()
            filled = [(n, p.grad) for n, p in trainable if p.grad is not None]
            if filled and not bool(torch.isfinite(torch.cat([g.reshape(-1) for _, g in filled])).all()):
                bad = [n for n, g in filled if not torch.isfinite(g).all()]
                raise NonFiniteGradientError(f"{self.name}: non-finite gradient estimate for {bad}; not applied")
        except BaseException:
            for n, p in trainable:
                p.grad = saved[n]
            raise
        finally:
            self.last_cost = sum((s.cost for s in systems), Cost()) - before
            self.total_cost = self.total_cost + self.last_cost
        return loss.detach()

    def _backward(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fill ``p.grad`` and return the loss: the local or global scope, on ask → carrier → tell."""
        if self.scope == "local":
            with gradient_path(model, "estimate", self, self.carrier):
                loss = loss_fn(model(x), y)
                loss.backward()
            return loss
        theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        network = NetworkLoss(model, loss_fn, x, y, getattr(self, "vectorize", True))
        probes = self.ask(theta, bounds=self.model_bounds(model), system=network)
        with gradient_path(model, "measure", None, self.carrier):
            answers, loss = self.answer_network(network, probes, theta)
        estimate = self.tell(probes, answers)
        accumulate_grads(model, estimate.grads)
        return loss

    def answer_network(self, network: NetworkLoss, probes: Probes, theta: Mapping[str, torch.Tensor]):
        """``(answers, loss at θ)`` of global-scope probes: the network is evaluated in this process,
        its devices reached through :attr:`carrier` (set on the physical layers by the caller)."""
        loss = network.loss()
        return carry(InProcess(), network, probes, self.parts(probes)), loss

    def vjp(
        self,
        system: Any,
        params: dict[str, torch.Tensor],
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        cotangent: torch.Tensor,
        need_input_grad: bool = True,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Estimated ``(vᵀ ∂y/∂x, vᵀ ∂y/∂θ)`` of one device at ``(inputs, params)``, ``v = cotangent``."""
        theta = {n: p.detach() for n, p in params.items()}
        if not any(t.numel() for t in theta.values()) and not need_input_grad:
            return None, {}
        probes = self.ask(
            theta, inputs.detach(), bounds=system.parameter_bounds(inputs.dtype), input_bounds=system.input_range,
            system=system, input_grad=need_input_grad,
        )
        estimate = self.tell(probes, self.carry(system, probes), cotangent)
        return estimate.input_grad, estimate.grads

    def model_bounds(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Safe ranges of the model's device parameters, keyed like ``named_parameters()``."""
        return parameter_bounds(model)

    # ------------------------------------------------------------------ reproducibility
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "total_cost": self.total_cost.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.total_cost = Cost(**state["total_cost"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scope={self.scope!r})"


def flatten_with_bounds(
    theta: Mapping[str, torch.Tensor],
    bounds: Bounds | None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, tuple[int, ...]]]:
    """``theta`` as one flat vector with per-element ``low``/``high`` (±inf where unbounded) and the shapes."""
    shapes = {n: tuple(t.shape) for n, t in theta.items()}
    dtype = next(iter(theta.values())).dtype if theta else (dtype or torch.float32)
    flat = torch.cat([t.reshape(-1) for t in theta.values()]) if theta else torch.zeros(0, dtype=dtype)
    low, high = flat_bounds(shapes, bounds, flat.dtype)
    return flat, low, high, shapes


def flat_bounds(
    shapes: Mapping[str, tuple[int, ...]], bounds: Bounds | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element ``low``/``high`` of the flattened parameters named in ``shapes`` (±inf where unbounded)."""
    lows, highs = [], []
    for name, shape in shapes.items():
        size = math.prod(shape)
        if bounds and name in bounds:
            lo, hi = bounds[name]
            lows.append(torch.as_tensor(lo, dtype=dtype).expand(shape).reshape(-1))
            highs.append(torch.as_tensor(hi, dtype=dtype).expand(shape).reshape(-1))
        else:
            lows.append(torch.full((size,), -math.inf, dtype=dtype))
            highs.append(torch.full((size,), math.inf, dtype=dtype))
    if not lows:
        return torch.zeros(0, dtype=dtype), torch.zeros(0, dtype=dtype)
    return torch.cat(lows), torch.cat(highs)


def unflatten(rows: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Split ``[K, D]`` rows back into ``{name: [K, *shape]}`` (the inverse of the flattening above)."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        out[name] = rows[:, offset : offset + size].reshape(rows.shape[0], *shape)
        offset += size
    return out


def accumulate_grads(model: nn.Module | Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
    """Add ``grads`` to ``p.grad``, as ``loss.backward()`` would.

    ``model`` is a module (``grads`` keyed like ``named_parameters``) or a mapping name → parameter.
    """
    params = dict(model.named_parameters()) if isinstance(model, nn.Module) else dict(model)
    for name, g in grads.items():
        p = params[name]
        if not p.requires_grad:
            continue
        g = g.to(p.dtype).reshape(p.shape)
        p.grad = g.clone() if p.grad is None else p.grad + g


__all__ = [
    "ASK_OPTIONS", "Bounds", "Estimate", "check_ask_options", "GradientMethod", "LossFn", "NetworkLoss", "Probes", "SCOPES", "accumulate_grads",
    "flat_bounds", "flatten_with_bounds", "require_finite", "scaled_cost", "unflatten",
]
