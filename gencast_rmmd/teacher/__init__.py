"""The GenCast-style teacher: config, diffusion training task, predictor rebuilt from checkpoints."""
