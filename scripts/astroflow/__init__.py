"""astroflow: the library behind the astroflow Snakemake workflow.

Pure functions on arrays and paths; the entry scripts in ``scripts/`` only translate between
Snakemake and these modules.
"""

__version__ = "0.1.0"
