"""Entry script of rule flatfield_shard: one .npz shard of synthetic flat-field grid pairs."""

import zlib

from astroflow.simulation.flatfield import make_shard
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
split, shard = snakemake.wildcards.split, int(snakemake.wildcards.shard)
# Every shard of every split has its own seed, a fixed function of the training seed.
seed = [p.seed, zlib.crc32(split.encode()), shard]
make_shard(snakemake.output[0], p.samples, seed, size=p.size, grid=p.grid)
log.info("%s shard %d: %d frames of %d px on a %d px grid, seed %s", split, shard, p.samples, p.size, p.grid, seed)
