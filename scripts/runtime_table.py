"""Entry script of rule runtimes: benchmark files -> results/runtimes.{tsv,png}."""

from astroflow.io.atomic import atomic_write
from astroflow.workflow.logs import setup_logging
from astroflow.workflow.plots import runtime_plot
from astroflow.workflow.report import runtime_table

log = setup_logging(snakemake.log[0])
table = runtime_table(snakemake.input)
atomic_write(snakemake.output.table, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.3f"))
figure = runtime_plot(table)
atomic_write(snakemake.output.plot, lambda tmp: figure.savefig(tmp, dpi=100))
log.info(
    "%d benchmarked jobs of %d rules, %.1f s in all",
    len(table),
    table["rule"].nunique(),
    table["s"].sum(),
)
