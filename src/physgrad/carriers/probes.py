"""What travels between a method and a device: :class:`Probes`, the unit a carrier carries.

A method's ``ask`` returns probes; a carrier (:mod:`physgrad.carriers`) takes them to a device and
returns the device's answers; the method's ``tell`` turns the answers into an estimate. Every
probes object says four things about itself:

``answer(system)``
    how an in-process device answers them: the single device call (``system.measure(...)``,
    ``system.measure_waveform(...)``, the relaxation phases of an energy device, ...).
``count``
    how many device queries they cost.
``shard(n)``
    at most ``n`` contiguous parts that can be answered independently (on different devices of the
    same kind, or one after the other): a ± pair of one direction is never split, nor are the
    phases of one relaxation protocol.
``join(parts_answers)``
    the answers of the parts reassembled into the answers of the whole, in the order asked.

This module sits between ``systems`` (which it calls) and ``models``/``methods`` (which use it);
``physgrad.methods.base.Probes`` is this class.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch


class Probes(abc.ABC):
    """Base of every probes object (see the module docstring). Subclasses are usually dataclasses."""

    #: False: the answers only make sense in this process (they carry autograd history), so a carrier
    #: that answers elsewhere (a device server, a Ray farm) must refuse them before measuring anything.
    portable = True

    @abc.abstractmethod
    def answer(self, system: Any) -> Any:
        """Answer these probes on ``system`` in-process (the one device call)."""

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """Device queries these probes cost."""

    def shard(self, n: int) -> list["Probes"]:
        """At most ``n`` contiguous parts (default: the probes cannot be split)."""
        _check_parts(n)
        return [self]

    def join(self, parts: Sequence[Any]) -> Any:
        """The answers of :meth:`shard` 's parts, reassembled in the order asked."""
        if len(parts) != 1:
            raise ValueError(f"{type(self).__name__} cannot be split; join expects 1 answer, got {len(parts)}")
        return parts[0]


def _check_parts(n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"shard needs a whole number of parts >= 1, got {n!r}")


def split_points(total: int, n: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: ``range(total)`` in at most ``n`` contiguous, nearly equal parts."""
    _check_parts(n)
    n = max(1, min(int(n), total))
    base, extra = divmod(total, n)
    out, start = [], 0
    for i in range(n):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def _rows(value: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return None if value is None else value[start:stop]


@dataclass
class Measurement(Probes):
    """One plain measurement: ``K`` settings applied to a batch of inputs (``system.measure``).

    ``params[name]`` is ``[K, *shape]``; ``inputs`` is ``[B, *input_shape]`` (shared by every setting)
    or ``[K, B, *input_shape]``. Answers are ``[K, B, *output_shape]``. Shards split the settings.
    """

    params: Mapping[str, torch.Tensor]
    inputs: torch.Tensor
    shared_inputs: bool = True
    seconds_per_query: float = 0.0  # the device's declared time per query (for the cost of the answers)

    def answer(self, system: Any) -> torch.Tensor:
        return system.measure(self.params, self.inputs)

    @property
    def count(self) -> int:
        if self.params:
            return int(next(iter(self.params.values())).shape[0])
        return 1 if self.shared_inputs else int(self.inputs.shape[0])

    def shard(self, n: int) -> list["Measurement"]:
        if not self.params:
            return [self]
        return [
            type(self)({k: v[a:b] for k, v in self.params.items()},
                       self.inputs if self.shared_inputs else self.inputs[a:b], self.shared_inputs, self.seconds_per_query)
            for a, b in split_points(self.count, n)
        ]

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts))


@dataclass
class Simulation(Measurement):
    """The differentiable simulator's response (``system.simulate``): the backpropagation oracle's probe.

    Answers carry autograd history, so only an in-process carrier can return them.
    """

    portable = False

    def answer(self, system: Any) -> torch.Tensor:
        # grad mode is off inside a backward pass (the local scope asks from a layer's backward)
        with torch.enable_grad():
            return system.simulate(self.params, self.inputs)
