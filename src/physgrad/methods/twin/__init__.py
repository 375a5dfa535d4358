"""Learned digital twins and the methods that use them (DESIGN.md, "A digital twin, learned").

* :class:`Twin` — a small MLP fitted to the (settings, inputs, outputs) a device answered.
* :class:`PAT` — physics-aware training (Wright et al., Nature 2022): device forward, twin backward.
* :class:`TwinGuidedPGT` — perturbative VJP with the twin as a control variate and/or guide of the
  directions (guided ES, Maheswaranathan et al. 2019): unbiased whatever the twin.
"""

from .methods import PAT, TwinGuidedPGT, TwinMethod, TwinPlan, TwinProbes, pat, twin_cv, twin_guided
from .twin import Twin

__all__ = ["PAT", "Twin", "TwinGuidedPGT", "TwinMethod", "TwinPlan", "TwinProbes", "pat", "twin_cv", "twin_guided"]
