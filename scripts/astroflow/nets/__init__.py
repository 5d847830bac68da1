"""astroflow's neural networks: the U-Net, its training loop and data shards, tiled inference.

Modules: ``unet``, ``training``, ``tiling``.
"""
