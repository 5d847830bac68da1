"""What ties the library to Snakemake: input discovery and result paths, logs, provenance
(code digests), the report's tables and figures.

Modules: ``discovery``, ``logs``, ``provenance``, ``report``, ``plots``.
"""
