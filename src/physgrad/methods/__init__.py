"""Gradient methods: one module each, one ask → carrier → tell contract, one ``backward``.

The registry (:mod:`physgrad.methods.registry`) knows every method by name, with its options,
kind and default device; :func:`make_method` here is the first release's entry point, kept.
"""

from ..carriers import InProcess
from ..errors import ConfigError
from .backprop import Backprop
from .base import Estimate, GradientMethod, NetworkLoss, Probes
from .perturbation.finite_difference import FiniteDifference
from .perturbation.engine import PerturbationMethod, PerturbationProbes
from .perturbation.pgt import PGT
from .hge.method import HGE, FrequencyPlan, plan_frequencies
from .energy.aeqprop import Aeqprop
from .energy.eqprop import EnergyProbes, EqProp
from .registry import MethodEntry, method_entry, method_names
from . import registry

# The methods a first-release TrainConfig could name (the PGT family and the oracle); the registry
# holds all of them: method_names().
METHODS = ("pgt", "spsa", "es", "fd", "backprop")


def make_method(name: str, scope: str | None = None, **kwargs) -> GradientMethod:
    """A method by its registered name (see :func:`physgrad.methods.registry.make_method`).

    Kept from the first release: ``make_method(name, scope, **options)`` with ``scope`` positional;
    ``num_pairs`` is ignored by ``fd`` and ``backprop`` takes only ``seed`` (it is the global oracle)
    as before. Every other option is checked against the method's signature.
    """
    entry = method_entry(name)
    if name == "fd":
        kwargs.pop("num_pairs", None)
    if name == "backprop":
        kwargs = {k: v for k, v in kwargs.items() if k in ("seed", "carrier")}
    elif scope is not None:
        if "scope" in entry.options:
            kwargs["scope"] = scope
        elif scope != "global":
            raise ConfigError(f"method {name!r} has no scope option (it trains the whole device); drop scope={scope!r}")
    return registry.make_method(name, **kwargs)


__all__ = [
    "Aeqprop", "Backprop", "EnergyProbes", "EqProp", "Estimate", "FiniteDifference", "FrequencyPlan", "GradientMethod",
    "HGE", "InProcess", "METHODS", "MethodEntry", "NetworkLoss", "PGT", "PerturbationMethod", "PerturbationProbes",
    "Probes", "make_method", "method_entry", "method_names", "plan_frequencies",
]
