"""Logging for entry scripts: everything (log records, warnings, tracebacks) goes to the rule's log."""

from __future__ import annotations

import logging
import os
import platform
import sys


def setup_logging(log_path):
    """Send stderr, logging and Python warnings of this process to ``log_path``.

    Parameters
    ----------
    log_path : str or os.PathLike
        The rule's ``log:`` file, opened for writing.

    Returns
    -------
    logging.Logger
        The ``astroflow`` logger.
    """
    stream = open(log_path, "w", buffering=1)
    sys.stderr = stream
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    log = logging.getLogger("astroflow")
    # Where the job ran: provenance for the user, and how the SLURM test sees every job's
    # allocation (SLURM_JOB_ID, and CUDA_VISIBLE_DEVICES for GPU jobs).
    log.info(
        "host %s, SLURM_JOB_ID %s, CUDA_VISIBLE_DEVICES %s",
        platform.node(),
        os.environ.get("SLURM_JOB_ID", "none"),
        os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
    )
    return log
