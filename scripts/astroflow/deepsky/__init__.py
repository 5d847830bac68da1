"""Deep-sky integration: star detection and frame quality, registration, stacking with
pixel rejection, drizzle, and the per-frame table.

Modules: ``quality``, ``register``, ``weighting``, ``stack``, ``drizzle`` (translation-only, for
planetary lucky imaging), ``drizzle_stack`` (deep-sky drizzle and Bayer drizzle with STScI's
drizzle), ``frames``.
"""
