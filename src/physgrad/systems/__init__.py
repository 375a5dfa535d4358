"""Devices: the interface every method talks to, and the simulated devices."""

from .base import ParameterSpec, PhysicalSystem, RangeGuard
from .blackbox import BlackBox
from .noise import MeasurementNoise
from .reservoir import RandomReservoir

__all__ = ["ParameterSpec", "PhysicalSystem", "RangeGuard", "BlackBox", "MeasurementNoise", "RandomReservoir"]
