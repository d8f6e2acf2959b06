"""Fashion-MNIST as in-memory tensors on the training device, served in shuffled batches by index."""

import hashlib
import shutil
import zlib
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from rppnets.checks import check_int

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist package puts the files
TRAIN_SIZE = 60_000
# Official MD5 sums of the four uncompressed files. Checked after extraction rather than on the .gz files,
# because repackagers (Debian among them) recompress the archives: different .gz bytes, same data.
CONTENT_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


class DataNotFoundError(FileNotFoundError):
    """None of the three sources of the Fashion-MNIST files worked."""


class CorruptDataError(ValueError):
    """A Fashion-MNIST file exists but is not the official one."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_fashion_mnist(root: Path, system_dir: Path | None, download: bool, verify_md5: bool = True) -> Path:
    """Make sure the four official files are in `root`/FashionMNIST/raw, extracted; return that folder.

    Sources, in order: `root` itself, the Debian package's `system_dir`, torchvision's download.
    """
    raw = root / "FashionMNIST" / "raw"
    resources = FashionMNIST.resources  # (file name, MD5) of the four .gz files
    missing = [name for name, _ in resources if not (raw / name).is_file()]
    reason = ""
    if missing and system_dir is not None and all((system_dir / name).is_file() for name in missing):
        raw.mkdir(parents=True, exist_ok=True)
        for name in missing:
            shutil.copyfile(system_dir / name, raw / name)
        missing = []
    if missing and download:
        try:
            FashionMNIST(root, train=True, download=True)
            missing = []
        except Exception as err:  # no network, a proxy, a mirror down: fall through to the one message
            reason = f" (download failed: {err})"
    if missing:
        raise DataNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)} in {raw}{reason}. Get them in one of three ways:\n"
            f"  1. put the four official .gz files into {raw} (or set data.root to a folder holding FashionMNIST/raw);\n"
            f"  2. on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (installs them in {SYSTEM_DIR});\n"
            f"  3. allow torchvision to download them: data.download=true with network access."
        )
    for name, _ in resources:
        extracted = raw / name.removesuffix(".gz")
        if not extracted.is_file():
            try:
                extract_archive(str(raw / name), str(raw))
            except (OSError, EOFError, zlib.error) as err:  # any damage to the archive: name it, leave no part
                extracted.unlink(missing_ok=True)
                raise CorruptDataError(f"{raw / name} is corrupt: {err}. Delete it and rerun.") from err
        if verify_md5 and (actual := md5sum(extracted)) != CONTENT_MD5[extracted.name]:
            raise CorruptDataError(
                f"{extracted} (from {name}) is corrupt: MD5 {actual}, expected the official "
                f"{CONTENT_MD5[extracted.name]}. Delete both files and rerun."
            )
    return raw


def load_split(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 in [0, 1] of shape (N, 784) and int64 labels, read with torchvision's parser."""
    try:
        dataset = FashionMNIST(root, train=train)
    except Exception as err:
        prefix = "train" if train else "t10k"
        raise CorruptDataError(f"cannot read {root / 'FashionMNIST/raw'}/{prefix}-*-ubyte: {err}") from err
    return dataset.data.reshape(len(dataset.data), -1).float().div_(255), dataset.targets.long()


class InMemoryBatches:
    """Batches sliced out of tensors that already live on the device; reshuffled every epoch if asked.

    No per-sample Python and no PIL: one index operation per batch. Resumable mid-epoch (Lightning saves
    `state_dict()` with a checkpoint taken inside an epoch): the shuffling generator before the epoch's order was
    drawn and the number of batches already served, so a resumed run sees exactly the batches it would have seen.
    Between epochs the generator's state is the data module's to save.
    With `world_size` > 1 (DDP) every process draws the same order and takes its own share of each global batch
    of `batch_size` rows, so the processes together step on the batches of a one-process run.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, generator: torch.Generator | None = None):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        # its state advances each epoch: a deterministic order that differs between epochs
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self._epoch_state = self.generator.get_state()  # the generator before this epoch's order was drawn
        self._served = 0  # batches of the current epoch handed out
        self._skip = 0  # batches to skip at the next epoch start (a mid-epoch resume)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            self._epoch_state = self.generator.get_state()
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        first, self._skip, self._served = self._skip, 0, self._skip
        for batch in range(first, len(self)):
            start = batch * self.batch_size
            rows = slice(start, min(start + self.batch_size, n))
            if self.world_size > 1:  # this process's share of the global batch
                size = rows.stop - rows.start
                share = -(-size // self.world_size)
                rows = slice(rows.start + self.rank * share, min(rows.start + (self.rank + 1) * share, rows.stop))
            self._served = batch + 1
            if self.shuffle:
                idx = order[rows]
                yield self.x[idx], self.y[idx]
            else:
                yield self.x[rows], self.y[rows]

    def state_dict(self) -> dict:
        if self._served in (0, len(self)):  # between epochs: the next epoch draws a new order
            return {"generator": self.generator.get_state(), "served": 0}
        return {"generator": self._epoch_state, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._epoch_state, self._skip, self._served = state["generator"], state["served"], 0


class FashionMNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST: a seeded validation split carved from the training set; the official test set for testing.

    Args:
        root: folder holding (or receiving) FashionMNIST/raw/*.gz.
        batch_size: training batch size.
        val_size: training images held out for validation (0: no validation).
        train_size: use only the first `train_size` remaining training images (None: all), for quick runs.
        eval_batch_size: batch size for validation and test.
        seed: seeds the validation split and the shuffling.
        system_dir: the Debian package's folder, the second place to look; None to skip it.
        download: whether torchvision may download the files as a last resort.
        verify_md5: check the uncompressed files against the official MD5 sums.
    """

    def __init__(self, root: str = "data", batch_size: int = 128, val_size: int = 5000, train_size: int | None = None,
                 eval_batch_size: int = 1000, seed: int = 0, system_dir: str | None = SYSTEM_DIR,
                 download: bool = True, verify_md5: bool = True):
        super().__init__()
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"root={str(root)!r} is invalid; allowed: a folder (or a path to create one)")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        self.val_size = check_int("val_size", val_size, 0, TRAIN_SIZE - 1)
        self.train_size = None if train_size is None else check_int("train_size", train_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.system_dir = Path(system_dir) if system_dir else None
        self.download, self.verify_md5 = download, verify_md5
        self.shuffle_generator = torch.Generator().manual_seed(self.seed)  # the training order, epoch after epoch

    def prepare_data(self):
        ensure_fashion_mnist(self.root, self.system_dir, self.download, self.verify_md5)

    def setup(self, stage: str | None = None):
        if hasattr(self, "x_train"):
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        x, y = load_split(self.root, train=True)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size :][: self.train_size]
        self.x_train, self.y_train = x[train].to(device), y[train].to(device)
        self.x_val, self.y_val = x[val].to(device), y[val].to(device)
        x_test, y_test = load_split(self.root, train=False)
        self.x_test, self.y_test = x_test.to(device), y_test.to(device)

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


if __name__ == "__main__":
    # `python -m rppnets.data [root]`: fetch and verify the files once, e.g. before a sweep (`make data`).
    import sys

    folder = ensure_fashion_mnist(Path(sys.argv[1] if len(sys.argv) > 1 else "data"), Path(SYSTEM_DIR), download=True)
    print(f"Fashion-MNIST verified in {folder}")
