"""rppnets' Hydra plugins: the SLURM launcher (Hydra takes launchers only from the hydra_plugins package)."""
