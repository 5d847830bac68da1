"""Skies with known truth: the simulated deep-sky night, the multi-night, multi-filter project,
planetary sequences through turbulence, Kolmogorov phase screens, synthetic star-removal training
pairs and flat-field artifacts.

Modules: ``night``, ``project`` (with ``truthcheck``, its measures of a result against the truth),
``optics`` (vignetting and dust shared by the simulators), ``planetary``, ``turbulence``,
``synthstars``, ``starstamps``, ``realstars``, ``flatfield``.
"""
