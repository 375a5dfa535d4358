"""Carriers: the one piece of physgrad that touches a device (DESIGN.md, "Carrying probes").

A carrier is any callable ``carrier(system, probes) -> answers``. Methods hold one in
``method.carrier`` and send every probe through it; they never know whether the device is in this
process, behind a socket, in a pool of workers or in a lab instrument. Rules every carrier keeps:
answers come back in the order asked; the ± probes of one direction are measured on the same device
(``probes.shard`` never splits them); every query is counted, repeats included; a failed
measurement raises :class:`~physgrad.errors.MeasurementError`, whatever the carrier.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .probes import Probes


@runtime_checkable
class Carrier(Protocol):
    """Anything that carries probes to a device and returns its answers."""

    def __call__(self, system: Any, probes: Probes) -> Any: ...


class InProcess:
    """The default carrier: the device lives in this process; ``probes.answer(system)``.

    ``max_parts`` > 1 answers the probes in that many parts (``shard``/``join``), one after the
    other: the same answers, in smaller device calls (a memory bound).
    """

    def __init__(self, max_parts: int = 1) -> None:
        if int(max_parts) != max_parts or max_parts < 1:
            raise ValueError(f"max_parts must be a whole number >= 1, got {max_parts!r}")
        self.max_parts = int(max_parts)

    def __call__(self, system: Any, probes: Probes) -> Any:
        return carry(_answer, system, probes, self.max_parts)

    def __repr__(self) -> str:
        return "InProcess()" if self.max_parts == 1 else f"InProcess(max_parts={self.max_parts})"


def _answer(system: Any, probes: Probes) -> Any:
    return probes.answer(system)


def carry(carrier: Carrier, system: Any, probes: Probes, parts: int = 1) -> Any:
    """Carry ``probes`` in at most ``parts`` device calls through ``carrier`` (answers joined in order)."""
    if parts <= 1:
        return carrier(system, probes)
    shards = probes.shard(parts)
    if len(shards) == 1:
        return carrier(system, shards[0])
    return probes.join([carrier(system, p) for p in shards])
