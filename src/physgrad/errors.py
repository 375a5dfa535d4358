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


def number_in(name: str, value, low: float = 0.0, high: float = float("inf"), *, what: str = "") -> float:
    """``value`` as a float in ``(low, high]`` (finite), else :class:`ConfigError` naming ``name``.

    The one check of a method's or device's numeric setting (a step, a nudging, a tolerance).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (number == number and abs(number) != float("inf") and low < number <= high):
        span = f"> {low:g}" if high == float("inf") else f"in ({low:g}, {high:g}]"
        raise ConfigError(f"{name} must be a finite number {span}{what}, got {value!r}")
    return number
