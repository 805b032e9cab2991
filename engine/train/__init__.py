"""Training: the SAEHD step, the loop, checkpoints, previews, DDP."""
