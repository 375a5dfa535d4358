"""Homodyne gradient extraction (Boon et al., arXiv 2105.11233)."""

from .method import HGE, FrequencyPlan, WaveformProbes, plan_frequencies

__all__ = ["HGE", "FrequencyPlan", "WaveformProbes", "plan_frequencies"]
