"""Restoration of finished images: single-image and multi-frame blind deconvolution, and star
removal.

Modules: ``deconvolve``, ``mfbd``, ``starless``, ``starnet``.
"""
