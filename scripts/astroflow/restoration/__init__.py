"""Restoration of finished images: single-image and multi-frame blind deconvolution, and star
removal.

Modules: ``deconvolve``, ``mfbd``, ``starless``, ``starnet``, ``starmetrics`` (measures of star
removal on real images, without a truth).
"""
