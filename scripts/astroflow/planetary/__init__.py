"""Planetary lucky imaging: object finding, frame ranking, global and local alignment on
alignment points, stacking, and à trous wavelet sharpening.

Modules: ``lucky`` (the algorithms), ``passes`` (the streaming passes over a sequence),
``wavelets``.
"""
