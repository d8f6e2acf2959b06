"""Image-classification data sets held in memory on the training device: Fashion-MNIST, MNIST, KMNIST, any torchvision
dataset class; one seeded split and one resumable batch order for all of them.

- `idx.py`: the IDX files of Fashion-MNIST, MNIST and KMNIST, their official MD5 sums, one file read in place;
- `sources.py`: where those files are found (data.root, data/, a system folder) or downloaded to;
- `batches.py`: batches sliced out of tensors on the device, in a seeded, resumable order (DDP shares);
- `datamodule.py`: the split every data set shares, and what a model needs (`input_shape`, `in_features`,
  `num_classes`) known before any file is read;
- `idx_datamodule.py`: IDXDataModule (and FashionMNISTDataModule); `torchvision_dataset.py`: TorchvisionDataModule.
"""

from rppnets.data.batches import InMemoryBatches
from rppnets.data.datamodule import InMemoryDataModule, announce
from rppnets.data.errors import CorruptDataError, DataNotFoundError, DataNotReadableError
from rppnets.data.idx import DATASETS, FASHION_MNIST, KMNIST, MNIST, IDXDataset, idx_dataset, load_split, read_idx
from rppnets.data.idx_datamodule import SYSTEM_DIR, FashionMNISTDataModule, IDXDataModule
from rppnets.data.sources import DEFAULT_ROOT, Source, download_files, find_files, folder_with_files
from rppnets.data.torchvision_dataset import TorchvisionDataModule

__all__ = [
    "DATASETS", "DEFAULT_ROOT", "FASHION_MNIST", "KMNIST", "MNIST", "SYSTEM_DIR", "CorruptDataError",
    "DataNotFoundError", "DataNotReadableError", "FashionMNISTDataModule", "IDXDataModule", "IDXDataset",
    "InMemoryBatches", "InMemoryDataModule", "Source", "TorchvisionDataModule", "announce", "download_files",
    "find_files", "folder_with_files", "idx_dataset", "load_split", "read_idx",
]
