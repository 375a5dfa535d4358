"""Carriers of probes: the only contact between a method and a device.

``carrier(system, probes) -> answers``; :class:`InProcess` (the default) calls
``probes.answer(system)``. A device server's client, a pool of workers or a lab instrument
plug in here without touching a method.
"""

from .base import Carrier, InProcess, carry
from .probes import Measurement, Probes, Simulation, split_points

__all__ = ["Carrier", "InProcess", "Measurement", "Probes", "Simulation", "carry", "split_points"]
