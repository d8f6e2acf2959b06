"""Fashion-MNIST, MNIST and KMNIST as data modules: the official IDX files read in place and checked by MD5.

The four files are read where they lie, still gzipped (nothing is copied or unpacked), and checked against the
official MD5 sums. Where they are looked for: `data.root` when it is set, and nowhere else; otherwise the project's
data/ folder, then the system folder (Debian's package folder for Fashion-MNIST). They are downloaded only when asked.
"""

from pathlib import Path

from rppnets.data.datamodule import InMemoryDataModule
from rppnets.data.idx import FASHION_MNIST, idx_dataset, load_split
from rppnets.data.sources import download_files, find_files

SYSTEM_DIR = FASHION_MNIST.system_dir  # where Debian's dataset-fashion-mnist package puts the files


class IDXDataModule(InMemoryDataModule):
    """One of the IDX data sets (rppnets.data.idx.DATASETS): a seeded validation split carved from the training
    set; the official test set for testing.

    Args:
        dataset: which data set: "fashion_mnist", "mnist" or "kmnist".
        name: its name for people; None: the data set's own ("Fashion-MNIST").
        root: the folder holding the four .gz files (directly or in torchvision's <Class>/raw/, e.g. MNIST/raw/),
            and the only place looked in; None or "data" (the default): data/ if it holds them, else `system_dir`.
        system_dir: a folder read in place when `root` is None or data (a system package's); None to skip it.
        download: download the files into `root` (data/ when None) if they are not found.
        verify_md5: check the files against the official MD5 sums.
        batch_size, val_size, train_size, eval_batch_size, seed: the split and the batches (InMemoryDataModule).

    Raises DataNotFoundError (a ValueError) when built, before anything runs, if the files are not found and no
    download was asked for.
    """

    def __init__(self, dataset: str = "fashion_mnist", name: str | None = None, root: str | None = None,
                 batch_size: int = 128, val_size: int = 5000, train_size: int | None = None,
                 eval_batch_size: int = 1000, seed: int = 0, system_dir: str | None = None, download: bool = False,
                 verify_md5: bool = True):
        self.dataset = idx_dataset(dataset)
        super().__init__(name or self.dataset.name, self.dataset.image_shape, self.dataset.num_classes,
                         batch_size=batch_size, val_size=val_size, train_size=train_size,
                         eval_batch_size=eval_batch_size, seed=seed, max_val_size=self.dataset.train_images - 1)
        self.root = None if root is None else Path(root)
        self.system_dir = Path(system_dir) if system_dir else None
        self.download, self.verify_md5 = download, verify_md5
        self.source = find_files(self.dataset, self.root, self.system_dir, download)  # None: to be downloaded

    def prepare_data(self):
        if self.source is None:
            self.source = download_files(self.dataset, self.root)

    def load(self, train: bool):
        if self.source is None:  # another process downloaded the files (prepare_data runs on one per node)
            self.source = find_files(self.dataset, self.root, self.system_dir, download=False)
        return load_split(self.source.folder, train=train, verify_md5=self.verify_md5, dataset=self.dataset)

    def source_line(self) -> str:
        checked = "official MD5 sums checked" if self.verify_md5 else "MD5 check off (data.verify_md5=false)"
        return f"{self.source.describe()}, {checked}"


class FashionMNISTDataModule(IDXDataModule):
    """Fashion-MNIST (IDXDataModule with dataset="fashion_mnist"), looking in Debian's package folder by default."""

    def __init__(self, root: str | None = None, batch_size: int = 128, val_size: int = 5000,
                 train_size: int | None = None, eval_batch_size: int = 1000, seed: int = 0,
                 system_dir: str | None = SYSTEM_DIR, download: bool = False, verify_md5: bool = True,
                 name: str = FASHION_MNIST.name):
        super().__init__("fashion_mnist", name=name, root=root, batch_size=batch_size, val_size=val_size,
                         train_size=train_size, eval_batch_size=eval_batch_size, seed=seed, system_dir=system_dir,
                         download=download, verify_md5=verify_md5)
