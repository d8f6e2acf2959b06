"""The callbacks' own measurements: memory per run (data, training state, a step's peak, the run's peak)."""

import sys

import pytorch_lightning as pl
import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train
from rppnets.training.callbacks import peak_rss_bytes, reset_peak_rss
from rppnets.training.classifier import Classifier
from rppnets.training.cluster import cluster_environment
from rppnets.meters import state_breakdown
from rppnets.layers.rpp_linear import index_storage


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak resident set is reset through /proc")
def test_peak_rss_restarts_from_the_current_resident_set():
    big = torch.ones(50_000_000)  # 200 MB, touched
    del big
    before = peak_rss_bytes()
    reset_peak_rss()
    after = peak_rss_bytes()
    assert after < before - 150_000_000  # a later job of the same process does not inherit this peak


def fit(folder, fake_root, callbacks, *overrides):
    """One epoch of the real configs (fake data, RPP m=4 k=5) through a bare Trainer; returns trainer and module."""
    cfg = compose_train(["model=rpp", "model.width=4", "model.k=5", *overrides], folder, fake_root)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = Classifier(instantiate(cfg.model), optimizer=instantiate(cfg.optimizer))
    trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks, enable_checkpointing=False,
                          enable_progress_bar=False, plugins=[cluster_environment()])  # as the pipeline's Trainer
    trainer.fit(module, datamodule=instantiate(cfg.data))
    return trainer, module


def memory_callback():
    """The memory callback as conf/callbacks/default.yaml builds it."""
    return instantiate(compose_train().callbacks.memory)


def test_memory_stats_logs_each_quantity_and_changes_no_result(tmp_path, fake_root):
    callback = memory_callback()
    trainer, module = fit(tmp_path / "measured", fake_root, [callback])
    _, plain = fit(tmp_path / "plain", fake_root, [])
    for (name, value), other in zip(module.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(value, other), name  # the profiled steps trained exactly as unprofiled ones
    assert not torch.autograd.profiler._is_profiler_enabled

    metrics = callback.metrics
    # Resident data: 224 training, 32 validation and 64 test images of 784 float32 each, with int64 labels.
    assert metrics["memory/data_bytes"] == (224 + 32 + 64) * (784 * 4 + 8)
    # The state keeps its size after the first step, except that Lightning drops the gradients when fitting ends.
    after = state_breakdown(module, trainer.optimizers)
    parameters = list(module.parameters())
    weights = sum(p.numel() * 4 for p in parameters)
    assert after["parameters"] == weights and after["gradients"] == 0 and after["index"] == index_storage(module)[1]
    assert after["optimizer"] == 2 * weights + 4 * len(parameters)  # Adam's two moments and a float32 step each
    assert metrics["memory/state_bytes"] == sum(after.values()) + weights
    # A step of 32 images holds at least the logits' gradient and the first RPP layer's output (32 x 20 floats).
    assert 32 * 20 * 4 < metrics["memory/step_peak_bytes"] < 10 * 2**20
    assert metrics["memory/peak_rss_bytes"] > 0


def test_memory_stats_in_an_epoch_too_short_for_the_window(tmp_path, fake_root):
    callback = memory_callback()
    with pytest.warns(UserWarning, match="step_peak_bytes not measured"):
        fit(tmp_path, fake_root, [callback], "data.batch_size=128")  # 224 images: 2 steps, the second is the warm-up
    assert not torch.autograd.profiler._is_profiler_enabled
    assert "memory/step_peak_bytes" not in callback.metrics
    assert {"memory/data_bytes", "memory/state_bytes", "memory/peak_rss_bytes"} <= set(callback.metrics)
