"""Physical layers and the papers' hybrid networks."""

from .physical_layer import (
    PhysicalLayer,
    clamp_to_safe_range_,
    gradient_path,
    keep_in_range,
    parameter_bounds,
    physical_layers,
    systems_of,
)
from .reservoir_net import ReservoirNet
from .energy_model import EnergyModel, energy_model_of
from .transformer import ReservoirTransformer

__all__ = [
    "PhysicalLayer",
    "ReservoirNet",
    "clamp_to_safe_range_",
    "gradient_path",
    "keep_in_range",
    "parameter_bounds",
    "physical_layers",
    "systems_of",
]
__all__ += ["EnergyModel", "energy_model_of"]
__all__ += ["ReservoirTransformer"]
