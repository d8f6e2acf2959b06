"""Fashion-MNIST as in-memory tensors on the training device, served in shuffled batches by index.

The four official files are read where they lie, still gzipped (nothing is copied or unpacked), and their contents
are checked against the official MD5 sums. Where they are looked for: `data.root` when it is set, and nowhere else;
otherwise the project's data/ folder, then Debian's package folder. They are downloaded only when asked.
"""

import argparse
import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from rppnets.checks import check_int

DEFAULT_ROOT = "data"  # used when data.root is not set: looked in first, and where a download goes
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist package puts the files
TRAIN_SIZE = 60_000
# Official MD5 sums of the four uncompressed files. Checked on the contents rather than on the .gz files, because
# repackagers (Debian among them) recompress the archives: different .gz bytes, same data.
CONTENT_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FILES = tuple(f"{name}.gz" for name in CONTENT_MD5)
WAYS = (
    "Get the files in one of three ways:\n"
    "  1. Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (read in place from {system}, with data.root "
    "at its default, data);\n"
    "  2. download them: `make data` (into data/), or data.download=true (into data.root);\n"
    "  3. put the four official .gz files ({files}) into a folder, directly or in FashionMNIST/raw/, and set "
    "data.root to it."
).format(system=SYSTEM_DIR, files=", ".join(FILES))


class DataNotFoundError(ValueError):
    """The Fashion-MNIST files are not where the data module was told to look, and no download was asked for."""


class CorruptDataError(ValueError):
    """A Fashion-MNIST file exists but is not the official one."""


@dataclass(frozen=True)
class Source:
    """Where the four files were found: their `folder` and, for the console, what that folder is."""

    folder: Path
    origin: str  # "data.root", "data/", "Debian's package" or "a download"

    def describe(self) -> str:
        return f"{self.origin} ({self.folder.absolute()})"


def folder_with_files(folder: Path) -> Path | None:
    """`folder` or its FashionMNIST/raw/ (torchvision's layout), whichever holds all four .gz files."""
    for candidate in (folder, folder / "FashionMNIST" / "raw"):
        if all((candidate / name).is_file() for name in FILES):
            return candidate
    return None


def find_fashion_mnist(root: str | Path | None, system_dir: str | Path | None, download: bool) -> Source | None:
    """Where to read the files from; None when they are missing and `download` asks for them.

    A `root` other than data/ is the only place looked in. Without one (None or data, the default): data/, then
    Debian's `system_dir`.
    Raises DataNotFoundError (its message starts with ``root=``) naming the ways to get the files.
    """
    if root is not None and Path(root) != Path(DEFAULT_ROOT):
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise DataNotFoundError(f"root={str(root)!r} is invalid; allowed: a folder holding the four files")
        if (folder := folder_with_files(root)) is not None:
            return Source(folder, "data.root")
        if download:
            return None
        where = "does not exist" if not root.exists() else "holds no Fashion-MNIST files (nor its FashionMNIST/raw/)"
        raise DataNotFoundError(f"root={str(root)!r} {where}, and no download was asked for. {WAYS}")
    places = [(Path(DEFAULT_ROOT), "data/")] + ([(Path(system_dir), "Debian's package")] if system_dir else [])
    for place, origin in places:
        if (folder := folder_with_files(place)) is not None:
            return Source(folder, origin)
    if download:
        return None
    looked = " nor in ".join(str(place) for place, _ in places)
    raise DataNotFoundError(f"root={None if root is None else str(root)!r}: the Fashion-MNIST files are neither in {looked}, and no download was "
                            f"asked for. {WAYS}")


def download_fashion_mnist(root: str | Path | None) -> Source:
    """Download the four official .gz files into `root`/FashionMNIST/raw/ (data/ when None), each checked against
    its official MD5 on arrival; a file is named only once complete, so an interrupted download leaves no part."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import download_url

    raw = Path(root if root is not None else DEFAULT_ROOT) / "FashionMNIST" / "raw"
    created = [folder for folder in (raw, *raw.parents) if not folder.exists()]  # innermost first
    raw.mkdir(parents=True, exist_ok=True)
    for name, gz_md5 in FashionMNIST.resources:
        if (raw / name).is_file():
            continue
        part, errors = raw / f"{name}.part", []
        for mirror in FashionMNIST.mirrors:
            try:
                download_url(mirror + name, str(raw), filename=part.name, md5=gz_md5)
                part.replace(raw / name)
                break
            except Exception as err:  # no network, a proxy, a mirror down: try the next, then one message
                errors.append(f"{mirror}{name}: {err}")
                part.unlink(missing_ok=True)
        else:
            for folder in created:  # the folders made for this download go again if it left them empty
                if not any(folder.iterdir()):
                    folder.rmdir()
            raise DataNotFoundError(f"root={str(root)!r}: downloading {name} failed ({'; '.join(errors)}). {WAYS}")
    return Source(raw, "a download")


def read_idx(path: Path, verify_md5: bool = True) -> torch.Tensor:
    """The uint8 array in one gzipped IDX file, read in place, its uncompressed content checked against the MD5."""
    name = path.name.removesuffix(".gz")
    fix = "Replace it (reinstall the package, or delete it and run `make data`)."
    try:
        with gzip.open(path, "rb") as f:
            content = f.read()
    except (OSError, EOFError, zlib.error) as err:  # any damage to the archive (BadGzipFile is an OSError)
        raise CorruptDataError(f"{path} is corrupt: {err}. {fix}") from err
    if verify_md5 and (actual := hashlib.md5(content).hexdigest()) != CONTENT_MD5[name]:
        raise CorruptDataError(f"{path} is corrupt: MD5 of its content {actual}, expected the official "
                               f"{CONTENT_MD5[name]}. {fix}")
    # IDX: two zero bytes, the type (0x08: unsigned byte), the number of dimensions, each dimension as a big-endian
    # uint32, then the data
    if len(content) < 4 or content[:3] != b"\x00\x00\x08":
        raise CorruptDataError(f"{path} is corrupt: not an IDX file of unsigned bytes. {fix}")
    header = 4 + 4 * content[3]
    shape = struct.unpack(f">{content[3]}I", content[4:header])
    data = np.frombuffer(content, dtype=np.uint8, offset=header)
    if data.size != math.prod(shape):
        raise CorruptDataError(f"{path} is corrupt: {data.size} values for the shape {shape}. {fix}")
    return torch.from_numpy(data.reshape(shape).copy())


def load_split(folder: Path, train: bool, verify_md5: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 in [0, 1] of shape (N, 784) and int64 labels, from the .gz files in `folder`."""
    prefix = "train" if train else "t10k"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", verify_md5)  # (N, 28, 28)
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", verify_md5)  # (N,)
    if len(images) != len(labels):
        raise CorruptDataError(f"{folder}: {len(images)} {prefix} images but {len(labels)} labels")
    return images.reshape(len(images), -1).float().div_(255), labels.long()


@rank_zero_only
def announce(line: str) -> None:
    """The run's one line about its data (once, not once per process under DDP)."""
    print(line)


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
        root: the folder holding the four .gz files (directly or in FashionMNIST/raw/), and the only place looked
            in; None or "data" (the default): data/ if it holds them, else `system_dir`.
        batch_size: training batch size.
        val_size: training images held out for validation (0: no validation).
        train_size: use only the first `train_size` remaining training images (None: all), for quick runs.
        eval_batch_size: batch size for validation and test.
        seed: seeds the validation split and the shuffling.
        system_dir: the Debian package's folder, read in place when `root` is None; None to skip it.
        download: download the files into `root` (data/ when None) if they are not found.
        verify_md5: check the uncompressed contents against the official MD5 sums.

    Raises DataNotFoundError (a ValueError) when built, before anything runs, if the files are not found and no
    download was asked for.
    """

    def __init__(self, root: str | None = None, batch_size: int = 128, val_size: int = 5000,
                 train_size: int | None = None, eval_batch_size: int = 1000, seed: int = 0,
                 system_dir: str | None = SYSTEM_DIR, download: bool = False, verify_md5: bool = True):
        super().__init__()
        self.root = None if root is None else Path(root)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, 1)
        self.val_size = check_int("val_size", val_size, 0, TRAIN_SIZE - 1)
        self.train_size = None if train_size is None else check_int("train_size", train_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.system_dir = Path(system_dir) if system_dir else None
        self.download, self.verify_md5 = download, verify_md5
        self.source = find_fashion_mnist(self.root, self.system_dir, download)  # None: to be downloaded
        self.shuffle_generator = torch.Generator().manual_seed(self.seed)  # the training order, epoch after epoch

    def prepare_data(self):
        if self.source is None:
            self.source = download_fashion_mnist(self.root)

    def setup(self, stage: str | None = None):
        if hasattr(self, "x_train"):
            return
        if self.source is None:  # another process downloaded the files (prepare_data runs on one per node)
            self.source = find_fashion_mnist(self.root, self.system_dir, download=False)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        x, y = load_split(self.source.folder, train=True, verify_md5=self.verify_md5)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val, train = order[: self.val_size], order[self.val_size :][: self.train_size]
        self.x_train, self.y_train = x[train].to(device), y[train].to(device)
        self.x_val, self.y_val = x[val].to(device), y[val].to(device)
        x_test, y_test = load_split(self.source.folder, train=False, verify_md5=self.verify_md5)
        self.x_test, self.y_test = x_test.to(device), y_test.to(device)
        checked = "official MD5 sums checked" if self.verify_md5 else "MD5 check off (data.verify_md5=false)"
        announce(f"Data: Fashion-MNIST from {self.source.describe()}, {checked}; {len(self.x_train):,} training, "
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


def main(argv: list[str] | None = None) -> None:
    """`python -m rppnets.data [--root DIR]` (`make data`): find the files, download them only if they are
    nowhere, and check all four against the official MD5 sums, once, before a sweep."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", default=None, help="a folder to use instead of data/ and Debian's package folder")
    args = parser.parse_args(argv)
    source = find_fashion_mnist(args.root, SYSTEM_DIR, download=True) or download_fashion_mnist(args.root)
    for train in (True, False):
        load_split(source.folder, train)
    print(f"Fashion-MNIST: the four official files are in {source.describe()}, MD5 sums checked")


if __name__ == "__main__":
    main()
