"""Deep-sky integration: star detection and frame quality, registration, stacking with
pixel rejection, drizzle, and the per-frame table.

Modules: ``quality``, ``register``, ``weighting``, ``stack``, ``drizzle``, ``frames``.
"""
