"""The Fashion-MNIST data module: where files are found, how they are checked, how batches are served."""

import shutil
from pathlib import Path

import pytest
import torch

from rppnets.data import (SYSTEM_DIR, CorruptDataError, DataNotFoundError, FashionMNISTDataModule, InMemoryBatches,
                          ensure_fashion_mnist)

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def copy_raw(fake_root: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in FILES:
        shutil.copy(fake_root / "FashionMNIST" / "raw" / name, dest / name)
    return dest


def test_files_in_root_are_used_and_extracted(fake_root, tmp_path):
    raw = copy_raw(fake_root, tmp_path / "FashionMNIST" / "raw")
    assert ensure_fashion_mnist(tmp_path, system_dir=None, download=False, verify_md5=False) == raw
    assert (raw / "train-images-idx3-ubyte").is_file()


def test_system_copy_is_the_second_source(fake_root, tmp_path):
    system = copy_raw(fake_root, tmp_path / "system")
    raw = ensure_fashion_mnist(tmp_path / "data", system_dir=system, download=False, verify_md5=False)
    assert sorted(p.name for p in raw.glob("*.gz")) == sorted(FILES)


def test_missing_everywhere_names_all_three_ways(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        ensure_fashion_mnist(tmp_path, system_dir=tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert "FashionMNIST/raw" in message and "apt-get install dataset-fashion-mnist" in message
    assert "data.download=true" in message


def test_files_that_are_not_the_official_ones_are_named(fake_root, tmp_path):
    copy_raw(fake_root, tmp_path / "FashionMNIST" / "raw")
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte .*is corrupt: MD5"):
        ensure_fashion_mnist(tmp_path, system_dir=None, download=False, verify_md5=True)


def test_truncated_archive_is_named(fake_root, tmp_path):
    raw = copy_raw(fake_root, tmp_path / "FashionMNIST" / "raw")
    data = (raw / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDataError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        ensure_fashion_mnist(tmp_path, system_dir=None, download=False, verify_md5=False)


def test_root_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="root=.*allowed: a folder"):
        FashionMNISTDataModule(root=str(tmp_path / "file"))


def test_split_is_seeded_and_disjoint(fake_root):
    def split(seed):
        dm = FashionMNISTDataModule(root=str(fake_root), val_size=32, seed=seed, system_dir=None,
                                    download=False, verify_md5=False)
        dm.prepare_data()
        dm.setup()
        return dm

    a, b, c = split(0), split(0), split(1)
    assert len(a.x_val) == 32 and len(a.x_train) == 256 - 32 and len(a.x_test) == 64
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    train_rows = {tuple(row.tolist()) for row in a.x_train}
    assert not any(tuple(row.tolist()) in train_rows for row in a.x_val)
    assert a.x_train.dtype == torch.float32 and 0 <= a.x_train.min() and a.x_train.max() <= 1


def test_batches_cover_each_sample_once_in_a_seeded_order():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    epoch1, epoch2 = [torch.cat([b[1] for b in batches]) for _ in range(2)]
    assert sorted(epoch1.tolist()) == list(range(10)) and not torch.equal(epoch1, epoch2)
    again = torch.cat([b[1] for b in InMemoryBatches(x, y, batch_size=4, shuffle=True, seed=0)])
    assert torch.equal(epoch1, again)
    in_order = [b[1].tolist() for b in InMemoryBatches(x, y, batch_size=4, shuffle=False)]
    assert in_order == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.real_data
@pytest.mark.skipif(not Path(SYSTEM_DIR).is_dir(), reason=f"real Fashion-MNIST not installed in {SYSTEM_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=5000, download=False)
    dm.prepare_data()  # copies from the Debian folder and checks the official MD5 sums
    dm.setup()
    assert dm.x_train.shape == (55_000, 784) and dm.x_val.shape == (5000, 784) and dm.x_test.shape == (10_000, 784)
    assert torch.bincount(dm.y_test).tolist() == [1000] * 10
