"""The one device registry: a device by name, or a user's own class, from a string.

::

    make_device("reservoir", input_size=32, size=256, seed=1)     # a built-in simulated device
    make_device("my_lab.rig:Rig", port="/dev/ttyUSB0")            # module:Class (or module:factory)
    device_names()                                                # the built-in names

``spec`` is a built-in name (see :data:`BUILTINS` / ``physgrad devices``) or ``module:attr``,
where ``module`` is importable (the current directory is on the path) and ``attr`` is a
:class:`~physgrad.systems.base.PhysicalSystem` subclass or a function returning one; ``kwargs``
(e.g. parsed from ``--device-args '{json}'``) are passed to it. A ``noise`` keyword given as a
number or a JSON object becomes a :class:`~physgrad.systems.noise.MeasurementNoise`.

The configs, the command line and the device server all build devices here, so there is one
list of names, not one per entry point.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ConfigError
from .base import PhysicalSystem
from .noise import MeasurementNoise


def _noise(value: Any) -> MeasurementNoise | None:
    """``noise`` as JSON allows it: a number (additive std), an object of MeasurementNoise fields, or one."""
    if value is None or isinstance(value, MeasurementNoise):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return MeasurementNoise(additive=float(value))
    if isinstance(value, dict):
        try:
            return MeasurementNoise(**value)
        except TypeError as e:
            raise ConfigError(f"device argument 'noise': {e}; fields are additive, multiplicative, quantization") from e
    raise ConfigError(f"device argument 'noise' must be a number or an object, got {value!r}")


# ---------------------------------------------------------------------------------------- built-ins
def reservoir(input_size: int = 32, size: int = 256, *, scaling: str = "fan_in", scale: float = 1.0,
              noise: Any = None, seed: int = 0) -> PhysicalSystem:
    """Random reservoir ``tanh(W x + b)`` with controllable gains/biases (the demo's 32 → 256)."""
    from .devices.reservoir import RandomReservoir

    return RandomReservoir(input_size, size, scaling=scaling, scale=scale, noise=_noise(noise), seed=seed)


def ring(input_size: int = 16, nodes: int = 64, *, mode: str = "static", noise: Any = None, seed: int = 0,
         **options) -> PhysicalSystem:
    """The PGT paper's magnonic auto-oscillation ring (static mode: one input vector per round trip)."""
    from .devices.ring import AutoOscillationRing

    return AutoOscillationRing(input_size, nodes, mode=mode, noise=_noise(noise), seed=seed, **options)


def esn(input_size: int = 1, size: int = 50, *, seq_len: int = 8, noise: Any = None, seed: int = 0,
        **options) -> PhysicalSystem:
    """Echo-state network reservoir read out after ``seq_len`` steps."""
    from .devices.esn import EchoStateNetwork

    return EchoStateNetwork(input_size, size, seq_len=seq_len, noise=_noise(noise), seed=seed, **options)


def dnpu(path: str | None = None, *, input_electrodes: list[int] | None = None, noise: Any = None,
         **options) -> PhysicalSystem:
    """A dopant-network processing unit, static (``path``: a surrogate file; default: the synthetic one)."""
    from .devices.dnpu import load_dnpu

    if noise is not None:
        options["noise"] = _noise(noise)
    if input_electrodes is not None:
        options["input_electrodes"] = tuple(int(e) for e in input_electrodes)
    return load_dnpu(path, **options)


def dnpu_time(path: str | None = None, *, input_electrodes: list[int] | None = None, seed: int = 0,
              **options) -> PhysicalSystem:
    """A DNPU in the time domain with the homodyne-gradient paper's settings (what HGE trains)."""
    from .devices.dnpu import time_domain_dnpu

    if input_electrodes is not None:
        options["input_electrodes"] = tuple(int(e) for e in input_electrodes)
    return time_domain_dnpu(path, seed=seed, **options)


def hopfield(sizes: list[int] | None = None, *, gains: list[float] | None = None, seed: int = 0,
             **options) -> PhysicalSystem:
    """Layered Hopfield network (energy-based; what EqProp and Aeqprop train). Default sizes 64-64-10."""
    from .devices.energy.hopfield import HopfieldNetwork

    sizes = [64, 64, 10] if sizes is None else list(sizes)
    if gains is None:
        gains = [0.8] * (len(sizes) - 2) + [1.2]  # the Aeqprop reference code's gains
    return HopfieldNetwork(sizes, gains=gains, seed=seed, **options)


def resistive(num_inputs: int = 64, layers: list[int] | None = None, *, seed: int = 0, **options) -> PhysicalSystem:
    """Deep resistive network (energy-based). Default layers 32-10."""
    from .devices.energy.resistive import ResistiveNetwork

    return ResistiveNetwork(num_inputs, [32, 10] if layers is None else list(layers), seed=seed, **options)


def blackbox(input_size: int = 7, hidden: int = 32, outputs: int = 1, *, bound: float = 2.0,
             differentiable: bool = False, noise: Any = None, seed: int = 0) -> PhysicalSystem:
    """A small tanh MLP wrapped as a black box (weights are the controls, within ``±bound``)."""
    from .devices.blackbox import BlackBox

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(input_size, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, outputs))
    return BlackBox(net, (input_size,), ranges={n: (-bound, bound) for n, _ in net.named_parameters()},
                    differentiable=differentiable, noise=_noise(noise), seed=seed)


@dataclass(frozen=True)
class DeviceEntry:
    """A built-in device: its factory and the kind of method it serves."""

    name: str
    factory: Callable[..., PhysicalSystem]
    kind: str  # "static" | "waveform" | "energy"

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.factory) or "").splitlines()[0]


BUILTINS: dict[str, DeviceEntry] = {
    e.name: e
    for e in (
        DeviceEntry("reservoir", reservoir, "static"),
        DeviceEntry("ring", ring, "static"),
        DeviceEntry("esn", esn, "static"),
        DeviceEntry("dnpu", dnpu, "static"),
        DeviceEntry("dnpu-time", dnpu_time, "waveform"),
        DeviceEntry("hopfield", hopfield, "energy"),
        DeviceEntry("resistive", resistive, "energy"),
        DeviceEntry("blackbox", blackbox, "static"),
    )
}
ALIASES = {"random": "reservoir", "mlp": "blackbox", "dnpu_time": "dnpu-time"}


def device_names() -> list[str]:
    """The built-in device names (``module:Class`` is accepted besides these)."""
    return list(BUILTINS)


def device_entry(name: str) -> DeviceEntry:
    name = ALIASES.get(name, name)
    if name not in BUILTINS:
        raise ConfigError(f"unknown device {name!r}; choose one of {device_names()} or give module:Class")
    return BUILTINS[name]


def is_builtin(spec: str) -> bool:
    return ALIASES.get(spec, spec) in BUILTINS


def resolve(spec: str) -> Callable[..., Any]:
    """The callable a spec names: a built-in factory, or ``module:attr`` imported (cwd on the path)."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"a device is a built-in name or module:Class, got {spec!r}")
    if ":" not in spec or spec.startswith("tcp:"):
        if spec.startswith("tcp:"):
            raise ConfigError(f"{spec!r} is a device server address; use RemoteSystem (physgrad train --device tcp://...)")
        return device_entry(spec).factory
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"device {spec!r}: expected module:Class, e.g. my_lab.rig:Rig")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"device {spec!r}: cannot import module {module_name!r} ({e}); is it on the path "
                          f"(the current directory {cwd} is)?") from e
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"device {spec!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"device {spec!r}: {attr!r} is not a class or a function")
    return target


def make_device(spec: str, **kwargs) -> PhysicalSystem:
    """A device from a built-in name or ``module:Class``/``module:factory`` with keyword arguments."""
    factory = resolve(spec)
    check_arguments(spec, factory, kwargs)
    try:
        device = factory(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"device {spec!r} with arguments {kwargs}: {e}") from e
    if not isinstance(device, PhysicalSystem):
        raise ConfigError(f"device {spec!r} built a {type(device).__name__}, not a physgrad PhysicalSystem "
                          "(subclass physgrad.systems.PhysicalSystem; see docs/devices/write_a_device.md)")
    return device


def check_arguments(spec: str, factory: Callable, kwargs: dict) -> None:
    """Refuse keyword arguments the factory does not take, naming them and listing those it does."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ConfigError(f"device {spec!r} takes no argument(s) {unknown}; it takes {names}")


def json_object(text: str) -> dict:
    """``--device-args``/``--method-options`` text as a dict (an argparse ``type``: bad JSON is a usage error)."""
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"size\": 64}}', got {text!r}")
    return value


def accepts(spec: str, name: str) -> bool:
    """Whether the device factory of ``spec`` takes the keyword ``name`` (explicitly or via ``**kwargs``)."""
    return _accepts(resolve(spec), name)


def _accepts(factory: Callable, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


__all__ = ["BUILTINS", "DeviceEntry", "accepts", "json_object", "device_entry", "device_names", "is_builtin", "make_device", "resolve"]
