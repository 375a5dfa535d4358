"""Devices: the contract every method talks to, the simulated devices, wrappers, remote access.

Four kinds of module live here, each in its own place:

``base``, ``noise``
    the contract itself: :class:`PhysicalSystem`, :class:`ParameterSpec` and the one command
    check, measurement noise.
``devices/``
    simulated devices (reservoir, black box, ESN, magnonic ring, DNPU, energy-based networks).
``wrappers/``
    a device around a device: time domain, fault injection, resilience, command audit.
``remote/``
    the device server, its wire protocol and the client (ZeroMQ; imported only when used, so
    ``import physgrad`` never loads ``zmq``).
"""

from .base import ParameterSpec, PhysicalSystem, RangeGuard
from .noise import MeasurementNoise
from .devices.blackbox import BlackBox
from .devices.reservoir import RandomReservoir
from .devices.dnpu import DNPU, load_dnpu, time_domain_dnpu
from .devices.energy.base import EnergyDevice, RelaxationReport
from .devices.energy.hopfield import HopfieldNetwork
from .devices.energy.resistive import ResistiveNetwork
from .devices.ring import AutoOscillationRing
from .devices.esn import EchoStateNetwork
from .wrappers.timedomain import TimeDomainDevice, TimeDomainNoise
from .wrappers.base import CommandAudit, SystemWrapper
from .wrappers.faults import DeviceDisconnectedError, DeviceTimeoutError, FaultInjector
from .wrappers.resilient import Resilient

_REMOTE = {"RemoteSystem": "client", "DeviceServer": "server"}


def __getattr__(name: str):
    """``RemoteSystem`` and ``DeviceServer`` are imported on first use (they need pyzmq)."""
    if name in _REMOTE:
        import importlib

        return getattr(importlib.import_module(f".remote.{_REMOTE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ParameterSpec", "PhysicalSystem", "RangeGuard", "BlackBox", "MeasurementNoise", "RandomReservoir"]
__all__ += ["EnergyDevice", "HopfieldNetwork", "RelaxationReport", "ResistiveNetwork"]
__all__ += ["DNPU", "TimeDomainDevice", "TimeDomainNoise", "load_dnpu", "time_domain_dnpu"]
__all__ += ["AutoOscillationRing", "EchoStateNetwork"]
__all__ += ["CommandAudit", "DeviceDisconnectedError", "DeviceServer", "DeviceTimeoutError", "FaultInjector", "RemoteSystem",
            "Resilient", "SystemWrapper"]
