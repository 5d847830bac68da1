import logging
import sys
import warnings

from astroflow.workflow.logs import setup_logging


def test_log_records_host_job_and_warnings(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    stderr = sys.stderr
    path = tmp_path / "rule.log"
    try:
        log = setup_logging(path)
        log.info("hello")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("master dark skipped", UserWarning, stacklevel=1)
    finally:
        sys.stderr.close()
        sys.stderr = stderr
        logging.captureWarnings(False)
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    text = path.read_text()
    assert "SLURM_JOB_ID 4242" in text and "CUDA_VISIBLE_DEVICES unset" in text
    assert "hello" in text and "master dark skipped" in text
