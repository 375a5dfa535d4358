"""The method registry: every gradient method by name, with its options and its paper's device.

::

    make_method("pgt", num_pairs=16, scope="local")
    method_names()                    # ['pgt', 'spsa', 'es', 'fd', 'backprop', 'hge', 'eqprop', 'aeqprop']
    entry = method_entry("hge")
    entry.kind                        # "static" | "waveform" | "energy" | "oracle"
    entry.options                     # {option name: default} from the factory's signature
    entry.default_device, entry.default_dataset   # what `physgrad train --method hge` uses

(A thin version written for the command line; the contract's version replaces it with the same API.)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from .backprop import Backprop
from .base import GradientMethod
from .energy.aeqprop import Aeqprop
from .energy.eqprop import EqProp
from .hge.method import HGE
from .perturbation.finite_difference import FiniteDifference
from .perturbation.pgt import PGT


def spsa(num_pairs: int = 32, delta: float = 1e-3, *, dropout: float = 0.0, scope: str = "global",
         max_probes: int = 256, vectorize: bool = True, seed: int = 0) -> PGT:
    """SPSA (Spall 1992): PGT with Rademacher directions."""
    return PGT.spsa(num_pairs, delta, dropout=dropout, scope=scope, max_probes=max_probes, vectorize=vectorize, seed=seed)


def es(num_pairs: int = 32, delta: float = 1e-3, *, dropout: float = 0.0, scope: str = "global",
       max_probes: int = 256, vectorize: bool = True, seed: int = 0) -> PGT:
    """Evolution strategies (Salimans et al. 2017): PGT with Gaussian directions."""
    return PGT.es(num_pairs, delta, dropout=dropout, scope=scope, max_probes=max_probes, vectorize=vectorize, seed=seed)


@dataclass(frozen=True)
class MethodEntry:
    """One registered method."""

    name: str
    factory: Callable[..., GradientMethod]
    kind: str  # "static" | "waveform" | "energy" | "oracle"
    default_device: str
    default_dataset: str

    @property
    def options(self) -> dict[str, Any]:
        """Option name → default, read from the factory's signature."""
        sig = inspect.signature(self.factory)
        return {
            n: (None if p.default is inspect.Parameter.empty else p.default)
            for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


_ENTRIES = (
    MethodEntry("pgt", PGT, "static", "reservoir", "digits"),
    MethodEntry("spsa", spsa, "static", "reservoir", "digits"),
    MethodEntry("es", es, "static", "reservoir", "digits"),
    MethodEntry("fd", FiniteDifference, "static", "reservoir", "digits"),
    MethodEntry("backprop", Backprop, "oracle", "reservoir", "digits"),
    MethodEntry("hge", HGE, "waveform", "dnpu-time", "sphere"),
    MethodEntry("eqprop", EqProp, "energy", "hopfield", "digits"),
    MethodEntry("aeqprop", Aeqprop, "energy", "hopfield", "digits"),
)
REGISTRY: dict[str, MethodEntry] = {e.name: e for e in _ENTRIES}


def method_names() -> list[str]:
    return list(REGISTRY)


def method_entry(name: str) -> MethodEntry:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of {method_names()}")
    return REGISTRY[name]


def make_method(name: str, **options) -> GradientMethod:
    """A method by name with keyword options (unknown options are refused, naming them)."""
    entry = method_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ConfigError(f"method {name!r} has no option(s) {unknown}; its options are {sorted(entry.options)}")
    return entry.factory(**options)


__all__ = ["MethodEntry", "REGISTRY", "make_method", "method_entry", "method_names"]
