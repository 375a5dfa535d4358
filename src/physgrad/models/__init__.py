"""Physical layers and the papers' hybrid networks."""

from .physical_layer import (
    PhysicalLayer,
    clamp_to_safe_range_,
    gradient_path,
    parameter_bounds,
    physical_layers,
    systems_of,
)
from .reservoir_net import ReservoirNet

__all__ = [
    "PhysicalLayer",
    "ReservoirNet",
    "clamp_to_safe_range_",
    "gradient_path",
    "parameter_bounds",
    "physical_layers",
    "systems_of",
]
