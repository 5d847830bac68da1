"""astroflow's neural networks: the U-Net, its training loop and data shards, tiled inference,
image metrics (PSNR, SSIM).

Modules: ``unet``, ``training``, ``tiling``, ``metrics``.
"""
