"""Devices: the interface every method talks to, and the simulated devices."""

from .base import ParameterSpec, PhysicalSystem, RangeGuard
from .blackbox import BlackBox
from .noise import MeasurementNoise
from .reservoir import RandomReservoir
from .dnpu import DNPU, load_dnpu, time_domain_dnpu
from .timedomain import TimeDomainDevice, TimeDomainNoise
from .energy import EnergyDevice, RelaxationReport
from .hopfield import HopfieldNetwork
from .resistive import ResistiveNetwork
from .ring import AutoOscillationRing
from .esn import EchoStateNetwork
from .wrapper import CommandAudit, SystemWrapper
from .faults import DeviceDisconnectedError, DeviceTimeoutError, FaultInjector
from .resilient import Resilient
from .remote import RemoteSystem
from .server import DeviceServer

__all__ = ["ParameterSpec", "PhysicalSystem", "RangeGuard", "BlackBox", "MeasurementNoise", "RandomReservoir"]
__all__ += ["EnergyDevice", "HopfieldNetwork", "RelaxationReport", "ResistiveNetwork"]
__all__ += ["DNPU", "TimeDomainDevice", "TimeDomainNoise", "load_dnpu", "time_domain_dnpu"]
__all__ += ["AutoOscillationRing", "EchoStateNetwork"]
__all__ += ["CommandAudit", "DeviceDisconnectedError", "DeviceServer", "DeviceTimeoutError", "FaultInjector", "RemoteSystem",
            "Resilient", "SystemWrapper"]
