"""Entry script of rule effective_config: the configuration of this run as YAML and HTML."""

import yaml

from astroflow.io.atomic import atomic_write
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.report import config_page, plain

log = setup_logging(snakemake.log[0])
config = plain(snakemake.params.config)
atomic_write(snakemake.output.yaml, lambda tmp: tmp.write_text(yaml.safe_dump(config, sort_keys=False)))
atomic_write(snakemake.output.html, lambda tmp: tmp.write_text(config_page(config)))
log.info("targets: %s", ", ".join(config.get("targets", {})))
