"""The IDX data sets (Fashion-MNIST, MNIST, KMNIST): their official files and MD5 sums, and one file read in place."""

import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rppnets.data.errors import CorruptDataError, DataNotReadableError

# The four files of each data set, under the same names in all three (torchvision's resources).
FILE_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IDXDataset:
    """One data set in the IDX format: where torchvision keeps it, how its official files are recognised.

    `archive_md5` holds the MD5 of each official .gz file as torchvision lists it (`resources` of its dataset class);
    `content_md5` the MD5 of each uncompressed file where it is known. The content is what is checked when known,
    because repackagers (Debian among them) recompress the archives: different .gz bytes, the same data.
    """

    key: str  # the `data.dataset` value and the config's name: fashion_mnist, mnist, kmnist
    name: str  # for people: "Fashion-MNIST"
    torchvision_class: str  # torchvision.datasets.<this>: its mirrors, its folder <root>/<this>/raw/, its classes
    archive_md5: dict[str, str]
    content_md5: dict[str, str] = field(default_factory=dict)
    system_dir: str | None = None  # where a system package puts the files, read in place
    package: str | None = None  # that package's name (Debian/Ubuntu)
    train_images: int = 60_000  # images in the official training file: the validation split must leave some
    image_shape: tuple[int, ...] = (1, 28, 28)  # (channels, height, width) of one image

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f"{name}.gz" for name in FILE_NAMES)

    @property
    def raw_folder(self) -> Path:
        """torchvision's layout below a root: FashionMNIST/raw/."""
        return Path(self.torchvision_class) / "raw"

    def torchvision(self):
        """torchvision's dataset class of this data set (its download mirrors, resources and class names)."""
        import torchvision.datasets

        return getattr(torchvision.datasets, self.torchvision_class)

    @property
    def num_classes(self) -> int:
        return len(self.torchvision().classes)


FASHION_MNIST = IDXDataset(
    key="fashion_mnist", name="Fashion-MNIST", torchvision_class="FashionMNIST",
    archive_md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    content_md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    system_dir="/usr/share/datasets/fashion-mnist", package="dataset-fashion-mnist",
)
MNIST = IDXDataset(
    key="mnist", name="MNIST", torchvision_class="MNIST",
    archive_md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)
KMNIST = IDXDataset(
    key="kmnist", name="KMNIST", torchvision_class="KMNIST",
    archive_md5={
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
)
DATASETS = {dataset.key: dataset for dataset in (FASHION_MNIST, MNIST, KMNIST)}


def idx_dataset(key: str) -> IDXDataset:
    """The data set named `key`; a ValueError naming the allowed keys otherwise."""
    if key not in DATASETS:
        raise ValueError(f"dataset={key!r} is invalid; allowed: {', '.join(map(repr, DATASETS))}")
    return DATASETS[key]


def whose(name: str, archive: bytes, content: bytes) -> str | None:
    """Which data set's official file `name` this is, by the MD5 of its archive or of its content; None if none."""
    md5s = {hashlib.md5(archive).hexdigest(), hashlib.md5(content).hexdigest()}
    for dataset in DATASETS.values():
        if md5s & {dataset.archive_md5.get(f"{name}.gz"), dataset.content_md5.get(name)}:
            return dataset.name
    return None


def fix_hint(dataset: IDXDataset) -> str:
    """How to replace a damaged file of `dataset`."""
    if dataset.package:
        return "Replace it (reinstall the package, or delete it and run `make data`)."
    return f"Replace it (delete it and run `python -m rppnets.data --dataset {dataset.key}`)."


def check_md5(path: Path, archive: bytes, content: bytes, dataset: IDXDataset) -> None:
    """Raises CorruptDataError unless the file is `dataset`'s official one: its content's MD5 where the table has
    it, else its archive's (a recompressed copy then fails: data.verify_md5=false reads it unchecked)."""
    name = path.name.removesuffix(".gz")
    if name in dataset.content_md5:
        actual, expected, what = hashlib.md5(content).hexdigest(), dataset.content_md5[name], "its content"
    else:
        actual, expected, what = hashlib.md5(archive).hexdigest(), dataset.archive_md5[path.name], "the archive"
    if actual == expected:
        return
    other = whose(name, archive, content)
    found = (f" It is {other}'s {name}: each data set's files belong in their own folder."
             if other not in (None, dataset.name) else "")
    unchecked = "" if name in dataset.content_md5 else (
        " (a recompressed copy of the official file differs too: data.verify_md5=false reads it unchecked)")
    raise CorruptDataError(f"{path} is corrupt: MD5 of {what} {actual}, expected the official {dataset.name} "
                           f"{expected}{unchecked}.{found} {fix_hint(dataset)}")


def read_idx(path: Path, verify_md5: bool = True, dataset: IDXDataset = FASHION_MNIST) -> torch.Tensor:
    """The uint8 array in one gzipped IDX file, read in place, checked against `dataset`'s official MD5."""
    fix = fix_hint(dataset)
    try:
        archive = Path(path).read_bytes()
    except OSError as err:  # the bytes were never seen: permission, the disk; not damage
        raise DataNotReadableError.from_os_error(path, err) from err
    try:
        content = gzip.decompress(archive)
    except (OSError, EOFError, zlib.error) as err:  # any damage to the archive (BadGzipFile is an OSError)
        raise CorruptDataError(f"{path} is corrupt: {err}. {fix}") from err
    if verify_md5:
        check_md5(Path(path), archive, content, dataset)
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


def load_split(folder: Path, train: bool, verify_md5: bool = True,
               dataset: IDXDataset = FASHION_MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 in [0, 1], one flattened row each (N, height * width), and int64 labels, from the .gz
    files in `folder`."""
    prefix = "train" if train else "t10k"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", verify_md5, dataset)  # (N, height, width)
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", verify_md5, dataset)  # (N,)
    if len(images) != len(labels):
        raise CorruptDataError(f"{folder}: {len(images)} {prefix} images but {len(labels)} labels")
    return images.reshape(len(images), -1).float().div_(255), labels.long()
