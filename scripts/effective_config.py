"""Entry script of rule effective_config: the configuration of this run as YAML and HTML."""

from pathlib import Path

import yaml

from astroflow.workflow.logs import setup_logging
from astroflow.workflow.report import config_page, plain

log = setup_logging(snakemake.log[0])
config = plain(snakemake.params.config)
Path(snakemake.output.yaml).write_text(yaml.safe_dump(config, sort_keys=False))
Path(snakemake.output.html).write_text(config_page(config))
log.info("targets: %s", ", ".join(config.get("targets", {})))
