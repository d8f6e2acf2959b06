"""The training pipeline: train(cfg), the Lightning module, callbacks, checkpoints and signals, the run folder, loggers."""
