"""What a gradient cost: the currency in which physgrad compares methods.

A *query* is one forward pass of a device at one parameter setting over one batch of inputs (the
unit of the PGT paper: "two forward passes per perturbation"); *samples* counts the input
presentations inside those queries (queries × batch size); *device seconds* is signal time on a
time-domain device (zero for a static simulator that declares no time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Cost:
    """Device queries, input samples and device seconds spent (immutable, addable)."""

    queries: int = 0
    samples: int = 0
    device_seconds: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(
            self.queries + other.queries,
            self.samples + other.samples,
            self.device_seconds + other.device_seconds,
        )

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(
            self.queries - other.queries,
            self.samples - other.samples,
            self.device_seconds - other.device_seconds,
        )

    def as_dict(self) -> dict:
        return asdict(self)
