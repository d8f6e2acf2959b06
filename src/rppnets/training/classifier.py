"""A Lightning module that trains any network on a classification task with cross-entropy."""

from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

STAGES = ("train", "val", "test")


class DivergenceError(RuntimeError):
    """The training loss stopped being a finite number."""


class Classifier(pl.LightningModule):
    """Cross-entropy on the logits of `net`; loss and accuracy accumulated with torchmetrics.

    A non-finite training loss raises DivergenceError naming the epoch and step.

    Logs ``train/loss_step`` (every ``trainer.log_every_n_steps`` steps, when the loggers write), and per epoch
    ``train/loss_epoch`` (the mean over the epoch's batches), ``train/acc``, ``val/loss``, ``val/acc``, and at
    the end ``test/loss``, ``test/acc`` (validation and test losses are weighted by batch size).

    Args:
        net: maps a batch of inputs to logits of shape (B, num_classes).
        optimizer: a partial optimizer (``torch.optim.Adam`` with its settings) completed with the parameters.
        num_classes: number of classes, for the accuracy metrics.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], num_classes: int = 10):
        super().__init__()
        self.net = net
        self.optimizer = optimizer
        # One pair of metric objects per stage: their states must not mix. Input checks are off: the inputs
        # are always this module's logits and labels.
        self.metrics = nn.ModuleDict()
        for stage in STAGES:
            self.metrics[f"{stage}_loss"] = MeanMetric(nan_strategy="disable")  # a NaN batch must show in the mean
            self.metrics[f"{stage}_acc"] = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # The training epoch's running sums go into checkpoints: a run resumed mid-epoch reports the whole
        # epoch's mean, not the mean of the batches after the resume.
        self.metrics["train_loss"].persistent(True)
        self.metrics["train_acc"].persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)  # (B, num_classes)
        loss = F.cross_entropy(logits, y)
        # per batch in training, per image otherwise: the loss repeated len(y) times, as MeanMetric ignores its
        # weights under nan_strategy="disable" (torchmetrics 1.9)
        self.metrics[f"{stage}_loss"].update(loss.detach() if stage == "train" else loss.detach().expand(len(y)))
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)
        return loss

    def _log_epoch(self, stage: str, loss_name: str) -> None:
        loss, acc = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_acc"]
        self.log_dict({loss_name: loss.compute(), f"{stage}/acc": acc.compute()}, prog_bar=stage == "val")
        loss.reset()
        acc.reset()

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):  # stop at the first bad step: later steps would only train on NaN
            raise DivergenceError(f"training diverged: loss {loss.item()} at epoch {self.current_epoch}, "
                                  f"step {self.global_step} (batch {batch_idx}); try a smaller optimizer.lr")
        # self.log costs about half a millisecond, as much as a small network's whole step: call it only on
        # the steps whose values the loggers write.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def on_train_epoch_end(self):
        self._log_epoch("train", "train/loss_epoch")

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self._log_epoch("val", "val/loss")
        else:
            self.metrics["val_loss"].reset()
            self.metrics["val_acc"].reset()

    def on_test_epoch_end(self):
        self._log_epoch("test", "test/loss")

    def configure_optimizers(self):
        return self.optimizer(self.parameters())
