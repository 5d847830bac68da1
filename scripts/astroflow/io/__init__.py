"""Files in and out: the format registry, FITS/TIFF/PNG/XISF readers and writers, camera RAW
and video ingest, the readers' memory and time limits, atomic writes and the on-disk frame store.

Modules: ``formats``, ``fits``, ``tiff``, ``ingest``, ``imagefile``, ``sequence``, ``limits``,
``export``, ``atomic``, ``framestore``.
Import from the modules (``from astroflow.io.fits import read_image``): this package imports
nothing itself, so a rule reruns only when a module its script uses changes.
"""
