"""Any ``torch.nn.Module`` as a black-box device.

The module's parameters become the device's controllable parameters (each with a safe range,
unbounded unless given); its own copy is frozen and hidden, so nothing outside sees a gradient.
Probes are evaluated with ``torch.func.vmap`` over ``functional_call``: all ``K`` settings in one
batched call.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch.func import functional_call, vmap

from ..base import ParameterSpec, PhysicalSystem


class BlackBox(PhysicalSystem):
    """Wrap ``module`` (mapping ``[B, *input_shape] -> [B, *output_shape]``) as a device.

    ``ranges`` maps a parameter name (as in ``module.named_parameters()``) to ``(low, high)``.
    ``differentiable=True`` lets the backpropagation oracle train through it.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        input_shape: Sequence[int],
        *,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        differentiable: bool = True,
        **kwargs,
    ) -> None:
        self._module = copy.deepcopy(module).requires_grad_(False)
        ranges = dict(ranges or {})
        names = dict(self._module.named_parameters())
        unknown = set(ranges) - set(names)
        if unknown:
            raise ValueError(f"ranges name unknown parameter(s) {sorted(unknown)}; the module has {list(names)}")
        specs = []
        for name, p in names.items():
            low, high = ranges.get(name, (-float("inf"), float("inf")))
            specs.append(ParameterSpec(name, tuple(p.shape), low, high, default=p.detach().clone()))
        with torch.no_grad():
            out = self._module(torch.zeros(1, *input_shape))
        super().__init__(input_shape, tuple(out.shape[1:]), specs, **kwargs)
        self.differentiable = differentiable

    def response(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        def one(p, x):
            return functional_call(self._module, p, (x,))

        return vmap(one, randomness="same")(params, inputs)
