"""An energy-based device as a ``torch.nn.Module`` (what EqProp and Aeqprop train).

:class:`EnergyModel` is a :class:`~physgrad.models.physical_layer.PhysicalLayer` around an
:class:`~physgrad.systems.devices.energy.base.EnergyDevice`: its parameters are ``nn.Parameter`` s (so any
``torch.optim`` optimizer updates them), ``model(x)`` is the free equilibrium's output (one
relaxation, measured), and under the backpropagation oracle the output carries exact gradients
(implicit differentiation of the equilibrium)::

    model = EnergyModel(HopfieldNetwork([784, 512, 10]))
    method = Aeqprop(beta=0.2, variant="centered")
    loss = method.backward(model, model.loss, x, y)
    optimizer.step()
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..systems.devices.energy.base import EnergyDevice
from .physical_layer import PhysicalLayer, physical_layers


class EnergyModel(PhysicalLayer):
    """An energy-based device whose parameters are trainable ``nn.Parameter`` s."""

    def __init__(self, device: EnergyDevice, trainable: bool = True) -> None:
        if not isinstance(device, EnergyDevice):
            raise ConfigError(f"EnergyModel needs an EnergyDevice, got {type(device).__name__}")
        super().__init__(device, trainable)

    @property
    def device(self) -> EnergyDevice:
        return self.system  # type: ignore[return-value]

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The device's nudging cost ``½‖output − y‖²`` (batch mean): the loss EqProp descends."""
        return self.device.nudging_cost(output, y)

    def parameter_dict(self) -> dict[str, nn.Parameter]:
        """Device parameter name → its ``nn.Parameter``."""
        return dict(self.device_parameters())


def energy_model_of(model: nn.Module) -> EnergyModel:
    """The energy layer that ``model`` is, or raise :class:`ConfigError` explaining why not.

    EqProp and Aeqprop nudge the device's own outputs, so the model must be the energy device
    itself (an :class:`EnergyModel`), with no digital layers around it.
    """
    if isinstance(model, EnergyModel):
        return model
    layers = [layer for _, layer in physical_layers(model)]
    if len(layers) == 1 and isinstance(layers[0], EnergyModel):
        own = {id(p) for p in layers[0].parameters()}
        others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in own]
        if not others:
            return layers[0]
        raise ConfigError(f"EqProp/Aeqprop train an energy device alone; the model also has digital parameters {others[:3]}")
    raise ConfigError(
        f"EqProp/Aeqprop need a model that is an EnergyModel (an energy-based device); got {type(model).__name__}"
    )
