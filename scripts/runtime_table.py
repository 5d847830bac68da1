"""Entry script of rule runtimes: benchmark files -> results/runtimes.{tsv,png}."""

from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import runtime_plot
from astroflow.workflow.report import runtime_table

log = setup_logging(snakemake.log[0])
table = runtime_table(snakemake.input)
table.to_csv(snakemake.output.table, sep="\t", index=False, float_format="%.3f")
runtime_plot(table).savefig(snakemake.output.plot, dpi=100)
log.info(
    "%d benchmarked jobs of %d rules, %.1f s in all",
    len(table),
    table["rule"].nunique(),
    table["s"].sum(),
)
