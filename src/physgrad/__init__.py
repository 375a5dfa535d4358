"""physgrad: train physical systems by gradient descent using only set, drive and measure."""

from .cost import Cost
from .methods import PGT, Backprop, FiniteDifference, make_method
from .models import PhysicalLayer, ReservoirNet
from .systems import BlackBox, MeasurementNoise, ParameterSpec, PhysicalSystem, RandomReservoir

__version__ = "0.2.0"

__all__ = [
    "Backprop", "BlackBox", "Cost", "FiniteDifference", "MeasurementNoise", "PGT", "ParameterSpec",
    "PhysicalLayer", "PhysicalSystem", "RandomReservoir", "ReservoirNet", "make_method",
]
