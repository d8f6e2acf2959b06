"""Any torchvision image-classification data set (CIFAR-10, SVHN, ...) read once into memory, flattened for the MLPs.

The config names the dataset class by `_target_` (with `_partial_: true`); the data module calls it for the
training and the test split, with `root`, `download` and `transform`, reads every image through the transform
(a tensor, (channels, height, width)) and keeps one flattened float row per image: the split and the batches are
those of every data set here (rppnets.data.datamodule).
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from rppnets.data.datamodule import InMemoryDataModule
from rppnets.data.errors import CorruptDataError, DataNotFoundError
from rppnets.data.sources import why_not


def dataset_name(dataset: Callable) -> str:
    """The dotted name of a dataset class, or of the class a functools.partial wraps."""
    target = getattr(dataset, "func", dataset)
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}".lstrip(".")


class TorchvisionDataModule(InMemoryDataModule):
    """A torchvision dataset class as a data module: a seeded validation split carved from its training split; its
    test split for testing.

    Args:
        dataset: the dataset class (or a functools.partial of it, from a config's `_target_` and `_partial_: true`),
            called as ``dataset(root=..., download=..., transform=..., **train_kwargs)`` and with `test_kwargs`.
        name: the data set's name for people ("CIFAR-10").
        input_shape: the shape of one transformed image, (channels, height, width); checked when the data is read.
        num_classes: labels run from 0 to num_classes - 1; checked when the data is read.
        root: the folder the dataset class reads (and downloads into); torchvision's own layout below it.
        download: let the dataset class download what is missing (it checks what it downloads).
        transform: turns one image into a tensor; None: torchvision's ToTensor (a PIL image or an array to floats
            in [0, 1], (channels, height, width)).
        train_kwargs, test_kwargs: what selects each split; default ``{"train": True}`` / ``{"train": False}``
            (SVHN: ``{"split": "train"}`` / ``{"split": "test"}``).
        batch_size, val_size, train_size, eval_batch_size, seed: the split and the batches (InMemoryDataModule).

    Raises DataNotFoundError (a ValueError) when built, before anything runs, if the dataset class finds no data in
    `root` and no download was asked for.
    """

    def __init__(self, dataset: Callable, name: str, input_shape: Sequence[int], num_classes: int,
                 root: str = "data", download: bool = False, transform: Callable | None = None,
                 train_kwargs: Mapping | None = None, test_kwargs: Mapping | None = None, batch_size: int = 128,
                 val_size: int = 5000, train_size: int | None = None, eval_batch_size: int = 1000, seed: int = 0):
        super().__init__(name, input_shape, num_classes, batch_size=batch_size, val_size=val_size,
                         train_size=train_size, eval_batch_size=eval_batch_size, seed=seed)
        if not callable(dataset):
            raise ValueError(f"dataset={dataset!r} is invalid; allowed: a dataset class, e.g. "
                             "{_target_: torchvision.datasets.CIFAR10, _partial_: true}")
        self.dataset, self.root, self.download = dataset, Path(root), download
        self._downloaded = False
        if transform is None:
            from torchvision.transforms import ToTensor

            transform = ToTensor()
        self.transform = transform
        self.split_kwargs = {True: dict(train_kwargs or {"train": True}), False: dict(test_kwargs or {"train": False})}
        # Without a download to come the data must be there now: the datasets are opened (their own checks run),
        # kept until setup reads them. With one, prepare_data downloads first.
        self._opened = {} if download else {train: self._open(train, download=False) for train in (True, False)}
        if not download and self.val_size >= len(self._opened[True]):
            raise ValueError(f"val_size={self.val_size} is invalid; allowed: 0 to {len(self._opened[True]) - 1} "
                             f"(the {self.name} training set has {len(self._opened[True]):,} images)")

    def _open(self, train: bool, download: bool):
        """The dataset class's object for one split; its not-found error as a DataNotFoundError naming the root."""
        kwargs = dict(root=str(self.root), transform=self.transform, **self.split_kwargs[train])
        if "download" in inspect.signature(self.dataset).parameters:
            kwargs["download"] = download
        try:
            return self.dataset(**kwargs)
        except RuntimeError as err:  # torchvision's way of saying the files are missing or do not match
            hint = "" if download else " Set data.download=true, or data.root to a folder holding it."
            raise DataNotFoundError(f"root={str(self.root)!r}: {dataset_name(self.dataset)} found no usable data "
                                    f"there ({err}).{hint}") from err
        except OSError as err:  # its download: no network (a URLError), a proxy, a full disk
            if not download:
                raise
            raise DataNotFoundError(f"root={str(self.root)!r}: {dataset_name(self.dataset)} could not download its "
                                    f"files ({why_not(err)}). Without network, put its dataset class's files into "
                                    f"data.root as it keeps them (its resources or url, with their MD5 sums).") \
                from err

    def prepare_data(self):
        if self.download and not self._downloaded:  # once: the run downloads before Lightning asks again
            for train in (True, False):
                self._open(train, download=True)
            self._downloaded = True

    def load(self, train: bool):
        split = self._opened.pop(train, None)
        if split is None:
            split = self._open(train, download=False)
        images, labels = [], []
        for index in range(len(split)):
            image, label = split[index]
            if not torch.is_tensor(image):
                raise CorruptDataError(f"{dataset_name(self.dataset)}: the transform gave a {type(image).__name__}, "
                                       "expected a tensor (e.g. transform: "
                                       "{_target_: torchvision.transforms.ToTensor})")
            if tuple(image.shape) != self.input_shape:
                raise CorruptDataError(f"{self.name}: image {index} has the shape {tuple(image.shape)}, expected "
                                       f"input_shape={list(self.input_shape)}")
            images.append(image.reshape(-1).float())
            labels.append(int(label))
        x = torch.stack(images) if images else torch.empty(0, self.in_features)
        return x, torch.tensor(labels, dtype=torch.long)

    def source_line(self) -> str:
        return f"{dataset_name(self.dataset)} in {self.root.absolute()}"
