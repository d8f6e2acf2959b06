"""The Lightning module's metrics (rppnets.training.classifier), called as Lightning calls its hooks, without a fit:
what it logs per step and epoch, the means it takes (per batch in training, per image in validation and test), the
stop at a non-finite loss, and the optimizer it builds."""

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rppnets.training.classifier import Classifier, DivergenceError


class Fixed(nn.Module):
    """Returns the logits it is given (the batch's inputs), so every loss is known in advance."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.weight


def module(log_every_n_steps=1, global_step=0, epoch=0, sanity_checking=False):
    classifier = Classifier(Fixed(), partial(torch.optim.SGD, lr=0.5), num_classes=3)
    classifier._trainer = SimpleNamespace(log_every_n_steps=log_every_n_steps, global_step=global_step,
                                          current_epoch=epoch, sanity_checking=sanity_checking)
    classifier.logged = []
    classifier.log = lambda name, value, **kwargs: classifier.logged.append((name, float(value.detach()), kwargs))
    classifier.log_dict = lambda values, **kwargs: classifier.logged.append(
        ({key: float(value) for key, value in values.items()}, kwargs))
    return classifier


# two batches of different sizes: the first all right, the second one right of three
BATCHES = [(torch.tensor([[3.0, 0, 0]]), torch.tensor([0])),
           (torch.tensor([[0.0, 2, 0], [1, 0, 0], [0, 0, 1]]), torch.tensor([1, 2, 0]))]
LOSSES = [F.cross_entropy(x, y).item() for x, y in BATCHES]


@pytest.fixture(autouse=True)
def trainer_property(monkeypatch):
    # LightningModule.trainer raises without a trainer attached; the hooks read only these attributes
    monkeypatch.setattr(Classifier, "trainer", property(lambda self: self._trainer))
    monkeypatch.setattr(Classifier, "global_step", property(lambda self: self._trainer.global_step))
    monkeypatch.setattr(Classifier, "current_epoch", property(lambda self: self._trainer.current_epoch))


def test_training_logs_the_step_loss_and_the_epochs_mean_over_batches():
    classifier = module()
    for index, batch in enumerate(BATCHES):
        loss = classifier.training_step(batch, index)
        assert loss.item() == pytest.approx(LOSSES[index]) and loss.requires_grad
    assert [(name, kwargs) for name, _, kwargs in classifier.logged] == [("train/loss_step", {"prog_bar": True})] * 2
    assert [value for _, value, _ in classifier.logged] == pytest.approx(LOSSES)
    classifier.logged.clear()
    classifier.on_train_epoch_end()
    # the mean over batches (each batch counts once, whatever its size); accuracy over images: 2 of 4
    assert classifier.logged == [({"train/loss_epoch": pytest.approx(sum(LOSSES) / 2), "train/acc": 0.5},
                                  {"prog_bar": False})]
    classifier.logged.clear()
    classifier.training_step(BATCHES[1], 0)  # reset after each epoch: the next one starts from nothing
    classifier.logged.clear()
    classifier.on_train_epoch_end()
    assert classifier.logged == [({"train/loss_epoch": pytest.approx(LOSSES[1]), "train/acc": pytest.approx(1 / 3)},
                                  {"prog_bar": False})]


def test_the_step_loss_is_logged_only_on_the_steps_the_loggers_write():
    for step, logged in ((0, False), (1, True), (2, False), (3, True)):
        classifier = module(log_every_n_steps=2, global_step=step)
        classifier.training_step(BATCHES[0], 0)
        assert bool(classifier.logged) is logged, step


@pytest.mark.parametrize("stage", ["val", "test"])
def test_validation_and_test_losses_are_means_over_images(stage):
    classifier = module()
    for index, batch in enumerate(BATCHES):
        assert (classifier.validation_step if stage == "val" else classifier.test_step)(batch, index) is None
    (classifier.on_validation_epoch_end if stage == "val" else classifier.on_test_epoch_end)()
    mean = (LOSSES[0] * 1 + LOSSES[1] * 3) / 4
    assert classifier.logged == [({f"{stage}/loss": pytest.approx(mean), f"{stage}/acc": 0.5},
                                  {"prog_bar": stage == "val"})]
    classifier.logged.clear()
    classifier.validation_step(BATCHES[1], 0) if stage == "val" else classifier.test_step(BATCHES[1], 0)
    (classifier.on_validation_epoch_end if stage == "val" else classifier.on_test_epoch_end)()
    assert classifier.logged[0][0][f"{stage}/acc"] == pytest.approx(1 / 3)  # the earlier batches were reset


def test_the_sanity_check_logs_nothing_and_leaves_no_trace_in_validation():
    classifier = module(sanity_checking=True)
    classifier.validation_step(BATCHES[0], 0)
    classifier.on_validation_epoch_end()
    assert classifier.logged == []
    classifier._trainer.sanity_checking = False
    classifier.validation_step(BATCHES[1], 0)
    classifier.on_validation_epoch_end()
    assert classifier.logged == [({"val/loss": pytest.approx(LOSSES[1]), "val/acc": pytest.approx(1 / 3)},
                                  {"prog_bar": True})]


def test_stages_keep_their_own_metrics():
    classifier = module()
    classifier.training_step(BATCHES[0], 0)
    classifier.validation_step(BATCHES[1], 0)
    classifier.on_train_epoch_end()
    assert classifier.logged[-1][0]["train/acc"] == 1.0


def test_a_non_finite_loss_stops_training_naming_where():
    classifier = module(global_step=7, epoch=3)
    with pytest.raises(DivergenceError) as err:
        classifier.training_step((torch.tensor([[float("nan"), 0, 0]]), torch.tensor([0])), 2)
    assert str(err.value) == ("training diverged: loss nan at epoch 3, step 7 (batch 2); try a smaller optimizer.lr")
    with pytest.raises(DivergenceError, match="loss inf"):
        module().training_step((torch.tensor([[float("-inf"), 0, 0]]), torch.tensor([0])), 0)


def test_a_nan_validation_batch_shows_in_the_mean():
    classifier = module()
    classifier.validation_step((torch.tensor([[float("nan"), 0, 0]]), torch.tensor([0])), 0)
    classifier.validation_step(BATCHES[0], 1)
    classifier.on_validation_epoch_end()
    assert classifier.logged[0][0]["val/loss"] != classifier.logged[0][0]["val/loss"]  # NaN


def test_the_training_epochs_sums_are_saved_in_checkpoints_and_the_others_not():
    keys = set(module().state_dict())
    assert {key for key in keys if key.startswith("metrics.train_")} >= {"metrics.train_loss.mean_value",
                                                                          "metrics.train_acc.tp"}
    assert not any(key.startswith(("metrics.val_", "metrics.test_")) for key in keys)


def test_forward_is_the_network_and_the_optimizer_gets_every_parameter():
    classifier = module()
    assert torch.equal(classifier(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[1.0, 2.0, 3.0]]))
    optimizer = classifier.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.5
    assert optimizer.param_groups[0]["params"] == list(classifier.parameters())
    assert classifier.metrics["train_acc"].num_classes == 3


# --- what the mutation run of 2026-12-08 found untested ----------------------------------------------------------


def test_the_step_loss_is_logged_on_lightnings_steps_for_any_logging_interval():
    # Lightning's loggers write when (global_step + 1) % log_every_n_steps == 0: steps 2 and 5 of an interval of 3
    for step in range(6):
        classifier = module(log_every_n_steps=3, global_step=step)
        classifier.training_step(BATCHES[0], 0)
        assert bool(classifier.logged) is (step in (2, 5)), step


def test_accuracy_is_over_images_not_a_mean_over_classes():
    # three images of class 0 right, one of class 1 wrong: 3 of 4 images (a mean over classes would say 1/2)
    x = torch.tensor([[2.0, 0, 0], [2.0, 0, 0], [2.0, 0, 0], [2.0, 0, 0]])
    y = torch.tensor([0, 0, 0, 1])
    for stage in ("train", "val", "test"):
        classifier = module()
        {"train": classifier.training_step, "val": classifier.validation_step, "test": classifier.test_step}[stage](
            (x, y), 0)
        {"train": classifier.on_train_epoch_end, "val": classifier.on_validation_epoch_end,
         "test": classifier.on_test_epoch_end}[stage]()
        assert classifier.logged[-1][0][f"{stage}/acc"] == 0.75, stage


def test_ten_classes_unless_told():
    classifier = Classifier(Fixed(), partial(torch.optim.SGD, lr=0.5))
    assert {classifier.metrics[f"{stage}_acc"].num_classes for stage in ("train", "val", "test")} == {10}
