"""Which path each parameter's modulation travels in the global scope (issue 11, §1).

In the global scope every trainable parameter is modulated and the whole network plays one
waveform. A parameter *upstream* of a device reaches the output through the device's inputs and
so through its dynamics (transfer ``H_in(f)``); the device's own controls through ``H_j(f)``; a
parameter *downstream* of the device (a digital read-out) modulates the already-measured signal in
software and sees no transfer at all (``H = 1``). Dividing a downstream channel by the device's
``H`` is the wrong gradient issue 11 reports (0.77× at 1 kHz / 0.2 ms, sign-flipped at 150 Hz / 2 ms).

The paths are found without touching a device: the model runs once with every physical layer
replaced by a placeholder output (a leaf tensor), and autograd's graph says which parameters feed a
device's input (upstream) and which reach the model's output other than through a device
(downstream). A parameter on both paths (a skip connection around the device) cannot be read by one
tone with one transfer: it is refused, with the local scope as the way out.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...models.physical_layer import physical_layers


def parameter_routes(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, str], list[tuple[object, int]], tuple]:
    """``{name: "device" | "upstream" | "downstream" | "none"}`` for every trainable parameter of ``model``,
    the device calls one forward pass makes ``[(system, batch), ...]`` (for the cost) and the output's shape."""
    layers = [layer for _, layer in physical_layers(model)]
    device_params = {id(p) for layer in layers for p in layer.parameters()}
    captured: list[torch.Tensor] = []
    calls: list[tuple[object, int]] = []

    def placeholder(layer):
        def forward(inp: torch.Tensor) -> torch.Tensor:
            captured.append(inp)
            n = len(layer.system.input_shape)
            lead = inp.shape[: inp.dim() - n]
            calls.append((layer.system, int(torch.tensor(lead).prod()) if len(lead) else 1))
            return torch.ones(*lead, *layer.system.output_shape, dtype=inp.dtype, requires_grad=True)
        return forward

    buffers = {n: b.clone() for n, b in model.named_buffers()}
    for layer in layers:
        layer.forward = placeholder(layer)
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        for layer in layers:
            del layer.forward
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in buffers:
                    b.copy_(buffers[n])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    others = [(n, p) for n, p in named if id(p) not in device_params]

    def reached(outputs: list[torch.Tensor]) -> set[str]:
        outputs = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
        if not outputs or not others:
            return set()
        total = sum(o.sum() for o in outputs)
        grads = torch.autograd.grad(total, [p for _, p in others], allow_unused=True, retain_graph=True)
        return {n for (n, _), g in zip(others, grads) if g is not None}

    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    upstream, downstream = reached(captured), reached(outs)
    both = sorted(upstream & downstream)
    if both:
        raise ConfigError(
            f"hge (global scope): parameter(s) {both} reach the output both through a device and around it (a skip "
            "connection); one tone cannot carry two transfers. Use scope='local' for this model"
        )
    routes = {}
    for n, p in named:
        if id(p) in device_params:
            routes[n] = "device"
        elif n in upstream:
            routes[n] = "upstream"
        elif n in downstream:
            routes[n] = "downstream"
        else:
            routes[n] = "none"
    return routes, calls, tuple(outs[0].shape) if isinstance(outs[0], torch.Tensor) else ()
