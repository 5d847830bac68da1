"""Skies with known truth: the simulated deep-sky night, planetary sequences through
turbulence, Kolmogorov phase screens, and synthetic star-removal training pairs.

Modules: ``night``, ``planetary``, ``turbulence``, ``synthstars``, ``starstamps``,
``realstars``.
"""
