"""A device inside a ``torch.nn.Module``.

:class:`PhysicalLayer` holds the device's control parameters as ``torch.nn.Parameter`` s, so a
model mixing digital and physical layers is ordinary PyTorch and any ``torch.optim`` optimizer
updates both. What its forward pass does depends on the *gradient path* a method sets
(:func:`gradient_path`):

``"measure"`` (default)
    the output is a measurement; autograd cannot pass through it. Under ``torch.func.vmap`` (the
    global scope of forward-only methods) all probes reach the device in *one* ``measure`` call.
``"estimate"``
    the forward pass is a measurement and the backward pass asks an estimator for the
    vector–Jacobian product (node perturbation through the black box: the ``local`` scope; the
    pattern of physics-aware training, Wright et al. 2022, and BOND, arXiv 2510.25074).
``"simulate"``
    the differentiable simulator is used: the backpropagation oracle.

Inputs may carry extra leading dimensions (``[..., *input_shape]``, e.g. tokens of a sequence);
they are folded into the batch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Protocol

import torch
from torch import nn

from ..carriers import InProcess, Measurement, Simulation
from ..errors import ShapeError
from ..systems.base import PhysicalSystem

MODES = ("measure", "estimate", "simulate")


class VJPEstimator(Protocol):
    """What a local-scope method offers a physical layer's backward pass."""

    def vjp(
        self,
        system: PhysicalSystem,
        params: dict[str, torch.Tensor],
        inputs: torch.Tensor,
        outputs: torch.Tensor,
        cotangent: torch.Tensor,
        need_input_grad: bool,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]: ...


_IN_PROCESS = InProcess()


def _key(name: str) -> str:
    return name.replace(".", "__")


class PhysicalLayer(nn.Module):
    """A :class:`~physgrad.systems.PhysicalSystem` as a layer; its parameters are trainable."""

    def __init__(self, system: PhysicalSystem, trainable: bool = True) -> None:
        super().__init__()
        self.system = system
        self.names = list(system.parameter_specs)
        self.params = nn.ParameterDict(
            {_key(n): nn.Parameter(v, requires_grad=trainable) for n, v in system.initial_parameters().items()}
        )
        self.mode = "measure"
        self.estimator: VJPEstimator | None = None
        self.carrier = None  # what carries this layer's measurements (None: in process); set by gradient_path

    def device_parameters(self) -> dict[str, torch.Tensor]:
        return {n: self.params[_key(n)] for n in self.names}

    def bounds(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Safe range of each ``nn.Parameter`` of this layer, keyed like ``named_parameters()``."""
        return {f"params.{_key(n)}": b for n, b in self.system.parameter_bounds().items()}

    @torch.no_grad()
    def clamp_(self) -> None:
        """Move every control parameter into its safe range (after an optimizer step)."""
        for n, (low, high) in self.system.parameter_bounds().items():
            p = self.params[_key(n)]
            p.copy_(torch.maximum(torch.minimum(p, high.to(p.dtype)), low.to(p.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.system.input_shape
        n = len(shape)
        if tuple(x.shape[x.dim() - n:]) != shape or x.dim() < n + 1:
            raise ShapeError(f"{type(self.system).__name__} layer expects [..., *{shape}], got {tuple(x.shape)}")
        lead = x.shape[: x.dim() - n]
        flat = x.reshape(math.prod(lead), *shape)
        params = [self.params[_key(name)] for name in self.names]
        if self.mode == "simulate":
            out = self.carry(Simulation({n: p.unsqueeze(0) for n, p in zip(self.names, params)}, flat))[0]
        else:
            out = _DeviceCall.apply(self, flat, *params)
        return out.reshape(*lead, *self.system.output_shape)

    def carry(self, probes):
        """This layer's one contact with its device: ``probes`` through the layer's carrier."""
        return (self.carrier or _IN_PROCESS)(self.system, probes)

    def extra_repr(self) -> str:
        return f"{type(self.system).__name__}, mode={self.mode}"


class _DeviceCall(torch.autograd.Function):
    """One measurement; backward through an estimator; vmap batches probes into one call."""

    @staticmethod
    def forward(layer: PhysicalLayer, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return layer.carry(Measurement({n: p.unsqueeze(0) for n, p in zip(layer.names, params)}, x))[0]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        layer, x, *params = inputs
        ctx.layer = layer
        ctx.save_for_backward(x, output, *params)

    @staticmethod
    def backward(ctx, cotangent: torch.Tensor):
        layer: PhysicalLayer = ctx.layer
        if layer.mode != "estimate" or layer.estimator is None:
            raise RuntimeError(
                f"no gradient path through the {type(layer.system).__name__} device: a physical system exposes no "
                "gradients. Train with a physgrad method (method.backward(model, loss_fn, x, y)) instead of "
                "loss.backward()."
            )
        x, output, *params = ctx.saved_tensors
        grad_x, grads = layer.estimator.vjp(
            layer.system,
            dict(zip(layer.names, params)),
            x,
            output,
            cotangent,
            need_input_grad=ctx.needs_input_grad[1],
        )
        return (None, grad_x, *(grads.get(n) for n in layer.names))

    @staticmethod
    def vmap(info, in_dims, layer: PhysicalLayer, x: torch.Tensor, *params: torch.Tensor):
        k = info.batch_size

        def batched(t: torch.Tensor, dim: int | None) -> torch.Tensor:
            return t.expand(k, *t.shape) if dim is None else t.movedim(dim, 0)

        x = batched(x, in_dims[1])
        settings = {n: batched(p, d) for n, p, d in zip(layer.names, params, in_dims[2:])}
        return layer.carry(Measurement(settings, x, shared_inputs=False)), 0


def physical_layers(model: nn.Module) -> Iterator[tuple[str, PhysicalLayer]]:
    """``(prefix, layer)`` for every physical layer inside ``model``."""
    for prefix, module in model.named_modules():
        if isinstance(module, PhysicalLayer):
            yield prefix, module


def parameter_bounds(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Safe ranges of the model's device parameters, keyed like ``model.named_parameters()``."""
    out = {}
    for prefix, layer in physical_layers(model):
        for name, b in layer.bounds().items():
            out[f"{prefix}.{name}" if prefix else name] = b
    return out


def clamp_to_safe_range_(model: nn.Module) -> None:
    """Clamp every device parameter of ``model`` into its safe range, in place."""
    for _, layer in physical_layers(model):
        layer.clamp_()


def keep_in_range(optimizer: torch.optim.Optimizer, model: nn.Module):
    """After every ``optimizer.step()``, project ``model`` 's device parameters into their safe ranges.

    ::

        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        keep_in_range(optimizer, model)      # once; every step is then followed by the projection

    A registered ``torch.optim`` step post-hook (``register_step_post_hook``); returns its handle
    (``handle.remove()`` undoes it). ``method.backward`` also projects before it measures, so a
    forgotten call never lets the model and the device disagree during training.
    """
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: clamp_to_safe_range_(model))


def systems_of(model: nn.Module) -> list[PhysicalSystem]:
    return [layer.system for _, layer in physical_layers(model)]


@contextlib.contextmanager
def gradient_path(model: nn.Module, mode: str, estimator: VJPEstimator | None = None, carrier=None):
    """Set how every physical layer of ``model`` passes gradients (and, with ``carrier``, what carries
    its measurements), restoring both afterwards."""
    if mode not in MODES:
        raise ValueError(f"gradient path must be one of {MODES}, got {mode!r}")
    layers = [layer for _, layer in physical_layers(model)]
    saved = [(layer.mode, layer.estimator, layer.carrier) for layer in layers]
    try:
        for layer in layers:
            layer.mode, layer.estimator = mode, estimator
            if carrier is not None:
                layer.carrier = carrier
        yield model
    finally:
        for layer, (m, e, c) in zip(layers, saved):
            layer.mode, layer.estimator, layer.carrier = m, e, c
