"""Lab instruments as devices: QCoDeS parameters behind the :class:`~physgrad.systems.base.PhysicalSystem` contract.

An optional extra (``pip install physgrad[lab]``): everything here imports QCoDeS, and only when
used, so ``import physgrad`` never loads it.

``QCoDeSSystem``
    controls, data inputs and outputs that are QCoDeS parameters (a DAC's channels, a DMM's
    reading); safe ranges, units and ramp limits read from the parameters.
``QCoDeSWaveformSystem``
    the time-domain variant for homodyne gradient extraction: AWG channels play waveforms, a
    digitizer's ``ParameterWithSetpoints`` records the answer at its sample rate.
``system_from_station``
    either of them built from a QCoDeS station configuration (YAML).
``physgrad.systems.lab.sim``
    simulated instruments (DAC, DMM, AWG, digitizer) whose readings come from a simulated device:
    for tests, docs and the benchmark, no hardware needed.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "QCoDeSSystem": "qcodes",
    "QCoDeSWaveformSystem": "qcodes",
    "system_from_station": "qcodes",
    "resolve_parameter": "qcodes",
    "require_qcodes": "qcodes",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
