"""Training: the run config and presets, the one loop and its policies, run folders and checkpoints."""
