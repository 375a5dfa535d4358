"""Exceptions raised by physgrad.

Every error names the problem and what to do about it. They derive from the built-in exception a
user would expect (``ValueError`` for bad arguments, ``RuntimeError`` for failures at run time) so
existing ``except`` clauses keep working.
"""


class PhysgradError(Exception):
    """Base class of every physgrad error."""


class ShapeError(PhysgradError, ValueError):
    """A tensor does not have the shape a device or method declared."""


class RangeError(PhysgradError, ValueError):
    """A setting lies outside a device's declared safe range (and the guard refuses it)."""


class MeasurementError(PhysgradError, RuntimeError):
    """A device answered something unusable (NaN, inf, the wrong shape)."""


class NonFiniteGradientError(PhysgradError, RuntimeError):
    """A gradient estimate contains NaN or inf; it was not applied to any parameter."""


class ConfigError(PhysgradError, ValueError):
    """A configuration or name (method, dataset, scope, ...) is unknown or inconsistent."""


class DataNotFoundError(PhysgradError, FileNotFoundError):
    """A dataset's files are missing; the message says how to get them."""


class CheckpointError(PhysgradError, RuntimeError):
    """A checkpoint is missing, truncated or does not match the run."""


def require_finite(who: str, what: str, value):
    """``value`` (a tensor) if every element is finite, else :class:`MeasurementError` naming ``who`` and ``what``.

    The one check of the error policy: a failed or non-finite measurement is a ``MeasurementError``
    wherever it is found (a device's answer, a method's ``tell``), so the trainer's skip and stop
    rules cover every method.
    """
    finite = value.isfinite()
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise MeasurementError(f"{who}: {bad} non-finite value(s) (NaN/inf) of {value.numel()} in the {what}")
    return value
