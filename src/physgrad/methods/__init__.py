"""Gradient methods: one module each, one ask/tell interface, one ``backward``."""

from ..errors import ConfigError
from .backprop import Backprop
from .base import Estimate, GradientMethod, Probes
from .perturbation.finite_difference import FiniteDifference
from .perturbation.engine import PerturbationMethod
from .perturbation.pgt import PGT
from .hge.method import HGE, FrequencyPlan, plan_frequencies
from .energy.aeqprop import Aeqprop
from .energy.eqprop import EqProp

METHODS = ("pgt", "spsa", "es", "fd", "backprop")


def make_method(name: str, scope: str = "global", **kwargs) -> GradientMethod:
    """A method by its command-line name: ``pgt``, ``spsa``, ``es``, ``fd`` or ``backprop``."""
    if name == "pgt":
        return PGT(scope=scope, **kwargs)
    if name == "spsa":
        return PGT.spsa(scope=scope, **kwargs)
    if name == "es":
        return PGT.es(scope=scope, **kwargs)
    if name == "fd":
        kwargs.pop("num_pairs", None)
        return FiniteDifference(scope=scope, **kwargs)
    if name == "backprop":
        return Backprop(seed=kwargs.get("seed", 0))
    raise ConfigError(f"unknown method {name!r}; choose one of {METHODS}")


__all__ = [
    "Backprop", "Estimate", "FiniteDifference", "GradientMethod", "METHODS", "PGT", "PerturbationMethod", "Probes",
    "make_method",
]
__all__ += ["Aeqprop", "EqProp"]
__all__ += ["HGE", "FrequencyPlan", "plan_frequencies"]
