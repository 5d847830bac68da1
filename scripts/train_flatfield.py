"""Entry script of rule train_flatfield: synthetic grid shards -> results/models/flatfield.pt."""

import os

# Passive OpenMP waiting: see train_starless.py. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import platform
import time
import zlib
from pathlib import Path

import torch

from astroflow.calibration.flatnet import heldout_metrics, sbig_metrics
from astroflow.io.atomic import atomic_write
from astroflow.nets.training import FlatFieldLoss, plot_history, run_checkpoint, train
from astroflow.nets.unet import FlatFieldNet, count_parameters, save_weights
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
s = dict(p.settings)
torch.set_num_threads(snakemake.threads)
torch.manual_seed(p.seed)
model = FlatFieldNet(base=s["base"], depth=s["depth"], grad_pool=s["grad_pool"])
device = "cuda" if torch.cuda.is_available() else "cpu"
log.info("profile %s: FlatFieldNet base %d depth %d, %d parameters, on %s", p.profile, s["base"], s["depth"],
         count_parameters(model), device)
# A job killed mid-training resumes from its checkpoint (astroflow.nets.training.run_checkpoint).
run_key = [s, p.seed, p.grid, list(snakemake.input.train), list(snakemake.input.val)]
checkpoint = run_checkpoint(snakemake.output.weights, run_key, log)
loss = FlatFieldLoss(s["flat_weight"], s["gradient_weight"], s["physics_weight"])
start = time.time()
history = train(
    model,
    list(snakemake.input.train),
    list(snakemake.input.val),
    epochs=s["epochs"],
    steps_per_epoch=s["steps_per_epoch"],
    batch_size=s["batch_size"],
    crop=p.grid,
    lr=s["lr"],
    loss=loss,
    device=device,
    seed=p.seed,
    checkpoint=str(checkpoint),
    log=log,
    ema_decay=s.get("ema"),
    input_key="observed",
    target_key="fields",
)
seconds = time.time() - start
model = model.cpu().eval()
model.grid = p.grid
# Held-out synthetic frames: seeds of a split no shard uses.
seeds = [[p.seed, zlib.crc32(b"heldout"), i] for i in range(s["heldout_frames"])]
heldout = heldout_metrics(model, seeds, size=p.size)
log.info("held-out synthetic frames: %s", heldout)
sbig = sbig_metrics(p.sbig, model) if p.sbig and Path(p.sbig, "flat").is_dir() else None
log.info("SBIG night %s: %s", p.sbig, sbig if sbig is not None else "not measured (folder absent)")
final = history.iloc[-1]
meta = {
    "task": "flatfield",
    "profile": p.profile,
    "settings": s,
    "seed": p.seed,
    "grid": p.grid,
    "sample_size": p.size,
    "device": device,
    "host": platform.node(),
    "torch": torch.__version__,
    "train_shards": len(snakemake.input.train),
    "val_shards": len(snakemake.input.val),
    "steps": int(history["steps"].sum()),
    "wall_s": round(seconds, 1),
    "val_loss": float(final["val_loss"]),
    "val_psnr": float(final["val_psnr"]),
    "heldout": heldout,
    "sbig": sbig,
}
save_weights(snakemake.output.weights, model, meta=meta)
atomic_write(snakemake.output.history, lambda tmp: history.to_csv(tmp, index=False))
atomic_write(snakemake.output.metrics, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
figure = plot_history(history, title="flat-field network")
atomic_write(snakemake.output.curves, lambda tmp: figure.savefig(tmp, dpi=100))
checkpoint.unlink(missing_ok=True)
log.info("trained in %.0f s: val loss %.5f", seconds, meta["val_loss"])
