"""Entry script of rule starless_shard: one .npz shard of synthetic starry/starless pairs."""

import zlib

from astroflow.simulation.synthstars import make_shard
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
split, shard = snakemake.wildcards.split, int(snakemake.wildcards.shard)
# Every shard of every split has its own seed, a fixed function of the training seed.
seed = [p.seed, zlib.crc32(split.encode()), shard]
make_shard(snakemake.output[0], p.samples, seed, size=p.size, stamps=snakemake.input.stamps,
           mono_fraction=p.mono_fraction)
log.info("%s shard %d: %d samples of %d px (%.0f %% mono), seed %s", split, shard, p.samples, p.size,
         100 * p.mono_fraction, seed)
