"""Entry script of rule train_starless: synthetic shards -> results/models/starless.pt."""

import os

# OpenMP threads that spin while they wait slow torch down many times over when another job
# shares the cores (measured: 0.41 against 14.5 iterations/s of the multi-frame deconvolution on
# 2 busy cores); passive waiting costs nothing on an idle machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import platform
import time

import torch

from astroflow.io.atomic import atomic_write
from astroflow.nets.training import plot_history, run_checkpoint, train
from astroflow.nets.unet import ResUNet, count_parameters, load_weights, save_weights
from astroflow.workflow.logs import setup_logging

log = setup_logging(snakemake.log[0])
p = snakemake.params
s = dict(p.settings)
torch.set_num_threads(snakemake.threads)
torch.manual_seed(p.seed)
model = ResUNet(in_channels=3, out_channels=3, base=s["base"], depth=s["depth"])
device = "cuda" if torch.cuda.is_available() else "cpu"
init = getattr(snakemake.input, "init", None)
if init:
    # Fine-tuning: start from the shipped weights, which must be of this very architecture.
    start_from, _ = load_weights(init, expected=model.arch)
    model.load_state_dict(start_from.state_dict())
    log.info("starting from the weights %s", init)
log.info(
    "profile %s: ResUNet base %d depth %d, %d parameters, on %s",
    p.profile,
    s["base"],
    s["depth"],
    count_parameters(model),
    device,
)
# A job killed mid-training resumes from its checkpoint (astroflow.nets.training.run_checkpoint).
run_key = [s, p.seed, list(snakemake.input.train), list(snakemake.input.val), init]
checkpoint = run_checkpoint(snakemake.output.weights, run_key, log)
start = time.time()
history = train(
    model,
    list(snakemake.input.train),
    list(snakemake.input.val),
    epochs=s["epochs"],
    steps_per_epoch=s["steps_per_epoch"],
    batch_size=s["batch_size"],
    crop=s["crop"],
    lr=s["lr"],
    device=device,
    seed=p.seed,
    checkpoint=str(checkpoint),
    log=log,
    ema_decay=s.get("ema"),
)
seconds = time.time() - start
final = history.iloc[-1]
meta = {
    "task": "starless",
    "profile": p.profile,
    "settings": s,
    "seed": p.seed,
    "device": device,
    "host": platform.node(),
    "torch": torch.__version__,
    "train_shards": len(snakemake.input.train),
    "val_shards": len(snakemake.input.val),
    "init": init,
    "steps": int(history["steps"].sum()),
    "wall_s": round(seconds, 1),
    "val_psnr": float(final["val_psnr"]),
    "val_ssim": float(final["val_ssim"]),
    "val_loss": float(final["val_loss"]),
}
save_weights(snakemake.output.weights, model.cpu(), meta=meta)
atomic_write(snakemake.output.history, lambda tmp: history.to_csv(tmp, index=False))
atomic_write(snakemake.output.metrics, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
figure = plot_history(history)
atomic_write(snakemake.output.curves, lambda tmp: figure.savefig(tmp, dpi=100))
checkpoint.unlink(missing_ok=True)
log.info("trained in %.0f s: val PSNR %.2f dB, SSIM %.4f", seconds, meta["val_psnr"], meta["val_ssim"])
