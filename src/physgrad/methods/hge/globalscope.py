"""HGE's global scope: the whole network as one waveform, each channel on its own path (issue 11 §1).

:func:`model_probes` builds the probes of :meth:`HGE.ask_model` without touching a device: every
trainable parameter of the model is modulated, and each channel gets a *route* (:mod:`.routes`)
— its device channel, ``"inputs"`` (upstream of the device) or ``None`` (downstream: no transfer).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import ConfigError
from ...models.physical_layer import parameter_bounds, physical_layers, systems_of
from .probes import CalibratedProbes, ModelProbes
from .routes import parameter_routes


def model_probes(method, model: nn.Module, loss_fn, x: torch.Tensor, y) -> ModelProbes | CalibratedProbes:
    """Global-scope probes of ``method`` (an :class:`HGE`) for ``loss_fn(model(x), y)``. Pure."""
    s = method.settings
    devices = systems_of(model)
    for d in devices:
        check_time_domain(d)
    if not devices:
        raise ConfigError("HGE (global scope) needs a physical layer holding a time-domain device")
    if len({float(d.fs) for d in devices}) != 1:
        raise ConfigError("HGE (global scope) plays one waveform: all devices must share fs")
    if s.phase == "calibrated" and len(devices) > 1:
        raise ConfigError("phase calibration in the global scope supports one device; use scope='local'")
    device = devices[0]
    paths, calls, out_shape = parameter_routes(model, x)
    if s.loss_signal:
        check_loss_signal(loss_fn, y, out_shape)
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    offsets = control_offsets(device)
    own: dict[str, str] = {}
    for prefix, layer in physical_layers(model):
        for name in layer.names:
            key = f"params.{name.replace('.', '__')}"
            own[f"{prefix}.{key}" if prefix else key] = name
    routes: list = []
    for name, t in theta.items():
        path = paths[name]
        if s.phase == "none" or path in ("downstream", "none"):
            routes += [None] * t.numel()
        elif path == "upstream":
            routes += ["inputs"] * t.numel()
        else:
            start = offsets[own[name]]
            routes += [start + i for i in range(t.numel())]
    probes = method._waveform_probes(theta, parameter_bounds(model), device, None, None, False, tuple(routes))
    gp = ModelProbes(probes.params, model, x, y, loss_fn if s.loss_signal else None, probes.plan, probes.amplitudes,
                     probes.routes, device.identity, devices, probes.shapes, [(b, d.ramp_samples) for d, b in calls])
    if method.needs_calibration(device):
        layer = next(layer for _, layer in physical_layers(model) if layer.system is device)
        mine = {n: p.detach() for n, p in layer.device_parameters().items()}
        n_in = len(device.input_shape)
        at = x if tuple(x.shape[x.dim() - n_in:]) == device.input_shape and x.dim() == n_in + 1 else None
        return CalibratedProbes(method.calibration_probes(device, mine, at), gp)
    return gp


def check_time_domain(system) -> None:
    if system is None or not hasattr(system, "measure_waveform"):
        raise ConfigError(
            f"HGE needs a time-domain device (sampled waveforms in, a signal out), got {type(system).__name__}; "
            "wrap it with physgrad.systems.TimeDomainDevice"
        )


def control_offsets(system) -> dict[str, int]:
    offsets, at = {}, 0
    for name, spec in system.parameter_specs.items():
        offsets[name] = at
        at += spec.numel
    return offsets


def midpoint_inputs(system) -> torch.Tensor:
    bounds = system.input_bounds()
    if bounds is None:
        return torch.zeros(1, *system.input_shape)
    low, high = bounds
    return ((low + high) / 2).reshape(1, *system.input_shape)


def check_loss_signal(loss_fn, y, out_shape: tuple) -> None:
    """Refuse the in-materia loss signal where a lab could not form it (issue 11, §5).

    The B data points are played one after another, so the loss signal of sample ``n`` can only be
    formed in materia when the loss is a mean (or sum) of per-data-point losses: then each window's
    own loss signal is demodulated and the readings averaged, which equals demodulating the mean.
    A loss that couples data points (a batch mean, a normalisation, a softmax over the batch) needs
    all windows at once: not physically realisable, so it is refused (use the digital chain rule,
    ``loss_signal=False``). Checked on random outputs of the model's shape (no device is touched);
    a loss without targets (``y=None``) is checked the same way.
    """
    batch = out_shape[0] if out_shape else 1
    if batch <= 1:
        return
    fake = torch.randn(out_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = float(loss_fn(fake, y))
        parts = torch.tensor([float(loss_fn(fake[b : b + 1], None if y is None else y[b : b + 1])) for b in range(batch)],
                             dtype=torch.float64)
    if not (math.isclose(whole, float(parts.mean()), rel_tol=1e-4, abs_tol=1e-9)
            or math.isclose(whole, float(parts.sum()), rel_tol=1e-4, abs_tol=1e-9)):
        raise ConfigError(
            "hge: loss_signal=True needs a loss that is a mean or sum of per-data-point losses: the data points are "
            "played one after another, so a loss that couples them (a batch mean, a normalisation) cannot be formed "
            "in materia. Use loss_signal=False (the digital chain rule) or a per-sample loss"
        )
