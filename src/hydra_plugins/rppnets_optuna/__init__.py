"""Hydra sweeper plugin: hyperparameter search with Optuna (hydra/sweeper=optuna, used by hparams_search=)."""
