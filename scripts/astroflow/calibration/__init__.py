"""Calibration of CFA and mono frames: master bias, dark and flat, light calibration,
hot/cold pixel correction, and debayering.

Modules: ``calibrate``, ``debayer``.
"""
