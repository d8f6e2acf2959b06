"""A Lightning module that trains any network on a classification task with cross-entropy."""

from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class Classifier(pl.LightningModule):
    """Cross-entropy on the logits of `net`, accuracy from torchmetrics.

    Logs ``train/loss`` per step and per epoch (``train/loss_step``, ``train/loss_epoch``), ``train/acc``,
    ``val/loss``, ``val/acc``, ``test/loss`` and ``test/acc`` per epoch.

    Args:
        net: maps a batch of inputs to logits of shape (B, num_classes).
        optimizer: a partial optimizer (``torch.optim.Adam`` with its settings) completed with the parameters.
        num_classes: number of classes, for the accuracy metrics.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], num_classes: int = 10):
        super().__init__()
        self.net = net
        self.optimizer = optimizer
        # One metric object per stage: their states must not mix. Input checks are off: the inputs are always
        # logits and labels from this module, and checking them costs more than a small network's step.
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)  # (B, num_classes)
        loss = F.cross_entropy(logits, y)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy.update(logits.detach(), y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=stage != "test")
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return self.optimizer(self.parameters())
