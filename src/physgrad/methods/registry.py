"""The one method registry: every gradient method by name, with its options, kind and defaults.

::

    from physgrad.methods.registry import make_method, method_names, method_entry

    method_names()                      # ['pgt', 'spsa', 'es', 'fd', 'backprop', 'hge', 'eqprop', 'aeqprop', 'pat', ...]
    entry = method_entry("hge")
    entry.kind                          # 'waveform' (static | waveform | energy | oracle)
    entry.options                       # {'window_s': 0.1, 'frequencies': None, ...} from the factory's signature
    entry.default_device, entry.default_dataset   # what `physgrad train --method hge` uses with no other flag
    make_method("pgt", num_pairs=8, delta=1e-2, scope="local")

``kind`` says what a device must offer: ``static`` (``measure``), ``waveform`` (a time-domain
device, ``measure_waveform``), ``energy`` (relaxation phases of an energy-based device) or
``oracle`` (a differentiable simulator). ``default_dataset`` is a dataset name or a task the
paper's device takes (HGE: ``sphere``, the DNPU's small classification task). ``defaults`` are the option values the command line uses
when nothing else is given (small and quick; not the papers' full settings); the PGT family's ``K`` and δ
are left to the methods, whose ``None`` means the scope's row of :mod:`physgrad.methods.defaults`. A later method
registers itself with :func:`register_method`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError
from .backprop import Backprop
from .base import GradientMethod
from .energy.aeqprop import Aeqprop
from .energy.eqprop import EqProp
from .hge.method import HGE
from .perturbation.finite_difference import FiniteDifference
from .perturbation.pgt import PGT
from .twin import pat, twin_cv, twin_guided

KINDS = ("static", "waveform", "energy", "oracle")


@dataclass(frozen=True)
class MethodEntry:
    """One registered method: how to make it and what it runs on."""

    name: str
    factory: Callable[..., GradientMethod]
    kind: str
    default_device: str
    default_dataset: str
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def options(self) -> dict[str, Any]:
        """Option name → default, read from the factory's signature (``None`` where an option has no default)."""
        options = {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in inspect.signature(self.factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        # a factory taking **options names them in ``extra_options()`` (e.g. HGE's settings record)
        extra = getattr(self.factory, "extra_options", None)
        return options | (extra() if callable(extra) else {})

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse option names the factory does not take, naming the ones it does."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no option(s) {unknown}; its options are {sorted(self.options)}"
            )


def _pgt_setting(distribution: str, name: str, summary: str) -> Callable[..., PGT]:
    """A factory for a PGT setting (SPSA, ES): PGT's options less ``r`` and ``distribution``."""

    def factory(num_pairs: int | None = None, delta: float | None = None, *, dropout: float = 0.0, scope: str = "global",
                max_probes: int = 256, vectorize: bool = True, seed: int = 0, carrier=None) -> PGT:
        method = PGT(num_pairs, delta, dropout=dropout, distribution=distribution, scope=scope, max_probes=max_probes,
                     vectorize=vectorize, seed=seed, carrier=carrier)
        method.name = name
        return method

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = summary
    return factory


_spsa = _pgt_setting("rademacher", "spsa", "SPSA (Spall 1992): PGT with Rademacher ±1 directions.")
_es = _pgt_setting("gaussian", "es", "Antithetic Gaussian evolution strategies (Salimans et al. 2017): PGT with N(0, 1) directions.")


REGISTRY: dict[str, MethodEntry] = {}


def register_method(entry: MethodEntry) -> None:
    """Add (or replace) a method in the registry."""
    if entry.kind not in KINDS:
        raise ConfigError(f"method {entry.name!r}: kind must be one of {KINDS}, got {entry.kind!r}")
    entry.check_options(entry.defaults)
    REGISTRY[entry.name] = entry


_HYBRID = "reservoir"  # the reservoir hybrid network (digital -> reservoir device -> read-out)
for _entry in (
    MethodEntry("pgt", PGT, "static", _HYBRID, "digits", {"scope": "local"},
                "Perturbative Gradient Training (Abbott, Elo, Bozhko 2025)"),
    MethodEntry("spsa", _spsa, "static", _HYBRID, "digits", {"scope": "local"},
                "simultaneous-perturbation stochastic approximation (PGT setting)"),
    MethodEntry("es", _es, "static", _HYBRID, "digits", {"scope": "local"},
                "antithetic evolution strategies (PGT setting)"),
    MethodEntry("fd", FiniteDifference, "static", _HYBRID, "digits", {"scope": "local"},
                "central finite differences (baseline)"),
    MethodEntry("backprop", Backprop, "oracle", _HYBRID, "digits", {},
                "backpropagation through the differentiable simulator (the oracle)"),
    MethodEntry("hge", HGE, "waveform", "dnpu-time", "sphere", {},
                "homodyne gradient extraction on a time-domain device (Boon et al. 2021/2025)"),
    MethodEntry("eqprop", EqProp, "energy", "hopfield", "digits", {},
                "equilibrium propagation (Scellier & Bengio 2017)"),
    MethodEntry("aeqprop", Aeqprop, "energy", "hopfield", "digits", {},
                "agnostic equilibrium propagation (Scellier et al. 2022)"),
    MethodEntry("pat", pat, "static", _HYBRID, "digits", {},
                "physics-aware training with a twin learned from measurements (Wright et al. 2022; biased)"),
    MethodEntry("twin_cv", twin_cv, "static", _HYBRID, "digits", {},
                "PGT-local with the learned twin as control variate (unbiased)"),
    MethodEntry("twin_guided", twin_guided, "static", _HYBRID, "digits", {},
                "guided ES along the learned twin's gradient (Maheswaranathan et al. 2019; unbiased)"),
):
    register_method(_entry)
del _entry


def method_names() -> list[str]:
    """The registered method names, in registration order."""
    return list(REGISTRY)


def method_entry(name: str) -> MethodEntry:
    """The registry entry of ``name`` (:class:`ConfigError` naming the choices when unknown)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {list(REGISTRY)}") from None


def make_method(name: str, **options: Any) -> GradientMethod:
    """A method by its registered name with ``options`` (checked against the factory's signature)."""
    entry = method_entry(name)
    entry.check_options(options)
    return entry.factory(**options)


# ---------------------------------------------------------------- the black-box baselines (issue 13)
# Search, not gradients: each step is the library's own ask/tell update (``owns_update``), one query per
# candidate. Their default task is the small ``sphere`` task (3 features, 2 classes) on the reservoir
# hybrid: a search's cost grows with the dimension (CMA-ES keeps a D × D covariance), and digits' network
# (D ≈ 4 700) costs seconds per generation. cma/nevergrad are imported when a search starts (the
# ``baselines`` extra), not here.
def _cma(*, sigma0: float = 0.1, popsize: int | None = None, seed: int = 0, options: dict | None = None):
    """CMA-ES (pycma; Hansen & Ostermeier 2001): population 4 + ⌊3 ln D⌋ by default, bounds by its BoundTransform."""
    from .baselines import CMAES

    return CMAES(sigma0=sigma0, popsize=popsize, seed=seed, options=options)


def _nevergrad(optimizer: str = "OnePlusOne", *, budget: int = 100_000, sigma0: float = 0.1,
               popsize: int | None = None, seed: int = 0):
    """A nevergrad optimiser by name (Rapin & Teytaud 2018). Default ``OnePlusOne``, the (1+1)-ES with the
    one-fifth rule: what docs/results/queries.md compares, at a constant Python cost per query (nevergrad's
    selector ``NGOpt`` picks, at these sizes, a meta-model optimiser whose cost per query grows with its
    archive; it stays one option away: ``optimizer="NGOpt"``)."""
    from .baselines import Nevergrad

    return Nevergrad(optimizer, budget=budget, sigma0=sigma0, popsize=popsize, seed=seed)


for _entry in (
    MethodEntry("cma", _cma, "static", _HYBRID, "sphere", {}, "CMA-ES (pycma), black-box search baseline"),
    MethodEntry("nevergrad", _nevergrad, "static", _HYBRID, "sphere", {},
                "a nevergrad optimiser (default OnePlusOne), black-box search baseline"),
):
    register_method(_entry)
del _entry


__all__ = ["KINDS", "MethodEntry", "REGISTRY", "make_method", "method_entry", "method_names", "register_method"]
