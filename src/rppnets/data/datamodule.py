"""The split every data set shares: validation held out of the training set with a fixed seed, the test set whole.

A data module here holds one image-classification data set as tensors on the training device, one flattened row
per image, served in shuffled batches by index (rppnets.data.batches). What the data set is (its name, the shape
of an image and the number of classes) is known when the module is built, before any file is read, so that a model
can be built from `input_shape` / `in_features` and `num_classes`. Subclasses read the files: `load(train)`.
"""

import math
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from rppnets.checks import check_int
from rppnets.data.batches import InMemoryBatches
from rppnets.data.errors import CorruptDataError


@rank_zero_only
def announce(line: str) -> None:
    """The run's one line about its data (once, not once per process under DDP)."""
    print(line)


class InMemoryDataModule(pl.LightningDataModule):
    """A seeded validation split carved from the training set; the official test set for testing.

    Args:
        name: the data set's name for people ("Fashion-MNIST"): the data line and the reports use it.
        input_shape: the shape of one image, (channels, height, width); `in_features` is its product.
        num_classes: labels run from 0 to num_classes - 1.
        batch_size: training batch size.
        val_size: training images held out for validation (0: no validation).
        train_size: use only the first `train_size` remaining training images (None: all), for quick runs.
        eval_batch_size: batch size for validation and test.
        seed: seeds the validation split and the shuffling.
        max_val_size: the largest val_size allowed when the training set's size is known before reading it.
    """

    def __init__(self, name: str, input_shape: Sequence[int], num_classes: int, batch_size: int = 128,
                 val_size: int = 5000, train_size: int | None = None, eval_batch_size: int = 1000, seed: int = 0,
                 max_val_size: int | None = None):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ValueError(f"name={name!r} is invalid; allowed: the data set's name, e.g. 'Fashion-MNIST'")
        self.name = name
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape:
            raise ValueError(f"input_shape={input_shape!r} is invalid; allowed: a list of sizes, e.g. [3, 32, 32]")
        self.input_shape = tuple(check_int("input_shape", size, 1) for size in input_shape)
        self.in_features = math.prod(self.input_shape)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        self.val_size = check_int("val_size", val_size, 0, max_val_size)
        self.train_size = None if train_size is None else check_int("train_size", train_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.shuffle_generator = torch.Generator().manual_seed(self.seed)  # the training order, epoch after epoch

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One split of the data set: float32 images of shape (N, in_features) and int64 labels, on the CPU."""
        raise NotImplementedError

    def source_line(self) -> str:
        """Where the data came from and how it was checked, for the data line (after `load`)."""
        raise NotImplementedError

    def check_split(self, x: torch.Tensor, y: torch.Tensor, split: str) -> None:
        """Refuses a split whose images or labels do not fit the data set this module says it holds."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise CorruptDataError(f"{self.name} {split} images have {tuple(x.shape[1:])} values each, expected "
                                   f"{self.in_features} (input_shape={list(self.input_shape)})")
        if len(y) and not (0 <= int(y.min()) and int(y.max()) < self.num_classes):
            raise CorruptDataError(f"{self.name} {split} labels run from {int(y.min())} to {int(y.max())}, expected "
                                   f"0 to {self.num_classes - 1} (num_classes={self.num_classes})")

    def setup(self, stage: str | None = None):
        if hasattr(self, "x_train"):
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        x, y = self.load(train=True)
        self.check_split(x, y, "training")
        if self.val_size >= len(x):
            raise ValueError(f"val_size={self.val_size} is invalid; allowed: 0 to {len(x) - 1} (the {self.name} "
                             f"training set has {len(x):,} images)")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size :][: self.train_size]
        self.x_train, self.y_train = x[train].to(device), y[train].to(device)
        self.x_val, self.y_val = x[val].to(device), y[val].to(device)
        x_test, y_test = self.load(train=False)
        self.check_split(x_test, y_test, "test")
        self.x_test, self.y_test = x_test.to(device), y_test.to(device)
        announce(f"Data: {self.name} from {self.source_line()}; {len(self.x_train):,} training, "
                 f"{len(self.x_val):,} validation, {len(self.x_test):,} test images")

    def train_dataloader(self):
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return InMemoryBatches(self.x_train, self.y_train, self.batch_size, shuffle=True, rank=rank,
                               world_size=world_size, generator=self.shuffle_generator)

    def state_dict(self) -> dict:
        """Saved with every checkpoint: where the training order stands, so a resumed run continues it."""
        return {"shuffle_generator": self.shuffle_generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.shuffle_generator.set_state(state_dict["shuffle_generator"])

    def val_dataloader(self):
        return InMemoryBatches(self.x_val, self.y_val, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return InMemoryBatches(self.x_test, self.y_test, self.eval_batch_size, shuffle=False)
