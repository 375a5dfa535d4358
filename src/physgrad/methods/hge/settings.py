"""HGE's settings in one frozen record (the old keyword arguments of ``HGE(...)`` map onto its fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ...errors import ConfigError

MODES = ("parallel", "sequential")
PHASES = ("calibrated", "none")
DEMODULATIONS = ("iq", "fft")
AT_BOUND = ("shrink", "refuse")
AMPLITUDE_RULES = ("flat", "equal_snr")
DEFAULT_SETTLE_S = 0.01  # what a lab waits after a DAC step when nothing else is known (10 ms)


@dataclass(frozen=True)
class HGESettings:
    """Every setting of :class:`~physgrad.methods.hge.HGE`.

    Window and plan: ``window_s`` (demodulation window T, s), ``frequencies`` (explicit, validated, or
    ``None`` to plan), ``spacing``, ``f_min``, ``min_cycles``, ``order``, ``odd``, ``guard_bins``
    (:func:`~physgrad.methods.hge.plan.plan_frequencies`).

    Amplitudes: ``amplitude`` (fraction of each channel's safe range), ``amplitude_abs`` (absolute, all
    channels; also the amplitude of unbounded digital channels, default 0.01), ``input_amplitude``
    (fraction, inputs), ``amplitude_rule`` (``"flat"`` or ``"equal_snr"``:
    :func:`~physgrad.methods.hge.plan.modulation_amplitudes`), ``at_bound`` (``"shrink"``/``"refuse"``).

    Reading: ``mode`` (``"parallel"``/``"sequential"``), ``phase`` (``"calibrated"``: divide by the
    measured per-channel transfer; ``"none"``: ``2X/a``), ``sign_from_phase`` (the authors' rule),
    ``demodulation`` (``"iq"``/``"fft"``), ``loss_signal`` (demodulate the loss; global scope).

    Calibration: ``calibration_window_s`` (per segment; default ``max(10·T, 2 s)``, rounded up to a whole
    number of windows), ``calibration_snr`` (required ratio of a channel's reading to its lock-in
    noise), ``calibration_settle_s`` (wait before each calibration segment), ``per_channel`` (keep each
    channel's own transfer instead of one fitted chain: devices with electrode-dependent dynamics).

    What the lab states (nominal; never read from a simulator): ``bandwidth_hz`` (ceiling of the
    plan; ``None``: Nyquist only), ``settle_s`` (wait before the window; ``None``: measured by the
    calibration when there is one, else :data:`DEFAULT_SETTLE_S`), ``white_psd`` and
    ``flicker_psd_1hz`` (nominal output noise, used only by ``amplitude_rule="equal_snr"``).
    """

    window_s: float = 0.1
    frequencies: tuple[float, ...] | None = None
    spacing: float | None = None
    f_min: float | None = None
    min_cycles: int = 10
    order: int = 2
    odd: bool = False
    guard_bins: int = 0
    amplitude: float = 0.02
    amplitude_abs: float | None = None
    input_amplitude: float = 0.02
    amplitude_rule: str = "flat"
    at_bound: str = "shrink"
    mode: str = "parallel"
    phase: str = "calibrated"
    sign_from_phase: bool = False
    demodulation: str = "iq"
    loss_signal: bool = False
    calibration_window_s: float | None = None
    calibration_snr: float = 20.0
    calibration_settle_s: float = 0.05
    per_channel: bool = False
    bandwidth_hz: float | None = None
    settle_s: float | None = None
    white_psd: float = 0.0
    flicker_psd_1hz: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.window_s, (int, float)) and self.window_s > 0 and math.isfinite(self.window_s)):
            raise ConfigError(f"window_s must be a finite number > 0, got {self.window_s!r}")
        for name, options in (("mode", MODES), ("phase", PHASES), ("demodulation", DEMODULATIONS),
                              ("at_bound", AT_BOUND), ("amplitude_rule", AMPLITUDE_RULES)):
            if getattr(self, name) not in options:
                raise ConfigError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        for name in ("amplitude", "input_amplitude"):
            value = getattr(self, name)
            if not (0 < value < 0.5):
                raise ConfigError(f"{name} is a fraction of the safe range and must lie in (0, 0.5), got {value!r}")
        for name in ("amplitude_abs", "bandwidth_hz", "calibration_window_s"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number > 0 (or None), got {value!r}")
        for name in ("settle_s", "calibration_settle_s", "white_psd", "flicker_psd_1hz"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.calibration_snr > 0:
            raise ConfigError(f"calibration_snr must be > 0, got {self.calibration_snr!r}")
        if self.frequencies is not None:
            object.__setattr__(self, "frequencies", tuple(float(f) for f in self.frequencies))

    @property
    def calibration_window(self) -> float:
        """Calibration segment length: a whole number of gradient windows (so planned tones fit it)."""
        want = max(10 * self.window_s, 2.0) if self.calibration_window_s is None else self.calibration_window_s
        return self.window_s * max(1, math.ceil(want / self.window_s - 1e-9))

    @property
    def plan_options(self) -> dict:
        return dict(spacing=self.spacing, f_min=self.f_min, min_cycles=self.min_cycles, order=self.order,
                    odd=self.odd, guard_bins=self.guard_bins)


SETTING_NAMES = tuple(f.name for f in fields(HGESettings))
