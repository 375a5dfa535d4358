"""Homodyne gradient extraction (Boon et al., arXiv 2105.11233): plan, lock-in, calibration, method."""

from .calibration import Calibration, CalibrationProbes, transfer_from_tones
from .lockin import demodulate, lockin
from .method import HGE
from .plan import FrequencyPlan, check_frequencies, mixing_collisions, modulation_amplitudes, plan_frequencies
from .probes import CalibratedProbes, ModelProbes, WaveformProbes
from .settings import HGESettings

__all__ = [
    "HGE", "HGESettings", "FrequencyPlan", "WaveformProbes", "ModelProbes", "CalibratedProbes", "CalibrationProbes",
    "Calibration", "plan_frequencies", "check_frequencies", "mixing_collisions", "modulation_amplitudes",
    "lockin", "demodulate", "transfer_from_tones",
]
